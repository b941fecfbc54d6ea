//! Response bodies shared by several resources.

use omoi_store::json::{Metadata, RawJson};
use omoi_store::{Committed, StoredEvent};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// An aggregate's state with its version (the number of events it has).
#[derive(Debug, Serialize, ToSchema)]
pub struct Versioned<T> {
    pub id: Uuid,
    /// Sequence number of the aggregate's last event.
    pub version: usize,
    /// How many events the request appended (absent on reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appended: Option<usize>,
    pub state: T,
}

impl<T> Versioned<T> {
    pub fn read(id: Uuid, (state, version): (T, usize)) -> Self {
        Self {
            id,
            version,
            appended: None,
            state,
        }
    }

    pub fn committed(id: Uuid, committed: Committed<T>) -> Self {
        Self {
            id,
            version: committed.version,
            appended: Some(committed.appended),
            state: committed.state,
        }
    }
}

/// One stored event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventRecord {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position within the aggregate, from 1.
    pub sequence: i64,
    /// Position in the global stream; with `transaction_id` it forms the cursor.
    pub global_position: i64,
    pub transaction_id: i64,
    /// Cursor pointing just after this event in `GET /api/v1/events`.
    pub cursor: String,
    pub event_type: String,
    pub event_version: String,
    /// The event's fields, as the aggregate wrote them (an object, or a string for an
    /// event without fields).
    #[schema(value_type = serde_json::Value)]
    pub payload: RawJson,
    /// organization_id, project_id, actor, correlation_id, causation_id, request_id,
    /// occurred_at.
    #[schema(value_type = Object)]
    pub metadata: Metadata,
}

impl From<StoredEvent> for EventRecord {
    fn from(event: StoredEvent) -> Self {
        Self {
            cursor: event.cursor().to_string(),
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            global_position: event.global_position,
            transaction_id: event.transaction_id,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: event.payload,
            metadata: event.metadata,
        }
    }
}

/// Every event of one aggregate and its state after event `as_of` (or after all of them).
#[derive(Debug, Serialize, ToSchema)]
pub struct History<T> {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// Sequence of the aggregate's last event.
    pub version: i64,
    /// The sequence `state` reflects.
    pub as_of: i64,
    pub state: T,
    /// The page's events, oldest first.
    pub events: Vec<EventRecord>,
    /// Pass as `after` for the events after this page; absent when it holds the last.
    pub next_after: Option<i64>,
}
