//! The subscriptions of `GET /api/v1/ws`: `events` (the raw events of one project,
//! optionally filtered) and the read models `board`, `graph`, `timeline` and `agents`
//! (the model's view, then each change, from a shared [`views`](super::views) follower).
//!
//! A subscription is a task: it sends its snapshot, replays what a resuming client
//! missed (from the hub's ring, the database page by page — [`replay`](super::replay) —
//! or the follower's recent deltas), then forwards live changes, whose encoding it shares
//! with every other subscriber.
//! Every event is authorized against the caller as last verified, so a membership removed
//! while the socket is open ends the subscription.

use omoi_domain::access::Permission;
use std::collections::HashMap;

use omoi_domain::common::{Scope, Scoped};
use omoi_domain::project::Project;
use omoi_store::Cursor;
use tokio::sync::broadcast::error::RecvError;

use super::hub::Tap;
use super::link::{Alive, Link, Offer, Session};
use super::models::{view_of, OWN_AGENTS};
use super::protocol::{
    delta_frame, snapshot_frame, Empty, Envelope, Filters, ServerMessage, Subscribe, Unsubscribe,
    WsError,
};
use super::replay::{Selection, Start};
use super::task_streams::{LogsPlan, SteeringPlan};
use super::views::{Delta, ProjectRef, Start as ViewStart};
use super::window;
use super::AbortOnDrop;
use crate::error::ApiError;

/// Longest subscription id accepted.
const MAX_ID_CHARS: usize = 128;

/// The subscriptions of one socket, by the client's ids.
#[derive(Default)]
pub struct Subscriptions {
    running: HashMap<String, Running>,
}

struct Running {
    alive: Alive,
    _task: AbortOnDrop,
}

impl Session for Subscriptions {
    async fn on_text(&mut self, link: &Link, text: &str) {
        if let Err(error) = self.handle(link, text).await {
            link.send_error(&error).await;
        }
    }
}

impl Subscriptions {
    async fn handle(&mut self, link: &Link, text: &str) -> Result<(), WsError> {
        let envelope = Envelope::parse(text)?;
        match envelope.kind.as_str() {
            "subscribe" => {
                let id = envelope.id();
                let request = envelope.into_fields::<Subscribe>()?;
                self.subscribe(link, request)
                    .await
                    .map_err(|e| e.with_id(id))
            }
            "unsubscribe" => {
                let Unsubscribe { id } = envelope.into_fields()?;
                self.unsubscribe(link, id).await
            }
            "ping" => {
                envelope.into_fields::<Empty>()?;
                link.send(&ServerMessage::Pong).await;
                Ok(())
            }
            // A client answering the server's JSON ping: its frame already counted as life.
            "pong" => Ok(()),
            "authenticate" => link.authenticate(envelope.into_fields()?).await,
            other => Err(WsError::new(
                "unknown_type",
                format!(
                    "unknown message type {other:?}: subscribe, unsubscribe, ping or authenticate"
                ),
            )
            .with_id(envelope.id())),
        }
    }

    async fn subscribe(&mut self, link: &Link, request: Subscribe) -> Result<(), WsError> {
        // Every stream's subscriptions are kept by their ids: each is bounded.
        if request.id.is_empty() || request.id.chars().count() > MAX_ID_CHARS {
            return Err(WsError::new(
                "invalid_message",
                format!("`id` must be 1 to {MAX_ID_CHARS} characters"),
            ));
        }
        let plan = match request.stream.as_str() {
            "logs" => Checked::Logs(LogsPlan::check(link, request).await?),
            "steering" => Checked::Steering(SteeringPlan::check(link, request).await?),
            _ => Checked::Project(Plan::check(link, request).await?),
        };
        let id = plan.id().to_string();
        // Subscribing again under a used id replaces that subscription.
        if let Some(old) = self.running.remove(&id) {
            old.alive.end();
        }
        self.running.retain(|_, running| running.alive.get());
        let limit = link.state.live.config().max_subscriptions;
        if self.running.len() >= limit {
            return Err(WsError::new(
                "too_many_subscriptions",
                format!("a socket holds at most {limit} subscriptions; unsubscribe first"),
            ));
        }
        let alive = Alive::new();
        // One task per kind, each as large as its own awaits need.
        let (link, alive_task) = (link.clone(), alive.clone());
        let task = match plan {
            Checked::Project(plan) if plan.stream == "events" => {
                tokio::spawn(plan.run_events(link, alive_task))
            }
            Checked::Project(plan) => tokio::spawn(plan.run_view(link, alive_task)),
            Checked::Logs(plan) => tokio::spawn(plan.run(link, alive_task)),
            Checked::Steering(plan) => tokio::spawn(plan.run(link, alive_task)),
        };
        self.running.insert(
            id,
            Running {
                alive,
                _task: AbortOnDrop(task),
            },
        );
        Ok(())
    }

