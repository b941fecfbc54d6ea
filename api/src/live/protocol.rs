//! The messages of both WebSocket endpoints (JSON text frames) and their errors.
//! docs/websocket.md describes them for clients; keep the two in step.

use omoi_store::json::{Metadata, RawJson};
use omoi_store::{Cursor, StoredEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use super::frame::Frame;

/// A client message, split into its `type` and its other fields.
#[derive(Debug)]
pub struct Envelope {
    pub kind: String,
    pub fields: Map<String, Value>,
}

impl Envelope {
    /// Reads a frame: invalid JSON, a non-object and a missing `type` are refused here.
    pub fn parse(text: &str) -> Result<Self, WsError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| WsError::new("invalid_json", format!("the frame is not JSON: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err(WsError::new(
                "invalid_message",
                "a message is a JSON object with a `type`",
            ));
        };
        match fields.remove("type") {
            Some(Value::String(kind)) => Ok(Self { kind, fields }),
            _ => Err(WsError::new(
                "invalid_message",
                "a message needs a string field `type`",
            )),
        }
    }

    /// The client's subscription id, when the message carries one (for error replies).
    pub fn id(&self) -> Option<String> {
        self.fields
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The fields as `T`; unknown fields and wrong types are refused, naming the field.
    pub fn into_fields<T: DeserializeOwned>(self) -> Result<T, WsError> {
        let id = self.id();
        serde_path_to_error::deserialize(Value::Object(self.fields))
            .map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!(", field `{path}`")
                };
                let detail = format!("`{}` message{at}: {}", self.kind, e.into_inner());
                WsError::new("invalid_message", detail)
            })
            .map_err(|e| e.with_id(id))
    }
}

/// `{"type":"subscribe",…}` on `/api/v1/ws`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Chosen by the client; names the subscription in every message about it.
    pub id: String,
    pub stream: String,
    pub project_id: Option<Uuid>,
    /// Resume after this position (a cursor of a snapshot or delta).
    pub after: Option<String>,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub entity_types: Vec<String>,
    #[serde(default)]
    pub entity_ids: Vec<String>,
    /// The task whose transcript a `logs` subscription follows.
    pub task_id: Option<Uuid>,
    /// The attempt a `logs` subscription follows (the newest by default).
    pub attempt: Option<u32>,
    /// The agent whose steering a `steering` subscription receives (its own credential).
    pub agent_id: Option<Uuid>,
}

/// `{"type":"unsubscribe","id":…}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    pub id: String,
}

/// `{"type":"subscribe",…}` on the original's feed: replaces every filter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSubscribe {
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub entity_types: Vec<String>,
    #[serde(default)]
    pub entity_ids: Vec<String>,
}

/// `{"type":"authenticate","token":…}`: a fresh credential of the socket's principal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authenticate {
    pub token: String,
}

/// `{"type":"ping"}` and `{"type":"pong"}` carry nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// An error message: the socket stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct WsError {
    pub code: &'static str,
    pub detail: String,
    pub id: Option<String>,
}

impl WsError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            id: None,
        }
    }

    pub fn with_id(mut self, id: Option<String>) -> Self {
        if self.id.is_none() {
            self.id = id;
        }
        self
    }

    pub fn message(&self) -> ServerMessage<'_> {
        ServerMessage::Error {
            code: self.code,
            detail: &self.detail,
            id: self.id.as_deref(),
        }
    }
}

/// The event filters of the `events` stream and of the feed; all given ones must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filters {
    pub event_types: Vec<String>,
    /// Aggregate types, compared without case (`task` matches `Task`).
    pub entity_types: Vec<String>,
    pub entity_ids: Vec<String>,
}

impl Filters {
    pub fn new(
        event_types: Vec<String>,
        entity_types: Vec<String>,
        entity_ids: Vec<String>,
    ) -> Self {
        let clean = |list: Vec<String>| -> Vec<String> {
            list.into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        // Ids are stored in the canonical lower-case form; accept any UUID spelling.
        let entity_ids = clean(entity_ids)
            .into_iter()
            .map(|id| id.parse::<Uuid>().map_or(id, |uuid| uuid.to_string()))
            .collect();
        Self {
            event_types: clean(event_types),
            entity_types: clean(entity_types),
            entity_ids,
        }
    }

    /// From the feed's comma-separated query parameters.
    pub fn from_query(
        event_types: Option<&str>,
        entity_types: Option<&str>,
        entity_ids: Option<&str>,
    ) -> Self {
        let split = |list: Option<&str>| -> Vec<String> {
            list.map(|l| l.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        Self::new(split(event_types), split(entity_types), split(entity_ids))
    }

    pub fn matches(&self, event: &StoredEvent) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && (self.entity_types.is_empty()
                || self
                    .entity_types
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(&event.aggregate_type)))
            && (self.entity_ids.is_empty() || self.entity_ids.contains(&event.aggregate_id))
    }
}

/// One stored event, in the shape of `EventRecord` (`GET /api/v1/events`), borrowed so
/// that a delta does not copy the payload.
#[derive(Debug, Serialize)]
pub struct EventView<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub global_position: i64,
    pub transaction_id: i64,
    pub cursor: String,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a RawJson,
    pub metadata: &'a Metadata,
}

