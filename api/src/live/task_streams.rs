//! The streams of `GET /api/v1/ws` about one task or one agent rather than a project:
//!
//! * `logs` — a task's transcript as it grows (`task:read`): a snapshot at the line the
//!   client resumes after (`after`, a line number; 0 by default), then `logs` messages of
//!   the lines that follow, in order, each carrying the last line's number. Transcripts
//!   are not events: lines are read from `task_logs` when this process writes some and,
//!   for another process's writes, at the hub's poll interval.
//! * `steering` — an agent's steering messages (its own credential only, since handing one
//!   over records it as delivered): those waiting at once, then each new one as it is
//!   recorded, as `steering` messages — the same delivery as the heartbeat's answer.

use omoi_domain::access::Permission;
use omoi_domain::common::{Scope, Scoped};
use omoi_domain::task::{Steering, Task, TaskEvent};
use omoi_store::transcripts;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::frame::Frame;
use super::link::{Alive, Link, Offer};
use super::protocol::{encode, snapshot_frame, LineView, ServerMessage, Subscribe, WsError};
use super::stream::refusal;
use crate::agents::{acknowledge_steering, waiting_steering};

/// Lines one `logs` message carries at most.
const LINES_PER_MESSAGE: i64 = 1_000;

/// What one `logs` message's lines may weigh together (as JSON strings; it carries at
/// least one line): a thousand lines of 4,000 characters were 4 MB held by one
/// subscription while it waited for room in its connection's queue.
const MESSAGE_TEXT_BYTES: i64 = 256 * 1024;

/// A checked `logs` subscription.
pub struct LogsPlan {
    id: String,
    task_id: Uuid,
    attempt: u32,
    scope: Scope,
    after: i64,
}

/// A checked `steering` subscription.
pub struct SteeringPlan {
    id: String,
    agent_id: Uuid,
}

fn invalid(detail: impl Into<String>) -> WsError {
    WsError::new("invalid_message", detail)
}

/// Refuses the fields of the project streams on a task or agent stream.
fn only_own_fields(request: &Subscribe, allowed_project: bool) -> Result<(), WsError> {
    let filtered = !(request.event_types.is_empty()
        && request.entity_types.is_empty()
        && request.entity_ids.is_empty());
    if filtered {
        return Err(invalid(format!(
            "`event_types`, `entity_types` and `entity_ids` filter the events stream only, \
             not {}",
            request.stream
        )));
    }
    if !allowed_project && request.project_id.is_some() {
        return Err(invalid(format!(
            "`project_id` is not a field of {}",
            request.stream
        )));
    }
    Ok(())
}

