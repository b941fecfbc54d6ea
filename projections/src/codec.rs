//! Decoding the log and storing enums as text: what every read model shares.
//!
//! [`WorkEvent`] is the ticket-or-task event the work read models (board, graph) fold;
//! [`EventMeta`] and [`entity_id`] are the parts of any event the timeline and the agents
//! view need. The text helpers keep a row's enums in their wire spelling.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use omoi_domain::task::{Task, TaskEvent};
use omoi_domain::ticket::{Ticket, TicketEvent};
use omoi_store::json::{Metadata, MetadataField};
use omoi_store::StoredEvent;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::ProjectionError;

// ---------------------------------------------------------------------------------------
// Decoding the log
// ---------------------------------------------------------------------------------------

/// A ticket or task event, decoded from the log. Other aggregates do not shape work
/// read models.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkEvent {
    Ticket { id: Uuid, event: TicketEvent },
    Task { id: Uuid, event: TaskEvent },
}

impl WorkEvent {
    /// `None` for events of other aggregates; an error for a ticket or task event whose
    /// payload does not match its type (a poison event: the projector must stop there).
    pub fn decode(stored: &StoredEvent) -> Result<Option<Self>, ProjectionError> {
        let id = || {
            stored
                .aggregate_id
                .parse::<Uuid>()
                .map_err(|e| ProjectionError::payload(stored, e))
        };
        if stored.aggregate_type == Ticket::TYPE {
            let event = payload(stored)?;
            return Ok(Some(Self::Ticket { id: id()?, event }));
        }
        if stored.aggregate_type == Task::TYPE {
            let event = payload(stored)?;
            return Ok(Some(Self::Task { id: id()?, event }));
        }
        Ok(None)
    }

    /// The events of a batch `keep` wants, decoded, with their global positions.
    pub fn decode_batch(
        events: &[StoredEvent],
        keep: fn(&WorkEvent) -> bool,
    ) -> Result<Vec<(Self, i64)>, ProjectionError> {
        let mut work = Vec::with_capacity(events.len());
        for event in events {
            if let Some(decoded) = Self::decode(event)?.filter(keep) {
                work.push((decoded, event.global_position));
            }
        }
        Ok(work)
    }

    /// The aggregate the event belongs to.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Ticket { id, .. } | Self::Task { id, .. } => *id,
        }
    }
}

/// An event's payload as its aggregate's event type; a mismatch is a poison event.
pub(crate) fn payload<E: DeserializeOwned>(stored: &StoredEvent) -> Result<E, ProjectionError> {
    stored
        .payload
        .decode::<E>()
        .map_err(|e| ProjectionError::payload(stored, e))
}

/// The part of an event's metadata read models rely on (the command bus writes it).
#[derive(Debug, Clone)]
pub struct EventMeta {
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub actor: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl EventMeta {
    /// The metadata fields it reads: a catch-up of a projector whose only use of metadata
    /// is this one streams them alone ([`crate::Projector::columns`]).
    pub const FIELDS: &'static [MetadataField] = &[
        MetadataField::OrganizationId,
        MetadataField::ProjectId,
        MetadataField::Actor,
        MetadataField::OccurredAt,
    ];

    /// From the event's metadata, as the process read its fields once for all readers.
    pub fn of(event: &StoredEvent) -> Result<Self, ProjectionError> {
        Self::read(&event.metadata)
            .map_err(|detail| ProjectionError::payload(event, format!("metadata: {detail}")))
    }

    /// From metadata's fields; the error says which field is missing or wrong.
    pub fn read(metadata: &Metadata) -> Result<Self, String> {
        fn parse<T: std::str::FromStr<Err: std::fmt::Display>>(
            field: &str,
            text: Option<&str>,
        ) -> Result<Option<T>, String> {
            text.map(|text| text.parse().map_err(|e| format!("{field}: {e}")))
                .transpose()
        }
        fn require<T>(field: &str, value: Option<T>) -> Result<T, String> {
            value.ok_or_else(|| format!("no {field}"))
        }
        Ok(Self {
            organization_id: require(
                "organization_id",
                parse("organization_id", metadata.organization_id())?,
            )?,
            project_id: parse("project_id", metadata.project_id())?,
            actor: metadata.actor().map(str::to_string),
            occurred_at: require("occurred_at", parse("occurred_at", metadata.occurred_at())?)?,
        })
    }
}

/// The aggregate id of an event as a UUID (every omoi aggregate has one).
pub fn entity_id(event: &StoredEvent) -> Result<Uuid, ProjectionError> {
    event
        .aggregate_id
        .parse()
        .map_err(|e| ProjectionError::payload(event, format!("aggregate id: {e}")))
}

// ---------------------------------------------------------------------------------------
// Storing enums as text
// ---------------------------------------------------------------------------------------

/// The wire name of a unit enum (`"HIGH"`, `"PHASE_DESIGN"`, `"dependency"`), so rows hold
/// the same spelling as the API and can be filtered and grouped in SQL.
pub(crate) fn to_text<T: Serialize>(value: &T) -> Result<String, ProjectionError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => Ok(text),
        Ok(other) => Err(encode_error(format!("{other} is not a unit enum"))),
        Err(e) => Err(encode_error(e)),
    }
}

/// The enum whose wire name is `text`.
pub(crate) fn from_text<T: DeserializeOwned>(text: String) -> Result<T, ProjectionError> {
    serde_json::from_value(serde_json::Value::String(text)).map_err(decode_error)
}

pub(crate) fn encode_error(
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ProjectionError {
    ProjectionError::Database(sqlx::Error::Encode(e.into()))
}

/// A row value that does not fit its type: the table was written by another version.
pub(crate) fn decode_error(
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ProjectionError {
    ProjectionError::Database(sqlx::Error::Decode(e.into()))
}

/// A count stored as `bigint` back as `u32`.
pub(crate) fn count_of(row: &PgRow, column: &str) -> Result<u32, ProjectionError> {
    let value: i64 = row.try_get::<i64, _>(column)?;
    u32::try_from(value).map_err(decode_error)
}

#[cfg(test)]
mod tests {
    use omoi_domain::common::{Phase, Priority};
    use omoi_domain::ticket::BlockReason;

    use super::*;

    #[test]
    fn enums_are_stored_by_their_wire_names() {
        assert_eq!(to_text(&Priority::High).expect("text"), "HIGH");
        assert_eq!(to_text(&Phase::Design).expect("text"), "PHASE_DESIGN");
        assert_eq!(
            from_text::<BlockReason>("failing_checks".into()).expect("reason"),
            BlockReason::FailingChecks
        );
        assert!(from_text::<Priority>("URGENT".into()).is_err());
    }
}
