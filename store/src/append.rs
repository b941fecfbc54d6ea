//! Appending decided events: the one `INSERT` every command's events go through.
//!
//! postgres-es writes one aggregate's events per transaction, one statement per event.
//! Commands that must stand or fall together across aggregates (a spec's approval and the
//! workflow it counts on the billing account) need their events in *one* transaction, so
//! the bus appends with its own statement: every row of a unit in one multi-row `INSERT`,
//! in the order given (positions follow it). The optimistic check is postgres-es's: the
//! primary key `(aggregate_type, aggregate_id, sequence)` refuses a second writer of the
//! same sequence, reported here as [`AppendError::Conflict`].

use std::collections::HashMap;

use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;

/// One aggregate's events as they will be stored.
#[derive(Debug, Clone)]
pub struct Rows {
    aggregate_types: Vec<&'static str>,
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to one of the aggregates first.
    #[error("an aggregate was changed concurrently")]
    Conflict,
    #[error("an event could not be encoded: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        let duplicate = error
            .as_database_error()
            .is_some_and(|e| e.is_unique_violation());
        if duplicate {
            Self::Conflict
        } else {
            Self::Database(error)
        }
    }
}

impl Rows {
    pub fn new() -> Self {
        Self {
            aggregate_types: Vec::new(),
            aggregate_ids: Vec::new(),
            sequences: Vec::new(),
            event_types: Vec::new(),
            event_versions: Vec::new(),
            payloads: Vec::new(),
            metadata: Vec::new(),
        }
    }

    /// Adds `events` of aggregate `aggregate_id`, which had `version` events before them.
    pub fn push<A: Aggregate>(
        &mut self,
        aggregate_id: &str,
        version: usize,
        events: &[A::Event],
        metadata: &HashMap<String, String>,
    ) -> Result<(), AppendError> {
        let metadata = serde_json::to_value(metadata)?;
        for (offset, event) in events.iter().enumerate() {
            self.aggregate_types.push(A::TYPE);
            self.aggregate_ids.push(aggregate_id.to_string());
            self.sequences
                .push(i64::try_from(version + offset + 1).unwrap_or(i64::MAX));
            self.event_types.push(event.event_type());
            self.event_versions.push(event.event_version());
            self.payloads.push(serde_json::to_value(event)?);
            self.metadata.push(metadata.clone());
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Inserts every row in one statement. One statement is one transaction by itself, so
    /// the rows of several aggregates commit together without `begin`/`commit` round
    /// trips; inside a caller's transaction they commit with it. Rows get their global
    /// positions in the order they were pushed.
    pub async fn insert<'c>(
        &self,
        executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    ) -> Result<(), AppendError> {
        if self.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "insert into events
                 (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             select aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
               from unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                           $6::jsonb[], $7::jsonb[])
                    with ordinality
                    as row (aggregate_type, aggregate_id, sequence, event_type, event_version,
                            payload, metadata, position)
              order by position",
        )
        .bind(&self.aggregate_types)
        .bind(&self.aggregate_ids)
        .bind(&self.sequences)
        .bind(&self.event_types)
        .bind(&self.event_versions)
        .bind(&self.payloads)
        .bind(&self.metadata)
        .execute(executor)
        .await?;
        Ok(())
    }
}

impl Default for Rows {
    fn default() -> Self {
        Self::new()
    }
}
