//! What a process manager's batch reads and writes, batched: the aggregates it decides on
//! are read with one query per type ([`Aggregates`]) and decided on in memory; the
//! commands it sends are appended together with one statement at the end ([`Effects`]).
//!
//! The batch's transaction takes its id at its first write and holds every reader of the
//! log (`pg_snapshot_xmin`) until it commits; appending every effect at the end keeps that
//! window to a few statements, whatever the batch holds.

use std::collections::{BTreeSet, HashMap};

use cqrs_es::Aggregate;
use omoi_domain::common::Scoped;
use omoi_domain::spec::Spec;
use omoi_domain::ticket::Ticket;
use omoi_projections::ProjectionError;
use omoi_store::append::{AppendError, Rows};
use omoi_store::bus::decide_into;
use omoi_store::log::{fold_until, histories, NamedBy};
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
        Self::knowing(HashMap::new())
    }

    /// Knowing `known` already (each aggregate's state after its number of events, kept
    /// from an earlier batch): a decision on a copy that fell behind the log is refused at
    /// append time ([`Effects::append`]) and the batch applied again, read anew.
    pub(crate) fn knowing(known: HashMap<String, (A, usize)>) -> Self {
        Self { known }
    }

    /// What is known of the aggregates that exist, the batch's decisions applied.
    pub(crate) fn into_existing(self) -> HashMap<String, (A, usize)> {
        let mut known = self.known;
        known.retain(|_, (_, version)| *version > 0);
        known
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

    /// Those of `ids` not read yet, each once (to read them with other types' at once,
    /// then [`Aggregates::know_read`]).
    pub(crate) fn missing(&self, ids: impl IntoIterator<Item = String>) -> Vec<String> {
        ids.into_iter()
            .filter(|id| !self.known.contains_key(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Takes the histories of `wanted` out of `events` (read for them, perhaps with
    /// other types'); a wanted aggregate without events is known as empty.
    pub(crate) fn know_read(
        &mut self,
        event: &StoredEvent,
        wanted: Vec<String>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let mine = of_type(events, A::TYPE);
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

/// Where a ticket's creation names its spec in the stored payload (the only event that
/// does): read in SQL by [`specs_of_tickets`], so a test holds it to the event's type.
pub(crate) const TICKET_SPEC: [&str; 2] = ["TicketCreated", "spec_id"];

/// The specs of `tickets`, as their creations name them, to read with the tickets'
/// histories ([`histories_of`](omoi_store::log::histories_of)) instead of after them.
pub(crate) fn specs_of_tickets(tickets: &[String]) -> NamedBy<'_> {
    NamedBy {
        named_type: Spec::TYPE,
        referrer_type: Ticket::TYPE,
        referrers: tickets,
        path: &TICKET_SPEC,
        only: None,
    }
}

/// The event that archives a spec, as stored. Archiving is final (an archived spec
/// refuses every command), so a spec was archived exactly when it has this event.
pub(crate) const SPEC_ARCHIVED: &str = "SpecArchived";

/// The event that completes a spec, as stored: by `spec_completion` once its plan's
/// tickets are done, or by a person (`POST /api/v1/specs/{id}/complete`); completing is
/// final but for archiving.
pub(crate) const SPEC_COMPLETED: &str = "SpecCompleted";

/// Whether `event` ends a spec's work: its archival or its completion. A completed spec
/// has no open work either — a person may complete one while its plan's tasks run, or move
/// its tickets to done by hand (then `spec_completion` completes it) — so what is open of
/// its plan is cancelled, as for an archived one.
pub(crate) fn stops_specs_work(event: &StoredEvent) -> bool {
    event.aggregate_type == "Spec"
        && (event.event_type == SPEC_ARCHIVED || event.event_type == SPEC_COMPLETED)
}

/// The archivals of the specs of `tickets` (none for a spec not archived), to read with
/// the tickets' histories: whether a spec was archived, without its history — whose
/// payloads (the plan above all) are most of what reading it would cost.
pub(crate) fn archivals_of_tickets_specs(tickets: &[String]) -> NamedBy<'_> {
    NamedBy {
        only: Some(SPEC_ARCHIVED),
        ..specs_of_tickets(tickets)
    }
}

/// The events of `aggregate_type` among `events` read for several types, ordered by type
/// first (as `store::log::histories_of` orders them): one stretch.
pub(crate) fn of_type<'e>(events: &'e [StoredEvent], aggregate_type: &str) -> &'e [StoredEvent] {
    let Some(start) = events
        .iter()
        .position(|e| e.aggregate_type == aggregate_type)
    else {
        return &[];
    };
    let len = events[start..]
        .iter()
        .take_while(|e| e.aggregate_type == aggregate_type)
        .count();
    &events[start..start + len]
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

#[cfg(test)]
mod tests {
    use cqrs_es::DomainEvent;
    use omoi_domain::common::{Phase, Priority};
    use omoi_domain::spec::SpecEvent;
    use omoi_domain::ticket::TicketEvent;
    use uuid::Uuid;

    use super::{SPEC_ARCHIVED, TICKET_SPEC};

    #[test]
    fn a_tickets_creation_names_its_spec_where_the_read_looks() {
        let spec = Uuid::now_v7();
        let created = TicketEvent::TicketCreated {
            ticket_id: Uuid::now_v7(),
            organization_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            spec_id: Some(spec),
            title: "t".into(),
            description: String::new(),
            priority: Priority::Medium,
            phase: Phase::Implementation,
        };
        let stored = serde_json::to_value(&created).expect("encoded");
        let pointer = format!("/{}", TICKET_SPEC.join("/"));
        assert_eq!(stored.pointer(&pointer), Some(&serde_json::json!(spec)));
    }

    #[test]
    fn a_specs_archival_is_stored_under_the_type_the_read_asks_for() {
        let archived = SpecEvent::SpecArchived {
            at: chrono::Utc::now(),
        };
        assert_eq!(archived.event_type(), SPEC_ARCHIVED);
    }
}
