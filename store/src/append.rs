//! Appending decided events: the `INSERT`s every command's events go through.
//!
//! The bus appends with its own statements (not postgres-es's, which writes one aggregate's
//! events per transaction, one statement per event): commands that must stand or fall
//! together across aggregates (a spec's approval and the workflow it counts on the billing
//! account) need their events in *one* transaction, and concurrent commands on different
//! aggregates are appended together ([`crate::group`]). Every row of a unit goes in one
//! multi-row `INSERT`, in the order given (positions follow it). The optimistic check is
//! the primary key `(aggregate_type, aggregate_id, sequence)`, which refuses a second writer
//! of the same sequence, reported here as [`AppendError::Conflict`].

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
    /// The database could not be reached, or went away before answering: whether the
    /// events were committed is unknown.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for AppendError {
    /// A sequence taken by another writer is a conflict, and so is a deadlock with
    /// another writer (two units taking the same aggregates' keys in opposite orders) or
    /// a serialization failure: nothing was appended, and the command is decided again on
    /// what is committed.
    fn from(error: sqlx::Error) -> Self {
        let duplicate = error
            .as_database_error()
            .is_some_and(|e| e.is_unique_violation());
        if duplicate || crate::db::lost_to_another_transaction(&error) {
            Self::Conflict
        } else if crate::db::is_unavailable(&error) {
            Self::Unavailable(error.to_string())
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

    /// Moves every row of `other` to the end of these.
    pub fn append(&mut self, other: &mut Rows) {
        self.aggregate_types.append(&mut other.aggregate_types);
        self.aggregate_ids.append(&mut other.aggregate_ids);
        self.sequences.append(&mut other.sequences);
        self.event_types.append(&mut other.event_types);
        self.event_versions.append(&mut other.event_versions);
        self.payloads.append(&mut other.payloads);
        self.metadata.append(&mut other.metadata);
    }

    /// The rows from `at` on, taken out of these.
    pub fn split_off(&mut self, at: usize) -> Rows {
        Rows {
            aggregate_types: self.aggregate_types.split_off(at),
            aggregate_ids: self.aggregate_ids.split_off(at),
            sequences: self.sequences.split_off(at),
            event_types: self.event_types.split_off(at),
            event_versions: self.event_versions.split_off(at),
            payloads: self.payloads.split_off(at),
            metadata: self.metadata.split_off(at),
        }
    }

    /// Inserts every row in one statement, as one unit: all or none. One statement is one
    /// transaction by itself, so the rows of several aggregates commit together without
    /// `begin`/`commit` round trips; inside a caller's transaction they commit with it.
    /// Rows get their global positions in the order they were pushed. A taken sequence is
    /// [`AppendError::Conflict`].
    pub async fn insert<'c>(
        &self,
        executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    ) -> Result<(), AppendError> {
        let taken = self.insert_units(executor, &vec![0; self.len()]).await?;
        match taken.is_empty() {
            true => Ok(()),
            false => Err(AppendError::Conflict),
        }
    }

    /// Inserts the rows of several units in one statement, except the units one of whose
    /// sequences is already taken: `units[i]` is the unit of row `i`. Returns those units
    /// (each one's optimistic check failed: its aggregate moved on since it was decided),
    /// so that a unit decided on an out-of-date copy fails alone. A sequence another
    /// transaction holds uncommitted is not seen by the check: the insert waits for it and
    /// fails as a whole with [`AppendError::Conflict`] if it commits.
    ///
    /// A unit also counts as taken when the event it follows was committed by a younger
    /// transaction than this one. That happens only to a transaction that wrote before it
    /// read the aggregate (a process manager's batch deciding one effect after another):
    /// the log orders by transaction id, so its event would be read before the one it
    /// follows. Retried in a fresh transaction, it is decided again after it. A transaction
    /// whose first write is this statement has no id yet and skips the probe: its id comes
    /// after every commit it decided on.
    pub async fn insert_units<'c>(
        &self,
        executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
        units: &[i32],
    ) -> Result<Vec<i32>, AppendError> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        // A data-modifying WITH runs whether or not the outer select reads it.
        let taken = sqlx::query_scalar(
            "with batch as (
                 select * from unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
                                      $5::text[], $6::jsonb[], $7::jsonb[], $8::int[])
                        with ordinality
                        as batch (aggregate_type, aggregate_id, sequence, event_type,
                                  event_version, payload, metadata, unit, position)
             ), taken as (
                 select distinct unit from batch
                  where exists (select from events e
                                 where e.aggregate_type = batch.aggregate_type
                                   and e.aggregate_id = batch.aggregate_id
                                   and e.sequence = batch.sequence)
                     or (pg_current_xact_id_if_assigned() is not null
                         and exists (select from events e
                                      where e.aggregate_type = batch.aggregate_type
                                        and e.aggregate_id = batch.aggregate_id
                                        and e.sequence = batch.sequence - 1
                                        and e.transaction_id > pg_current_xact_id_if_assigned()))
             ), appended as (
                 insert into events
                     (aggregate_type, aggregate_id, sequence, event_type, event_version,
                      payload, metadata)
                 select aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata
                   from batch
                  where unit not in (select unit from taken)
                  order by position
             )
             select unit from taken",
        )
        .bind(&self.aggregate_types)
        .bind(&self.aggregate_ids)
        .bind(&self.sequences)
        .bind(&self.event_types)
        .bind(&self.event_versions)
        .bind(&self.payloads)
        .bind(&self.metadata)
        .bind(units)
        .fetch_all(executor)
        .await?;
        Ok(taken)
    }
}

impl Default for Rows {
    fn default() -> Self {
        Self::new()
    }
}