    async fn unsubscribe(&mut self, link: &Link, id: String) -> Result<(), WsError> {
        let Some(running) = self.running.remove(&id) else {
            return Err(WsError::new(
                "unknown_subscription",
                format!("no subscription has the id {id:?}"),
            )
            .with_id(Some(id)));
        };
        running.alive.end();
        link.send(&ServerMessage::Unsubscribed { id: &id }).await;
        Ok(())
    }
}

/// A checked subscription of any stream.
enum Checked {
    Project(Plan),
    Logs(LogsPlan),
    Steering(SteeringPlan),
}

impl Checked {
    fn id(&self) -> &str {
        match self {
            Self::Project(plan) => &plan.id,
            Self::Logs(plan) => plan.id(),
            Self::Steering(plan) => plan.id(),
        }
    }
}

/// An authorized subscription of a project's stream, ready to run.
struct Plan {
    id: String,
    /// `events`, or a read model: `board`, `graph`, `timeline` or `agents`.
    stream: &'static str,
    selection: Selection,
    scope: Scope,
    after: Option<Cursor>,
}

impl Plan {
    /// Validates the request and authorizes the project (`events:read`): a project of
    /// another organization is `not_found`, as over HTTP.
    async fn check(link: &Link, request: Subscribe) -> Result<Self, WsError> {
        let (stream, permission) = match request.stream.as_str() {
            "events" => ("events", Permission::EventsRead),
            // The permissions of the read models' HTTP views.
            "board" => ("board", Permission::TicketRead),
            "graph" => ("graph", Permission::TaskRead),
            "timeline" => ("timeline", Permission::TicketRead),
            "agents" => ("agents", Permission::AgentRead),
            other => {
                return Err(WsError::new(
                    "unknown_stream",
                    format!(
                        "unknown stream {other:?}: events, board, graph, timeline, agents, \
                         logs or steering"
                    ),
                ))
            }
        };
        let filtered = !(request.event_types.is_empty()
            && request.entity_types.is_empty()
            && request.entity_ids.is_empty());
        if request.task_id.is_some() || request.attempt.is_some() || request.agent_id.is_some() {
            return Err(WsError::new(
                "invalid_message",
                "`task_id` and `attempt` are fields of the logs stream, `agent_id` of steering",
            ));
        }
        if stream != "events" && filtered {
            return Err(WsError::new(
                "invalid_message",
                "`event_types`, `entity_types` and `entity_ids` filter the events stream only",
            ));
        }
        let project_id = request
            .project_id
            .ok_or_else(|| WsError::new("invalid_message", "`project_id` is required"))?;
        let after = request
            .after
            .as_deref()
            .map(str::parse::<Cursor>)
            .transpose()
            .map_err(|e| WsError::new("invalid_cursor", format!("`after`: {e}")))?;
        if let Some(after) = after {
            ensure_reached(link, after).await?;
        }
        let caller = link.caller();
        let (project, _) = link
            .state
            .read::<Project>(&caller, permission, project_id)
            .await
            .map_err(|e| refusal(e, "project"))?;
        let scope = project
            .scope()
            .ok_or_else(|| WsError::new("not_found", "project not found"))?;
        let filters = Filters::new(
            request.event_types,
            request.entity_types,
            request.entity_ids,
        );
        Ok(Self {
            id: request.id,
            stream,
            selection: Selection {
                organization_id: scope.organization_id,
                project_id,
                filters,
            },
            scope,
            after,
        })
    }

