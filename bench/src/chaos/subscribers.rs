//! Dashboard clients: each follows one project's `board` stream (or its raw `events`)
//! over WebSocket, folding the snapshot and then every delta, and when its replica dies
//! reconnects to another one with the last position it processed (`after`). Positions
//! must only rise, across reconnections too (a delta seen twice, or an older one after a
//! newer, would show as a position that does not). Once the faults stop, each resumes a
//! last time and must fold to exactly the board `GET /api/v1/board/view` shows — or, for
//! `events`, must have received exactly the project's events in the log after its first
//! snapshot, in order, none missing, none twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use omoi_store::Cursor;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::client::Client;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Cards by ticket id.
pub type Board = BTreeMap<String, Value>;

/// Which stream a subscriber follows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    #[default]
    Board,
    Events,
}

/// What a subscriber must end with.
pub enum Expected {
    Board(Board),
    /// The positions of the project's events after the subscriber's first snapshot.
    Events(Vec<Cursor>),
}

/// A subscriber's board (or events) and what happened to it.
#[derive(Debug, Default, Clone)]
pub struct Subscriber {
    pub project: String,
    pub stream: Stream,
    pub board: Board,
    /// Where an `events` subscriber started, and the positions of the events since.
    pub start: Option<Cursor>,
    pub events: Vec<Cursor>,
    pub last: Option<Cursor>,
    pub connections: usize,
    pub deltas: usize,
    /// Snapshots answering `after` with the deltas missed.
    pub resumed: usize,
    /// Snapshots answering `after` with a fresh board (the position was too old there).
    pub stale: usize,
    pub resyncs: usize,
    /// Broken rules seen while following (positions not rising, unexpected messages).
    pub violations: Vec<String>,
}

/// Why one connection ended.
enum Ended {
    /// The socket broke or closed (its replica died): connect again.
    Lost,
    /// `stop` was set.
    Stopped,
    /// The board equals the expected one.
    Matched,
}

impl Subscriber {
    pub fn new(project: String, stream: Stream) -> Self {
        Self {
            project,
            stream,
            ..Self::default()
        }
    }

    fn stream_name(&self) -> &'static str {
        match self.stream {
            Stream::Board => "board",
            Stream::Events => "events",
        }
    }

    fn subscription(&self) -> Value {
        let mut subscribe = json!({"type": "subscribe", "id": "chaos", "project_id": self.project,
                                   "stream": self.stream_name()});
        if let Some(last) = self.last {
            subscribe["after"] = json!(last.to_string());
        }
        subscribe
    }

    /// Whether what was folded is what is expected.
    fn matches(&self, expected: &Expected) -> bool {
        match expected {
            Expected::Board(board) => &self.board == board,
            Expected::Events(positions) => self.last >= positions.last().copied().or(self.start),
        }
    }

    /// Follows the board until `stop`, reconnecting to a random replica whenever the
    /// connection is lost.
    pub async fn follow(mut self, client: Client, token: String, stop: Arc<AtomicBool>) -> Self {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut socket) = connect(client.replica(), &token).await {
                self.connections += 1;
                match self.session(&mut socket, &stop, None).await {
                    Ended::Stopped | Ended::Matched => break,
                    Ended::Lost => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self
    }

    /// Resumes on a random replica and folds until it has what is `expected`, within
    /// `patience`; then waits a moment to see that nothing more arrives.
    pub async fn settle(
        &mut self,
        client: &Client,
        token: &str,
        expected: &Expected,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        let never = AtomicBool::new(false);
        while Instant::now() < deadline {
            let Ok(mut socket) = connect(client.replica(), token).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            self.connections += 1;
            let session = self.session(&mut socket, &never, Some((expected, deadline)));
            if let Ended::Matched = session.await {
                let quiet = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
                if let Ok(Some(Ok(Message::Text(text)))) = quiet {
                    self.violations
                        .push(format!("a message after the stream settled: {text}"));
                }
                if let Expected::Events(positions) = expected {
                    self.compare_events(positions);
                }
                return Ok(());
            }
        }
        anyhow::bail!(
            "the {} stream did not reach the expected state in time",
            self.stream_name()
        )
    }

    /// The events received are exactly the expected ones.
    fn compare_events(&mut self, expected: &[Cursor]) {
        if self.events == expected {
            return;
        }
        let received: std::collections::BTreeSet<_> = self.events.iter().collect();
        let missing = expected.iter().filter(|c| !received.contains(c)).count();
        self.violations.push(format!(
            "received {} events, the log has {} after {:?} ({missing} missing)",
            self.events.len(),
            expected.len(),
            self.start
        ));
    }

    /// Subscribes (resuming after the last position) and handles messages until the
    /// connection ends, `stop` is set, or the board equals `expected`.
    async fn session(
        &mut self,
        socket: &mut Socket,
        stop: &AtomicBool,
        expected: Option<(&Expected, Instant)>,
    ) -> Ended {
        if socket
            .send(Message::text(self.subscription().to_string()))
            .await
            .is_err()
        {
            return Ended::Lost;
        }
        let mut snapshot_seen = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ended::Stopped;
            }
            if let Some((expected, _)) = expected {
                if snapshot_seen && self.matches(expected) {
                    return Ended::Matched;
                }
            }
            let wait = expected.map_or(Duration::from_millis(250), |(_, deadline)| {
                deadline.saturating_duration_since(Instant::now())
            });
            let frame = match tokio::time::timeout(wait, socket.next()).await {
                Err(_) if expected.is_some() => return Ended::Lost,
                Err(_) => continue,
                Ok(Some(Ok(frame))) => frame,
                Ok(_) => return Ended::Lost,
            };
            let Message::Text(text) = frame else {
                continue;
            };
            let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
                self.violations.push(format!("not JSON: {text}"));
                continue;
            };
            match self.handle(&message, socket).await {
                Some(true) => snapshot_seen = true,
                Some(false) => {}
                None => return Ended::Lost,
            }
        }
    }

    /// Applies one message; `Some(true)` for a snapshot, `None` when the subscription
    /// must start again on a new connection.
    async fn handle(&mut self, message: &Value, socket: &mut Socket) -> Option<bool> {
        match message["type"].as_str() {
            Some("snapshot") => {
                self.snapshot(message);
                Some(true)
            }
            Some("delta") => {
                self.delta(message);
                Some(false)
            }
            Some("resync") => {
                // Subscribing again on this socket resumes after the last position.
                self.resyncs += 1;
                let again = self.subscription();
                socket.send(Message::text(again.to_string())).await.ok()?;
                Some(false)
            }
            Some("ping") | Some("pong") => Some(false),
            // `unavailable` (its database was out of reach): try elsewhere.
            Some("error") => None,
            _ => {
                self.violations
                    .push(format!("unexpected message {message}"));
                Some(false)
            }
        }
    }

    fn snapshot(&mut self, message: &Value) {
        let position = cursor(&message["position"]);
        let resumed = message["resumed"] == true;
        if self.last.is_some() {
            if resumed {
                self.resumed += 1;
            } else {
                self.stale += 1;
            }
        }
        if resumed {
            if position != self.last {
                self.violations.push(format!(
                    "a resumed snapshot at {position:?}, asked after {:?}",
                    self.last
                ));
            }
            return;
        }
        match self.stream {
            Stream::Board => self.board = cards_of(&message["data"]),
            // Only past 10,000 of the project's events may a resumption of the raw stream
            // come back stale: here it would be a gap.
            Stream::Events if self.last.is_some() => self.violations.push(format!(
                "events resumed after {:?} came back stale: {message}",
                self.last
            )),
            Stream::Events => self.start = position,
        }
        self.last = position;
    }

    fn delta(&mut self, message: &Value) {
        let Some(position) = cursor(&message["position"]) else {
            self.violations
                .push(format!("a delta without position: {message}"));
            return;
        };
        if self.last.is_some_and(|last| position <= last) {
            self.violations.push(format!(
                "delta at {position} after {} (doubled or out of order)",
                self.last.unwrap_or_default()
            ));
        }
        self.deltas += 1;
        self.last = Some(position);
        if self.stream == Stream::Events {
            if cursor(&message["event"]["cursor"]) != Some(position) {
                self.violations
                    .push(format!("an event not at its position: {message}"));
            }
            self.events.push(position);
            return;
        }
        let card = &message["change"]["card"];
        if let Some(ticket) = card["ticket_id"].as_str() {
            self.board.insert(ticket.to_string(), card.clone());
        } else {
            self.violations
                .push(format!("a delta without card: {message}"));
        }
    }
}

