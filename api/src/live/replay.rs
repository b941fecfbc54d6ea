//! Where an `events` subscription starts, and the events a resuming one missed: from the
//! hub's memory, or — older than that — from the database, page by page.
//!
//! A resumption never holds more than one page of the database in memory: a page is
//! read, sent (waiting for room in the connection's queue, so a slow client slows the
//! reading down instead of piling pages up), and dropped before the next is read. Whether
//! the missed events are few enough to replay is decided before the snapshot, by counting
//! — not reading — at most `replay_limit` + 1 of them; more, and the client gets a fresh,
//! `stale` snapshot.

use omoi_store::log::{count_global, read_global_within, Visibility};
use omoi_store::{Cursor, StoredEvent};
use uuid::Uuid;

use super::frame::Frame;
use super::hub::{SharedEvent, Tap};
use super::link::{Alive, Link};
use super::protocol::{delta_frame, encode, EventView, Filters, ServerMessage};

/// The events of one project a subscription keeps.
pub struct Selection {
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub filters: Filters,
}

impl Selection {
    pub fn keeps(&self, event: &StoredEvent) -> bool {
        let project = event.metadata.project_id();
        project.and_then(|p| p.parse::<Uuid>().ok()) == Some(self.project_id)
            && self.filters.matches(event)
    }

    /// The project's events, as the database selects them.
    fn visibility(&self) -> Visibility {
        Visibility::Organizations {
            organizations: vec![self.organization_id],
            project: Some(self.project_id),
        }
    }
}

/// How a subscription begins: its snapshot, the events it missed, and its live tap.
pub struct Start {
    pub position: Cursor,
    pub resumed: bool,
    pub stale: bool,
    /// The missed events in `(position, until]` are read back from the database first…
    pub from_database: Option<Cursor>,
    /// …then these, kept in the hub's memory.
    pub buffered: Vec<SharedEvent>,
    pub tap: Tap,
}

impl Start {
    fn fresh(tap: Tap, stale: bool) -> Self {
        Self {
            position: tap.head,
            resumed: false,
            stale,
            from_database: None,
            buffered: Vec::new(),
            tap,
        }
    }

    /// Starts now, or after `after` when the events missed since are few enough.
    pub async fn of(
        link: &Link,
        after: Option<Cursor>,
        selection: &Selection,
    ) -> Result<Self, sqlx::Error> {
        let hub = &link.state.live;
        let Some(after) = after else {
            return Ok(Self::fresh(hub.tap().await?, false));
        };
        let resume = hub.resume(after, |e| selection.keeps(e)).await?;
        if let Some(floor) = resume.older_than_buffer {
            let limit = hub.config().replay_limit;
            let most = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
            let visibility = selection.visibility();
            let missed = count_global(hub.pool(), after, floor, most, &visibility).await?;
            if missed >= most {
                return Ok(Self::fresh(resume.tap, true));
            }
        }
        Ok(Self {
            position: after,
            resumed: true,
            stale: false,
            from_database: resume.older_than_buffer,
            buffered: resume.buffered,
            tap: resume.tap,
        })
    }

    /// Sends subscription `id` the events it missed, in order: the database's page by
    /// page, then the memory's. The position of the last one sent (the start's when none
    /// was), or `None` when the connection is gone.
    pub async fn send_missed(
        &self,
        link: &Link,
        alive: &Alive,
        id: &str,
        selection: &Selection,
    ) -> Result<Option<Cursor>, sqlx::Error> {
        let mut last = self.position;
        if let Some(until) = self.from_database {
            match send_from_database(link, alive, id, selection, (last, until)).await? {
                Some(sent) => last = sent,
                None => return Ok(None),
            }
        }
        for event in &self.buffered {
            last = event.cursor();
            if !link
                .send_for(alive, delta_frame(id, event.delta_body()))
                .await
            {
                return Ok(None);
            }
        }
        Ok(Some(last))
    }
}

/// Sends the kept events of `(after, until]` from the database, one page of at most the
/// connection's queue budget in memory at a time, in the connection's read turn. The position of the last one sent (`after` when none was), or `None` when the
/// connection is gone.
async fn send_from_database(
    link: &Link,
    alive: &Alive,
    id: &str,
    selection: &Selection,
    (after, until): (Cursor, Cursor),
) -> Result<Option<Cursor>, sqlx::Error> {
    let pool = link.state.live.pool();
    let batch = link.state.live.config().batch_size.max(1);
    let visibility = selection.visibility();
    let mut cursor = after;
    let mut last = after;
    loop {
        let Some(_turn) = link.read_turn().await else {
            return Ok(None);
        };
        let page = read_global_within(pool, cursor, batch, link.budget(), &visibility)
            .await?
            .page;
        if page.events.is_empty() {
            return Ok(Some(last));
        }
        for event in &page.events {
            if event.cursor() > until {
                return Ok(Some(last));
            }
            if !selection.keeps(event) {
                continue;
            }
            last = event.cursor();
            if !link.send_for(alive, Frame::Own(delta(id, event))).await {
                return Ok(None);
            }
        }
        cursor = page.next;
    }
}

/// A delta read for this subscription alone (nobody shares a page of the database).
fn delta(id: &str, event: &StoredEvent) -> String {
    encode(&ServerMessage::Delta {
        id,
        position: event.cursor().to_string(),
        event: EventView::from(event),
    })
}
