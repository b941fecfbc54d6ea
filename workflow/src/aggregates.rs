//! What a process manager's batch reads and writes, batched: the aggregates it decides on
//! are read with one query per type ([`Aggregates`]) and decided on in memory; the
//! commands it sends are appended together with one statement at the end ([`Effects`]).
//!
//! The batch's transaction takes its id at its first write and holds every reader of the
//! log (`pg_snapshot_xmin`) until it commits; appending every effect at the end keeps that
//! window to a few statements, whatever the batch holds.

use std::collections::{BTreeSet, HashMap};

use omoi_domain::common::Scoped;
use omoi_projections::ProjectionError;
use omoi_store::append::{AppendError, Rows};
use omoi_store::bus::decide_into;
use omoi_store::log::{fold_until, histories, histories_of};
use omoi_store::{CommandContext, CommandError, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

/// Aggregates of type `A` as they stand in the batch's transaction, with the batch's own
/// decided effects applied.
pub(crate) struct Aggregates<A> {
    /// Each read aggregate's state and number of events (one without events: its empty
    /// state and 0).
    known: HashMap<String, (A, usize)>,
}

impl<A> Aggregates<A>
where
    A: cqrs_es::Aggregate<Services = ()> + Scoped + Clone,
{
    pub(crate) fn new() -> Self {
        Self {
            known: HashMap::new(),
        }
    }

    /// Reads those of `ids` not read yet, with one query. A payload that cannot be read
    /// fails the batch, blamed on `event`; the runner then applies the batch's events one
    /// at a time and stops at the one whose aggregates cannot be read.
    pub(crate) async fn read(
        &mut self,
        tx: &mut PgConnection,
        event: &StoredEvent,
        ids: impl IntoIterator<Item = String>,
    ) -> Result<(), ProjectionError> {
        let wanted = self.missing(ids);
        if wanted.is_empty() {
            return Ok(());
        }
        let events = histories(&mut *tx, A::TYPE, &wanted).await?;
        self.know_read(event, wanted, &events)
    }

    /// Those of `ids` not read yet, each once.
    fn missing(&self, ids: impl IntoIterator<Item = String>) -> Vec<String> {
        ids.into_iter()
            .filter(|id| !self.known.contains_key(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Takes the histories of `wanted` out of `events` (read for them, perhaps with
    /// other types'); a wanted aggregate without events is known as empty.
    fn know_read(
        &mut self,
        event: &StoredEvent,
        wanted: Vec<String>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        // Ordered by type first: a type's events are one stretch.
        let start = events.iter().position(|e| e.aggregate_type == A::TYPE);
        let mine = start.map_or(&[][..], |start| {
            let len = events[start..]
                .iter()
                .take_while(|e| e.aggregate_type == A::TYPE)
                .count();
            &events[start..start + len]
        });
        for history in mine.chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
            self.know(event, history)?;
        }
        for id in wanted {
            self.known.entry(id).or_insert_with(|| (A::default(), 0));
        }
        Ok(())
    }

    /// Takes one aggregate's whole `history`, read by the caller.
    pub(crate) fn know(
        &mut self,
        event: &StoredEvent,
        history: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let Some(first) = history.first() else {
            return Ok(());
        };
        let state: A = fold_until(history, None).map_err(|e| ProjectionError::payload(event, e))?;
        self.known
            .insert(first.aggregate_id.clone(), (state, history.len()));
        Ok(())
    }

    /// Aggregate `id` (read before), `None` when it has no events.
    pub(crate) fn get(&self, id: &str) -> Option<&A> {
        self.known
            .get(id)
            .filter(|(_, version)| *version > 0)
            .map(|(state, _)| state)
    }

    /// Aggregate `id` (read before) as folding its events gives: the empty state when it
    /// has none.
    pub(crate) fn state(&self, id: &str) -> A {
        self.get(id).cloned().unwrap_or_default()
    }

    /// Decides `command` on aggregate `id` (read now if it was not) as an effect of
    /// `event`, keeps the state it leads to, and adds its events to `effects`. A refusal
    /// by the aggregate means the world moved on (the task was cancelled, the ticket is
    /// blocked, the verdict came already): it is logged and skipped.
    pub(crate) async fn decide(
        &mut self,
        effects: &mut Effects,
        tx: &mut PgConnection,
        event: &StoredEvent,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<(), ProjectionError> {
        self.read(tx, event, [id.to_string()]).await?;
        let (state, version) = self
            .known
            .get(id)
            .cloned()
            .unwrap_or_else(|| (A::default(), 0));
        let outcome = effects.decide(id, state, version, command, context).await;
        match outcome {
            Ok(committed) => {
                self.known
                    .insert(id.to_string(), (committed.state, committed.version));
                Ok(())
            }
            Err(CommandError::Domain(refusal)) => {
                tracing::debug!(actor = %context.actor, aggregate = A::TYPE, id, %refusal, "an effect was refused; skipped");
                Ok(())
            }
            Err(error) => Err(ProjectionError::payload(
                event,
                format!("{} {id}: {error}", A::TYPE),
            )),
        }
    }
}

/// Reads those of `a_ids` and `b_ids` that `a` and `b` have not read yet, with one query
/// (see [`Aggregates::read`]).
pub(crate) async fn read_both<A, B>(
    tx: &mut PgConnection,
    event: &StoredEvent,
    (a, a_ids): (&mut Aggregates<A>, impl IntoIterator<Item = String>),
    (b, b_ids): (&mut Aggregates<B>, impl IntoIterator<Item = String>),
) -> Result<(), ProjectionError>
where
    A: cqrs_es::Aggregate<Services = ()> + Scoped + Clone,
    B: cqrs_es::Aggregate<Services = ()> + Scoped + Clone,
{
    let (a_wanted, b_wanted) = (a.missing(a_ids), b.missing(b_ids));
    if a_wanted.is_empty() && b_wanted.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = std::iter::repeat_n(A::TYPE, a_wanted.len())
        .chain(std::iter::repeat_n(B::TYPE, b_wanted.len()))
        .collect();
    let ids: Vec<String> = a_wanted.iter().chain(&b_wanted).cloned().collect();
    let events = histories_of(&mut *tx, &types, &ids).await?;
    a.know_read(event, a_wanted, &events)?;
    b.know_read(event, b_wanted, &events)
}

/// The commands a batch decided, appended together with one statement at its end.
#[derive(Default)]
pub(crate) struct Effects {
    rows: Rows,
    /// The unit of each row (see [`Rows::insert_units`]): one per command.
    units: Vec<i32>,
    /// Whether each unit is a creation, left out when its aggregate exists already.
    creations: Vec<bool>,
}

impl Effects {
    async fn decide<A>(
        &mut self,
        id: &str,
        state: A,
        version: usize,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<omoi_store::Committed<A>, CommandError<A::Error>>
    where
        A: cqrs_es::Aggregate<Services = ()> + Scoped + Clone,
    {
        let committed = decide_into(&mut self.rows, id, state, version, command, context).await?;
        self.add_unit(false);
        Ok(committed)
    }

    /// Decides the creation of aggregate `id` by `command`, as an effect of `event`. Its
    /// id derives from the event, so an aggregate of that id was created by an earlier
    /// run of the same event (a replay after a crash): it is then left out whole. A
    /// refusal is the event's fault (its command should have been valid).
    pub(crate) async fn create<A>(
        &mut self,
        event: &StoredEvent,
        id: Uuid,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<(), ProjectionError>
    where
        A: cqrs_es::Aggregate<Services = ()> + Scoped + Clone,
    {
        let id = id.to_string();
        decide_into::<A>(&mut self.rows, &id, A::default(), 0, command, context)
            .await
            .map_err(|e| {
                ProjectionError::payload(event, format!("creating {} {id}: {e}", A::TYPE))
            })?;
        self.add_unit(true);
        Ok(())
    }

    /// Marks the rows added since the last unit as one more unit.
    fn add_unit(&mut self, creation: bool) {
        let unit = i32::try_from(self.creations.len()).unwrap_or(i32::MAX);
        self.units.resize(self.rows.len(), unit);
        self.creations.push(creation);
    }

    /// Appends every effect in the order decided, with one statement. An effect on an
    /// aggregate someone else appended to since it was read (its sequence is taken), or
    /// the database away, fails the batch transiently: the runner applies it again,
    /// reading everything anew. Anything else is blamed on `event`.
    pub(crate) async fn append(
        self,
        tx: &mut PgConnection,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        let taken = match self.rows.insert_units(&mut *tx, &self.units).await {
            Ok(taken) => taken,
            Err(error @ (AppendError::Conflict | AppendError::Unavailable(_))) => {
                return Err(ProjectionError::Transient(error.to_string()))
            }
            Err(AppendError::Database(error)) => return Err(ProjectionError::Database(error)),
            Err(AppendError::Encoding(error)) => {
                return Err(ProjectionError::payload(event, error))
            }
        };
        let overtaken = taken.iter().any(|unit| {
            usize::try_from(*unit)
                .ok()
                .and_then(|unit| self.creations.get(unit))
                .is_some_and(|creation| !creation)
        });
        match overtaken {
            true => Err(ProjectionError::Transient(
                "an aggregate was changed concurrently".to_string(),
            )),
            false => Ok(()),
        }
    }
}