impl LogsPlan {
    pub async fn check(link: &Link, request: Subscribe) -> Result<Self, WsError> {
        only_own_fields(&request, true)?;
        if request.agent_id.is_some() {
            return Err(invalid("`agent_id` is a field of the steering stream"));
        }
        let task_id = request
            .task_id
            .ok_or_else(|| invalid("`task_id` is required for logs"))?;
        let after = match request.after.as_deref() {
            None => 0,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    WsError::new(
                        "invalid_cursor",
                        "`after` of logs is a line number (0 or more)",
                    )
                })?,
        };
        if request.attempt.is_some_and(|a| a == 0 || a > 1_000) {
            return Err(invalid("`attempt` is between 1 and 1000"));
        }
        if after > 0 && request.attempt.is_none() {
            // Line numbers are per attempt: without it, a resumption taken up after a
            // retry would follow the new attempt from the old one's position.
            return Err(invalid(
                "a logs resumption (`after`) names the `attempt` its line number is of",
            ));
        }
        let (task, _) = link
            .state
            .read::<Task>(&link.caller(), Permission::TaskRead, task_id)
            .await
            .map_err(|e| refusal(e, "task"))?;
        let scope = task
            .scope()
            .ok_or_else(|| WsError::new("not_found", "task not found"))?;
        if request
            .project_id
            .is_some_and(|p| Some(p) != scope.project_id)
        {
            return Err(WsError::new("not_found", "no such task in that project"));
        }
        let attempt = request.attempt.unwrap_or_else(|| task.attempt());
        if after > 0 {
            let lines = transcripts::count(link.state.pool(), task_id, attempt)
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "live: a transcript's length unreadable");
                    WsError::new("unavailable", "transcripts are unavailable; retry")
                })?;
            if after > lines {
                return Err(WsError::new(
                    "invalid_cursor",
                    format!("`after` {after} is beyond attempt {attempt}'s {lines} lines"),
                ));
            }
        }
        Ok(Self {
            id: request.id,
            task_id,
            attempt,
            scope,
            after,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The snapshot, then the lines after `after` as they are written.
    pub async fn run(self, link: Link, alive: Alive) {
        let snapshot = ServerMessage::Snapshot {
            id: &self.id,
            stream: "logs",
            project_id: self.scope.project_id.unwrap_or_default(),
            position: self.after.to_string(),
            resumed: self.after > 0,
            stale: false,
            events: Vec::new(),
        };
        if !link.send_for(&alive, snapshot_frame(&snapshot, None)).await {
            return;
        }
        let mut last = self.after;
        // Taken before the first read, so that growth during any read is not missed.
        let mut following = link
            .state
            .live
            .follow_transcript(self.task_id, self.attempt);
        let mut caller = link.caller_updates();
        while alive.get() {
            // The read and the queueing of what it read are one turn of the connection's:
            // a slow reader holds one message of its transcripts in memory at a time.
            let Some(turn) = link.read_turn().await else {
                return;
            };
            following.reading();
            let read = transcripts::read(
                link.state.pool(),
                self.task_id,
                self.attempt,
                last,
                LINES_PER_MESSAGE,
                MESSAGE_TEXT_BYTES,
            );
            let lines = match Box::pin(read).await {
                Ok(lines) => lines,
                Err(error) => {
                    tracing::warn!(%error, "live: a logs subscription cannot read");
                    alive.end();
                    let error = WsError::new("unavailable", "transcripts are unavailable; retry")
                        .with_id(Some(self.id.clone()));
                    link.send_error(&error).await;
                    return;
                }
            };
            if !link.may_read(Some(self.scope)) {
                return self.no_longer_visible(&link, &alive).await;
            }
            if let Some(newest) = lines.last() {
                last = newest.number;
                let message = ServerMessage::Logs {
                    id: &self.id,
                    task_id: self.task_id,
                    attempt: self.attempt,
                    position: last.to_string(),
                    lines: lines
                        .iter()
                        .map(|line| LineView {
                            number: line.number,
                            text: &line.text,
                        })
                        .collect(),
                };
                // Waiting for room, as a replay does: a transcript is read at its reader's
                // pace (nothing shared falls behind), where a resync made a slow reader of
                // a long transcript start it over for ever.
                if !link.send_for(&alive, Frame::Own(encode(&message))).await {
                    return;
                }
                drop(turn);
                continue;
            }
            drop(turn);
            // A transcript that no longer grows still ends at the re-check that finds its
            // reader lost access.
            tokio::select! {
                () = following.grown() => {}
                () = link.access_lost(&mut caller, self.scope) => {
                    return self.no_longer_visible(&link, &alive).await;
                }
            }
        }
    }

    /// Ends the subscription with `not_found`: its caller may no longer read the task.
    async fn no_longer_visible(&self, link: &Link, alive: &Alive) {
        alive.end();
        let error = WsError::new("not_found", "the task is no longer visible to you")
            .with_id(Some(self.id.clone()));
        link.send_error(&error).await;
    }
}

impl SteeringPlan {
    pub async fn check(link: &Link, request: Subscribe) -> Result<Self, WsError> {
        only_own_fields(&request, false)?;
        if request.task_id.is_some() || request.attempt.is_some() || request.after.is_some() {
            return Err(invalid(
                "the steering stream takes `agent_id` only (no task_id, attempt or after)",
            ));
        }
        let agent_id = request
            .agent_id
            .ok_or_else(|| invalid("`agent_id` is required for steering"))?;
        // Handing a message over records it as delivered: only the agent may take it.
        if link.caller().agent_id() != Some(agent_id) {
            return Err(WsError::new(
                "forbidden",
                "only the agent itself (its API key) receives its steering",
            ));
        }
        Ok(Self {
            id: request.id,
            agent_id,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// What waits now, then each message recorded for a task the agent holds.
    pub async fn run(self, link: Link, alive: Alive) {
        let hub = link.state.live.clone();
        let mut tap = match hub.tap().await {
            Ok(tap) => tap,
            Err(error) => {
                tracing::warn!(%error, "live: a steering subscription cannot follow the log");
                return self.unavailable(&link, &alive).await;
            }
        };
        let snapshot = ServerMessage::Snapshot {
            id: &self.id,
            stream: "steering",
            project_id: Uuid::nil(),
            position: tap.head.to_string(),
            resumed: false,
            stale: false,
            events: Vec::new(),
        };
        if !link.send_for(&alive, snapshot_frame(&snapshot, None)).await {
            return;
        }
        let waiting = omoi_projections::monitoring::steered_tasks(link.state.pool(), self.agent_id);
        let tasks = match Box::pin(waiting).await {
            Ok(tasks) => tasks,
            Err(error) => {
                tracing::warn!(%error, "live: steering waiting for an agent unreadable");
                return self.unavailable(&link, &alive).await;
            }
        };
        if !self.deliver(&link, &alive, &tasks).await {
            return;
        }
        while alive.get() {
            let event = match tap.events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(_)) => return link.resync(&alive, Some(&self.id)),
                Err(RecvError::Closed) => return,
            };
            if event.event_type != "TaskSteered" {
                continue;
            }
            let for_this_agent = matches!(
                event.payload.decode::<TaskEvent>(),
                Ok(TaskEvent::TaskSteered { agent_id, .. }) if agent_id == self.agent_id
            );
            let Ok(task_id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            if for_this_agent && !self.deliver(&link, &alive, &[task_id]).await {
                return;
            }
        }
    }

    /// Hands over what waits on `tasks`; false once the subscription is over.
    ///
    /// Room in the connection's queue is made for every waiting message before any is
    /// recorded as delivered: one recorded and then not queued (a full queue, a closed
    /// connection) would never be handed over by anyone. Without room, nothing is
    /// recorded; the subscription is resynced and the messages wait for the next
    /// subscription or heartbeat.
    async fn deliver(&self, link: &Link, alive: &Alive, tasks: &[Uuid]) -> bool {
        if tasks.is_empty() {
            return true;
        }
        let waiting = match Box::pin(waiting_steering(&link.state, self.agent_id, tasks)).await {
            Ok(waiting) => waiting,
            Err(error) => return self.left_pending(&error),
        };
        // An agent may hold up to 100 tasks with 20 messages waiting each: more than the
        // connection's queue, which could never grant the room for all at once.
        for batch in batches(waiting, link.capacity()) {
            if !self.deliver_batch(link, alive, batch).await {
                return false;
            }
        }
        true
    }

    /// Hands over `waiting`, at most the connection queue's capacity of messages.
    async fn deliver_batch(
        &self,
        link: &Link,
        alive: &Alive,
        waiting: Vec<(Uuid, Vec<Steering>)>,
    ) -> bool {
        let frame = |task_id: Uuid, steering: &Steering| {
            Frame::Own(encode(&ServerMessage::Steering {
                id: &self.id,
                task_id,
                steering,
            }))
        };
        let sizes: Vec<usize> = waiting
            .iter()
            .flat_map(|(task, messages)| messages.iter().map(|m| frame(*task, m).len()))
            .collect();
        if sizes.is_empty() {
            return true;
        }
        let mut reserved = match link.reserve(sizes.iter().sum(), sizes.len()).await {
            Ok(reserved) => reserved,
            Err(Offer::Full) => {
                link.resync(alive, Some(&self.id));
                return false;
            }
            Err(Offer::Queued | Offer::Closed) => return false,
        };
        let caller = link.caller();
        let messages = Box::pin(acknowledge_steering(&link.state, &caller, waiting)).await;
        for message in &messages {
            if !reserved.send(frame(message.task_id, &message.steering)) {
                return false;
            }
        }
        alive.get()
    }

    /// Steering that could not be read or recorded stays pending: the next heartbeat (or
    /// steering) hands it over.
    fn left_pending(&self, error: &crate::error::ApiError) -> bool {
        tracing::warn!(?error, agent_id = %self.agent_id,
            "live: steering not delivered over the socket");
        true
    }

    async fn unavailable(&self, link: &Link, alive: &Alive) {
        alive.end();
        let error = WsError::new("unavailable", "the event log is unavailable; retry")
            .with_id(Some(self.id.clone()));
        link.send_error(&error).await;
    }
}

/// `waiting` (messages by task, in order) cut into batches of at most `capacity`
/// messages, a task's own split when it holds more.
fn batches<T: Clone>(waiting: Vec<(Uuid, Vec<T>)>, capacity: usize) -> Vec<Vec<(Uuid, Vec<T>)>> {
    let capacity = capacity.max(1);
    let (mut batches, mut batch, mut count) = (Vec::new(), Vec::new(), 0);
    for (task, messages) in waiting {
        for piece in messages.chunks(capacity) {
            if count + piece.len() > capacity {
                batches.push(std::mem::take(&mut batch));
                count = 0;
            }
            count += piece.len();
            batch.push((task, piece.to_vec()));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::batches;

    proptest::proptest! {
        /// Every batch fits the queue, and together they hold every message once, in
        /// order, each under its task.
        #[test]
        fn steering_batches_fit_the_queue_and_keep_every_message_in_order(
            counts in proptest::collection::vec(0usize..25, 0..12),
            capacity in 0usize..30,
        ) {
            let waiting: Vec<(Uuid, Vec<(usize, usize)>)> = counts
                .iter()
                .enumerate()
                .map(|(t, n)| (Uuid::from_u128(t as u128), (0..*n).map(|m| (t, m)).collect()))
                .collect();
            let cut = batches(waiting.clone(), capacity);
            for batch in &cut {
                let size: usize = batch.iter().map(|(_, messages)| messages.len()).sum();
                proptest::prop_assert!(size >= 1 && size <= capacity.max(1), "{batch:?}");
            }
            let again: Vec<(Uuid, (usize, usize))> = cut
                .into_iter()
                .flatten()
                .flat_map(|(task, messages)| messages.into_iter().map(move |m| (task, m)))
                .collect();
            let whole: Vec<(Uuid, (usize, usize))> = waiting
                .into_iter()
                .flat_map(|(task, messages)| messages.into_iter().map(move |m| (task, m)))
                .collect();
            proptest::prop_assert_eq!(again, whole);
        }
    }
}