fn cursor(value: &Value) -> Option<Cursor> {
    value.as_str()?.parse().ok()
}

/// The cards of a board view (or a board snapshot's `data`), by ticket id.
pub fn cards_of(view: &Value) -> Board {
    let mut cards = Board::new();
    for column in view["columns"].as_array().into_iter().flatten() {
        for card in column["cards"].as_array().into_iter().flatten() {
            if let Some(id) = card["ticket_id"].as_str() {
                cards.insert(id.to_string(), card.clone());
            }
        }
    }
    cards
}

async fn connect(replica: &str, token: &str) -> anyhow::Result<Socket> {
    let url = format!("{}/api/v1/ws", replica.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let connecting = tokio_tungstenite::connect_async(request);
    let (socket, _) = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .context("connecting in time")??;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(position: &str, ticket: &str) -> Value {
        json!({"type": "delta", "id": "chaos", "position": position,
               "change": {"card": {"ticket_id": ticket, "title": position}}})
    }

    #[test]
    fn a_delta_seen_twice_or_out_of_order_is_reported_and_the_board_folds_the_rest() {
        let mut subscriber = Subscriber::new("p".into(), Stream::Board);
        subscriber.snapshot(
            &json!({"type": "snapshot", "position": "10-5", "resumed": false,
                                    "data": {"columns": [{"cards": [{"ticket_id": "a"}]}]}}),
        );
        subscriber.delta(&delta("10-6", "a"));
        subscriber.delta(&delta("11-7", "b"));
        assert!(
            subscriber.violations.is_empty(),
            "{:?}",
            subscriber.violations
        );
        subscriber.delta(&delta("11-7", "b"));
        subscriber.delta(&delta("10-9", "a"));
        assert_eq!(
            subscriber.violations.len(),
            2,
            "{:?}",
            subscriber.violations
        );
        assert_eq!(subscriber.board["b"]["title"], "11-7");
        assert_eq!(subscriber.board.len(), 2);
    }

    #[test]
    fn an_events_subscriber_that_missed_an_event_is_reported() {
        let mut subscriber = Subscriber::new("p".into(), Stream::Events);
        subscriber.snapshot(&json!({"type": "snapshot", "position": "1-1", "resumed": false}));
        for position in ["1-2", "3-4"] {
            subscriber.delta(&json!({"type": "delta", "position": position,
                                     "event": {"cursor": position}}));
        }
        let log: Vec<Cursor> = ["1-2", "2-3", "3-4"]
            .iter()
            .map(|c| c.parse().expect("a cursor"))
            .collect();
        assert!(subscriber.matches(&Expected::Events(log.clone())));
        subscriber.compare_events(&log);
        assert_eq!(
            subscriber.violations.len(),
            1,
            "{:?}",
            subscriber.violations
        );
        assert!(subscriber.violations[0].contains("1 missing"));
    }
}