impl<'a> From<&'a StoredEvent> for EventView<'a> {
    fn from(event: &'a StoredEvent) -> Self {
        Self {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            global_position: event.global_position,
            transaction_id: event.transaction_id,
            cursor: event.cursor().to_string(),
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
        }
    }
}

/// One transcript line.
#[derive(Debug, Serialize)]
pub struct LineView<'a> {
    pub number: i64,
    pub text: &'a str,
}

/// Everything the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The start of a subscription: what it reflects as of `position`.
    Snapshot {
        id: &'a str,
        stream: &'a str,
        project_id: Uuid,
        position: String,
        /// Deltas after the client's `after` follow.
        resumed: bool,
        /// `after` was too old to replay: a fresh start; reload over HTTP.
        stale: bool,
        /// Empty for `events`: its deltas are the stream. A read-model stream's model
        /// follows as `data` ([`snapshot_frame`]).
        events: Vec<EventView<'a>>,
    },
    Delta {
        id: &'a str,
        position: String,
        event: EventView<'a>,
    },
    /// The subscription ended because the client did not keep up; subscribe again.
    Resync {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        reason: &'a str,
    },
    Unsubscribed {
        id: &'a str,
    },
    Error {
        code: &'a str,
        detail: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    Ping,
    Pong,
    /// The socket goes on with the credential an `authenticate` handed over.
    Authenticated,
    /// Lines of a task's transcript (`logs` stream), in order; `position` is the last
    /// line's number, the `after` to resume with.
    Logs {
        id: &'a str,
        task_id: Uuid,
        attempt: u32,
        position: String,
        lines: Vec<LineView<'a>>,
    },
    /// A steering message for a task the agent holds (`steering` stream), recorded as
    /// delivered as it is sent.
    Steering {
        id: &'a str,
        task_id: Uuid,
        #[serde(flatten)]
        steering: &'a omoi_domain::task::Steering,
    },
    /// The feed's event (the original's shape, plus its position).
    Event {
        event_type: &'a str,
        entity_type: String,
        entity_id: &'a str,
        payload: &'a RawJson,
        position: String,
    },
    /// The feed's answer to a filter change (the original answered `{"status":"subscribed"}`).
    Subscribed {
        status: &'a str,
        #[serde(flatten)]
        filters: &'a Filters,
    },
}

/// The JSON text of a message.
pub fn encode(message: &ServerMessage<'_>) -> String {
    serde_json::to_string(message).unwrap_or_else(|error| {
        // Only a bug can get here (every field is plain data); say so rather than drop it.
        tracing::error!(%error, "a WebSocket message could not be encoded");
        r#"{"type":"error","code":"internal","detail":"a message could not be encoded"}"#
            .to_string()
    })
}

