//! `GET /api/v1/ws/events`: the original's feed, kept for its clients. Every event of the
//! caller's organizations (one project's for a project-limited API key), filtered by
//! `event_types`, `entity_types` and `entity_ids` — all given filters must match.
//! `{"type":"subscribe",…}` replaces the filters at runtime and is answered
//! `{"status":"subscribed"}`. One forwarding task follows the hub; a filter change reaches
//! it through a `watch`, so changing filters loses no event.

use omoi_domain::common::Scope;
use omoi_store::StoredEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use uuid::Uuid;

use super::frame::Frame;
use super::hub::Tap;
use super::link::{Alive, Link, Offer, Session};
use super::protocol::{Empty, Envelope, FeedSubscribe, Filters, ServerMessage, WsError};
use super::AbortOnDrop;

pub struct Feed {
    filters: watch::Sender<Filters>,
    /// The forwarding task; `None` before the first message and after a resync.
    forwarding: Option<(Alive, AbortOnDrop)>,
    /// Taken at upgrade, so that nothing committed after the client connected is missed.
    first_tap: Option<Tap>,
}

impl Feed {
    pub fn new(filters: Filters, tap: Tap) -> Self {
        Self {
            filters: watch::channel(filters).0,
            forwarding: None,
            first_tap: Some(tap),
        }
    }

    /// Starts forwarding unless a forwarding task still runs.
    async fn ensure_forwarding(&mut self, link: &Link) -> Result<(), WsError> {
        if self
            .forwarding
            .as_ref()
            .is_some_and(|(alive, task)| alive.get() && !task.is_finished())
        {
            return Ok(());
        }
        let tap = match self.first_tap.take() {
            Some(tap) => tap,
            None => link.state.live.tap().await.map_err(|error| {
                tracing::warn!(%error, "live feed: cannot follow the event log");
                WsError::new("unavailable", "the event log is unavailable; retry")
            })?,
        };
        let alive = Alive::new();
        let task = tokio::spawn(forward(
            link.clone(),
            alive.clone(),
            tap,
            self.filters.subscribe(),
        ));
        self.forwarding = Some((alive, AbortOnDrop(task)));
        Ok(())
    }

    async fn handle(&mut self, link: &Link, text: &str) -> Result<(), WsError> {
        let envelope = Envelope::parse(text)?;
        match envelope.kind.as_str() {
            "subscribe" => {
                let request: FeedSubscribe = envelope.into_fields()?;
                let filters = Filters::new(
                    request.event_types,
                    request.entity_types,
                    request.entity_ids,
                );
                self.filters.send_replace(filters.clone());
                self.ensure_forwarding(link).await?;
                let answer = ServerMessage::Subscribed {
                    status: "subscribed",
                    filters: &filters,
                };
                link.send(&answer).await;
                Ok(())
            }
            "ping" => {
                envelope.into_fields::<Empty>()?;
                link.send(&ServerMessage::Pong).await;
                Ok(())
            }
            "pong" => Ok(()),
            "authenticate" => link.authenticate(envelope.into_fields()?).await,
            other => Err(WsError::new(
                "unknown_type",
                format!("unknown message type {other:?}: subscribe, ping or authenticate"),
            )),
        }
    }
}

impl Session for Feed {
    /// The feed forwards at once: it needs no subscribe message.
    async fn on_open(&mut self, link: &Link) {
        if let Err(error) = self.ensure_forwarding(link).await {
            link.send_error(&error).await;
        }
    }

    async fn on_text(&mut self, link: &Link, text: &str) {
        if let Err(error) = self.handle(link, text).await {
            link.send_error(&error).await;
        }
    }
}

async fn forward(link: Link, alive: Alive, mut tap: Tap, filters: watch::Receiver<Filters>) {
    while alive.get() {
        let event = match tap.events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => return link.resync(&alive, None),
            Err(RecvError::Closed) => return,
        };
        if !filters.borrow().matches(&event) || !link.may_read(scope_of(&event)) {
            continue;
        }
        // One encoding for every client of the feed.
        match link
            .offer(&alive, Frame::Shared(event.feed_message()))
            .await
        {
            Offer::Queued => {}
            Offer::Full => return link.resync(&alive, None),
            Offer::Closed => return,
        }
    }
}

/// The organization and project an event belongs to, from its metadata.
fn scope_of(event: &StoredEvent) -> Option<Scope> {
    let id = |text: Option<&str>| text.and_then(|v| v.parse::<Uuid>().ok());
    Some(Scope {
        organization_id: id(event.metadata.organization_id())?,
        project_id: id(event.metadata.project_id()),
    })
}