    /// The `events` stream: the snapshot, the events a resuming client missed, then the
    /// live ones.
    //
    // The futures of a subscription's start (database reads) are boxed: a task is as large
    // as the largest future it ever awaits, for all its life, and most of its life is the
    // forwarding loop (`omoi-bench bench-live` measures the memory per subscriber).
    async fn run_events(self, link: Link, alive: Alive) {
        let start = match Box::pin(Start::of(&link, self.after, &self.selection)).await {
            Ok(start) => start,
            Err(error) => return self.unavailable(&link, &alive, &error).await,
        };
        let snapshot = ServerMessage::Snapshot {
            id: &self.id,
            stream: "events",
            project_id: self.selection.project_id,
            position: start.position.to_string(),
            resumed: start.resumed,
            stale: start.stale,
            events: Vec::new(),
        };
        if !link.send_for(&alive, snapshot_frame(&snapshot, None)).await {
            return;
        }
        let missed = start.send_missed(&link, &alive, &self.id, &self.selection);
        let last = match Box::pin(missed).await {
            Ok(Some(last)) => last,
            Ok(None) => return,
            Err(error) => return self.unavailable(&link, &alive, &error).await,
        };
        self.forward(&link, &alive, start.tap, last).await;
    }

    /// Ends the subscription because the log could not be read, and says so.
    async fn unavailable(&self, link: &Link, alive: &Alive, error: &sqlx::Error) {
        tracing::warn!(%error, "live: a subscription cannot read the event log");
        alive.end();
        let error = WsError::new("unavailable", "the event log is unavailable; retry")
            .with_id(Some(self.id.clone()));
        link.send_error(&error).await;
    }

    /// Live events after `last`, until the subscription ends.
    async fn forward(&self, link: &Link, alive: &Alive, mut tap: Tap, mut last: Cursor) {
        let mut caller = link.caller_updates();
        while alive.get() {
            let received = tokio::select! {
                received = tap.events.recv() => received,
                () = link.access_lost(&mut caller, self.scope) => {
                    return self.no_longer_visible(link, alive).await;
                }
            };
            let event = match received {
                Ok(event) => event,
                Err(RecvError::Lagged(_)) => return link.resync(alive, Some(&self.id)),
                Err(RecvError::Closed) => return,
            };
            // A resumption from a cursor this replica has not reached yet skips up to it.
            if event.cursor() <= last {
                continue;
            }
            last = event.cursor();
            if !self.selection.keeps(&event) {
                continue;
            }
            if !self.still_visible(link, alive).await {
                return;
            }
            // The event's body is encoded once, for every subscriber.
            let frame = delta_frame(&self.id, event.delta_body());
            match link.offer(alive, frame).await {
                Offer::Queued => {}
                Offer::Full => return link.resync(alive, Some(&self.id)),
                Offer::Closed => return,
            }
        }
    }

    /// Whether the caller (as last verified) may still read the project; when not, the
    /// subscription ends with `not_found`.
    async fn still_visible(&self, link: &Link, alive: &Alive) -> bool {
        if link.may_read(Some(self.scope)) {
            return true;
        }
        self.no_longer_visible(link, alive).await;
        false
    }

    /// Ends the subscription with `not_found`: its caller may no longer read the project.
    async fn no_longer_visible(&self, link: &Link, alive: &Alive) {
        alive.end();
        let error = WsError::new("not_found", "the project is no longer visible to you")
            .with_id(Some(self.id.clone()));
        link.send_error(&error).await;
    }

