//! The kinds of aggregates, by the names each part of omoi uses for them: the type stored
//! in the log (`Ticket`), the noun people and URLs use (`ticket`). One table, so that the
//! CLI, the API's errors, the timeline and the benchmarks cannot disagree.

use cqrs_es::Aggregate;

use crate::{agent, billing, organization, project, spec, task, ticket};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    Organization,
    Project,
    Ticket,
    Task,
    Spec,
    Agent,
    BillingAccount,
}

impl AggregateKind {
    pub const ALL: [Self; 7] = [
        Self::Organization,
        Self::Project,
        Self::Ticket,
        Self::Task,
        Self::Spec,
        Self::Agent,
        Self::BillingAccount,
    ];

    /// The aggregate type written in the log (`events.aggregate_type`).
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Organization => organization::Organization::TYPE,
            Self::Project => project::Project::TYPE,
            Self::Ticket => ticket::Ticket::TYPE,
            Self::Task => task::Task::TYPE,
            Self::Spec => spec::Spec::TYPE,
            Self::Agent => agent::Agent::TYPE,
            Self::BillingAccount => billing::BillingAccount::TYPE,
        }
    }

    /// The noun of its API, CLI and filters (`billing_account`).
    pub fn noun(self) -> &'static str {
        match self {
            Self::Organization => "organization",
            Self::Project => "project",
            Self::Ticket => "ticket",
            Self::Task => "task",
            Self::Spec => "spec",
            Self::Agent => "agent",
            Self::BillingAccount => "billing_account",
        }
    }

    /// The kind of a type written in the log.
    pub fn of_type(type_name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_name() == type_name)
    }

    /// The kind of a noun, in any case.
    pub fn of_noun(noun: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.noun().eq_ignore_ascii_case(noun))
    }

    /// Every noun, for messages listing what is accepted.
    pub fn nouns() -> String {
        Self::ALL.map(Self::noun).join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_type_and_its_noun() {
        for kind in AggregateKind::ALL {
            assert_eq!(AggregateKind::of_type(kind.type_name()), Some(kind));
            assert_eq!(AggregateKind::of_noun(kind.noun()), Some(kind));
            assert_eq!(
                AggregateKind::of_noun(&kind.noun().to_uppercase()),
                Some(kind)
            );
        }
        assert_eq!(AggregateKind::of_type("ticket"), None, "types are exact");
        assert_eq!(AggregateKind::of_noun("tickets"), None);
    }
}