/// A delta of subscription `id` whose body (everything after the id) is shared by every
/// subscriber: the bytes of [`ServerMessage::Delta`], or of a read model's delta.
pub fn delta_frame(id: &str, body: Utf8Bytes) -> Frame {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".to_string());
    Frame::Wrapped {
        head: format!(r#"{{"type":"delta","id":{id},"#),
        body,
        tail: "",
    }
}

/// The body of an `events` delta, encoded once for every subscriber ([`delta_frame`]).
pub fn event_delta_body(event: &StoredEvent) -> Utf8Bytes {
    let view = serde_json::to_string(&EventView::from(event)).unwrap_or_else(|error| {
        tracing::error!(%error, "an event could not be encoded");
        "null".to_string()
    });
    format!(r#""position":"{}","event":{view}}}"#, event.cursor()).into()
}

/// The original feed's message for an event (its shape, plus the position): the same
/// for every client.
pub fn feed_message(event: &StoredEvent) -> Utf8Bytes {
    encode(&ServerMessage::Event {
        event_type: &event.event_type,
        entity_type: event.aggregate_type.to_lowercase(),
        entity_id: &event.aggregate_id,
        payload: &event.payload,
        position: event.cursor().to_string(),
    })
    .into()
}

/// The body of a read model's delta: `change` is JSON text, encoded once for every
/// subscriber ([`delta_frame`]).
pub fn view_delta_body(position: Cursor, change: &str) -> Utf8Bytes {
    format!(r#""position":"{position}","change":{change}}}"#).into()
}

/// A snapshot (`message` is a [`ServerMessage::Snapshot`]) with a read model's `data`,
/// shared by every subscriber, as its last field.
pub fn snapshot_frame(message: &ServerMessage<'_>, data: Option<Utf8Bytes>) -> Frame {
    let text = encode(message);
    let Some(body) = data else {
        return Frame::Own(text);
    };
    // The object's closing brace makes way for the data, so that the model is not copied
    // into every subscriber's message.
    match text.strip_suffix('}') {
        Some(open) => Frame::Wrapped {
            head: format!(r#"{open},"data":"#),
            body,
            tail: "}",
        },
        None => Frame::Own(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::responses::EventRecord;
    use serde_json::json;

    fn stored() -> StoredEvent {
        StoredEvent {
            aggregate_type: "Task".into(),
            aggregate_id: "0190a4e8-3b6c-7d2e-9f00-000000000001".into(),
            sequence: 3,
            global_position: 42,
            transaction_id: 900,
            event_type: "TaskStarted".into(),
            event_version: "1".into(),
            payload: json!({"at": "now"}).into(),
            metadata: json!({"project_id": "p"}).into(),
        }
    }

    #[test]
    fn a_delta_carries_the_event_as_the_http_stream_shows_it() {
        let event = stored();
        let view = serde_json::to_value(EventView::from(&event)).expect("a view");
        let record = serde_json::to_value(EventRecord::from(event)).expect("a record");
        assert_eq!(view, record);
    }

    #[test]
    fn a_view_delta_is_one_json_object_with_the_id_escaped() {
        let position = Cursor {
            transaction_id: 7,
            global_position: 9,
        };
        let body = view_delta_body(position, r#"{"card":{"title":"x"}}"#);
        let text = delta_frame("a\"b", body).into_text();
        let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
        assert_eq!(
            value,
            json!({"type": "delta", "id": "a\"b", "position": "7-9",
                   "change": {"card": {"title": "x"}}})
        );
    }

    #[test]
    fn a_shared_event_delta_has_the_bytes_of_the_delta_message() {
        let event = stored();
        let shared = delta_frame("s\u{e9}", event_delta_body(&event)).into_text();
        let message = encode(&ServerMessage::Delta {
            id: "s\u{e9}",
            position: event.cursor().to_string(),
            event: EventView::from(&event),
        });
        assert_eq!(shared.as_str(), message);
    }

    #[test]
    fn a_snapshot_frame_carries_the_shared_model_as_its_last_field() {
        let message = ServerMessage::Snapshot {
            id: "b",
            stream: "board",
            project_id: Uuid::nil(),
            position: "1-2".into(),
            resumed: false,
            stale: true,
            events: Vec::new(),
        };
        let data = Utf8Bytes::from(r#"{"columns":[]}"#);
        let text = snapshot_frame(&message, Some(data)).into_text();
        assert_eq!(
            text.as_str(),
            r#"{"type":"snapshot","id":"b","stream":"board","project_id":"00000000-0000-0000-0000-000000000000","position":"1-2","resumed":false,"stale":true,"events":[],"data":{"columns":[]}}"#
        );
        let bare = snapshot_frame(&message, None).into_text();
        assert_eq!(bare.as_str(), encode(&message));
    }

    #[test]
    fn filters_are_anded_and_empty_ones_match_everything() {
        let event = stored();
        assert!(Filters::default().matches(&event));
        let by_type = |t: &str| Filters::new(vec![], vec![t.into()], vec![]);
        assert!(by_type("task").matches(&event));
        assert!(!by_type("ticket").matches(&event));
        let upper_id = "0190A4E8-3B6C-7D2E-9F00-000000000001".to_string();
        let both = Filters::new(vec!["TaskStarted".into()], vec![], vec![upper_id]);
        assert!(both.matches(&event));
        let wrong = Filters::new(vec!["TaskStarted".into()], vec!["ticket".into()], vec![]);
        assert!(!wrong.matches(&event));
        let query = Filters::from_query(Some("A, TaskStarted"), Some(""), None);
        assert_eq!(query.event_types, vec!["A", "TaskStarted"]);
        assert!(query.entity_types.is_empty());
    }

    #[test]
    fn envelopes_refuse_what_is_not_a_typed_object() {
        assert_eq!(
            Envelope::parse("{").map(|_| ()).map_err(|e| e.code),
            Err("invalid_json")
        );
        assert_eq!(
            Envelope::parse("[1]").map(|_| ()).map_err(|e| e.code),
            Err("invalid_message")
        );
        assert_eq!(
            Envelope::parse("{}").map(|_| ()).map_err(|e| e.code),
            Err("invalid_message")
        );
        let envelope =
            Envelope::parse(r#"{"type":"subscribe","id":"a","oops":1}"#).expect("an envelope");
        let error = envelope
            .into_fields::<Subscribe>()
            .expect_err("an unknown field");
        assert_eq!(error.id.as_deref(), Some("a"));
        assert_eq!(error.code, "invalid_message");
    }
}