    /// A read-model stream: the follower's snapshot (or the deltas a resuming client
    /// missed), then its deltas.
    async fn run_view(self, link: Link, alive: Alive) {
        let Some((start, mut deltas)) = Box::pin(self.join(&link)).await else {
            alive.end();
            let error = WsError::new("unavailable", "the event log is unavailable; retry")
                .with_id(Some(self.id.clone()));
            link.send_error(&error).await;
            return;
        };
        let (position, resumed, stale, data, missed) = match start {
            ViewStart::Snapshot {
                position,
                data,
                stale,
            } => (position, false, stale, Some(data), Vec::new()),
            ViewStart::Resumed { position, missed } => (position, true, false, None, missed),
        };
        let snapshot = ServerMessage::Snapshot {
            id: &self.id,
            stream: self.stream,
            project_id: self.selection.project_id,
            position: position.to_string(),
            resumed,
            stale,
            events: Vec::new(),
        };
        // The model is shared with every subscriber, not copied into this one's frame.
        if !link.send_for(&alive, snapshot_frame(&snapshot, data)).await {
            return;
        }
        let mut last = position;
        for delta in missed {
            if let Delta::Change { position, body } = delta.as_ref() {
                last = *position;
                if !link
                    .send_for(&alive, delta_frame(&self.id, body.clone()))
                    .await
                {
                    return;
                }
            }
        }
        let mut caller = link.caller_updates();
        while alive.get() {
            let received = tokio::select! {
                received = deltas.recv() => received,
                () = link.access_lost(&mut caller, self.scope) => {
                    return self.no_longer_visible(&link, &alive).await;
                }
            };
            let delta = match received {
                Ok(delta) => delta,
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => {
                    return link.resync(&alive, Some(&self.id))
                }
            };
            let Delta::Change { position, body } = delta.as_ref() else {
                return link.resync(&alive, Some(&self.id));
            };
            // A resumption from a position this replica has not reached yet skips up to it.
            if *position <= last {
                continue;
            }
            last = *position;
            if !self.still_visible(&link, &alive).await {
                return;
            }
            match link
                .offer(&alive, delta_frame(&self.id, body.clone()))
                .await
            {
                Offer::Queued => {}
                Offer::Full => return link.resync(&alive, Some(&self.id)),
                Offer::Closed => return,
            }
        }
    }

    /// Joins the shared follower of the stream, starting it if needed.
    async fn join(&self, link: &Link) -> Option<(ViewStart, window::Receiver<Delta>)> {
        let hub = &link.state.live;
        let project_id = self.selection.project_id;
        // A project-limited key sees no organization-wide agent (nor the other projects'
        // tasks they run): its own follower, as `GET /api/v1/agents` filters for it.
        let stream = match (self.stream, link.caller().project_limit()) {
            ("agents", Some(_)) => OWN_AGENTS,
            (stream, _) => stream,
        };
        let view = || view_of(stream, project_id);
        let project = ProjectRef {
            organization_id: self.scope.organization_id,
            project_id,
        };
        // A follower may end (idle) just as it is joined: then a new one is started.
        for _ in 0..3 {
            match hub.followers().follow(hub, stream, project, view).await {
                Ok(follower) => {
                    if let Some(joined) = follower.join(self.after) {
                        return Some(joined);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "live: cannot follow a read model");
                    return None;
                }
            }
        }
        None
    }
}

/// The error message for a refused or failed lookup of `what` (`project`, `task`).
pub(super) fn refusal(error: ApiError, what: &str) -> WsError {
    match error {
        ApiError::NotFound { .. } => WsError::new("not_found", format!("{what} not found")),
        ApiError::Forbidden { permission } => WsError::new(
            "forbidden",
            format!("your role does not grant `{permission}` on this {what}"),
        ),
        ApiError::Unavailable(cause) => {
            tracing::warn!(%cause, "live: database unavailable");
            WsError::new("unavailable", "the database is unavailable; retry shortly")
        }
        other => {
            tracing::error!(?other, "live: a subscription could not be checked");
            WsError::new("internal", "an internal error occurred; it has been logged")
        }
    }
}

/// Refuses a resumption from a position the log has not reached: no event was ever sent
/// from beyond it (a cursor of another database, or made up), and the subscription would
/// otherwise skip every event up to it, silently.
async fn ensure_reached(link: &Link, after: Cursor) -> Result<(), WsError> {
    let newest = super::hub::newest_cursor(link.state.pool())
        .await
        .map_err(|error| {
            tracing::warn!(%error, "live: the log's newest position unreadable");
            WsError::new("unavailable", "the event log is unavailable; retry")
        })?;
    if after > newest {
        return Err(WsError::new(
            "invalid_cursor",
            format!("`after` {after} is beyond the log's newest position {newest}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `task` returns, without running it.
    fn size_of_task<A, B, C, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_subscription_task_stays_small_while_it_waits() {
        // Every subscriber holds one for its whole life: database reads and queueing are
        // boxed so that it is not sized by them (2,816 bytes when they were inline).
        assert!(size_of_task(Plan::run_events) <= 2048);
        assert!(size_of_task(Plan::run_view) <= 2048);
        assert!(size_of_task(LogsPlan::run) <= 2048);
        assert!(size_of_task(SteeringPlan::run) <= 2048);
    }
}
