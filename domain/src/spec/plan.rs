//! A spec's plan: the tickets and tasks that carry it out, each with a key unique in the
//! plan, tasks waiting for other tasks of the plan by key, and links to the spec's
//! requirements. Set in the `tasks` phase; approving it starts the execution, which
//! creates exactly these tickets and tasks.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::common::{optional_text, required_text, Priority, TextProblem};
use crate::common::{MAX_TEXT_CHARS, MAX_TITLE_CHARS};
use crate::task::{
    MAX_CAPABILITY_CHARS, MAX_DEPENDENCIES, MAX_REQUIRED_CAPABILITIES, MAX_TASK_TYPE_CHARS,
};

/// Most tickets one plan may hold.
pub const MAX_PLAN_TICKETS: usize = 50;
/// Most tasks one plan may hold, all tickets together.
pub const MAX_PLAN_TASKS: usize = 200;
/// Longest key of a ticket or task.
pub const MAX_PLAN_KEY_CHARS: usize = 32;
/// A key: upper-case letters and digits, in groups joined by `-`, starting with a letter
/// (`TKT-001`, `TSK-LOGIN-2`).
pub const PLAN_KEY_PATTERN: &str = "^[A-Z][A-Z0-9]*(-[A-Z0-9]+)*$";

/// The tickets (and their tasks) that carry a spec out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
// Named apart from billing's plans (tiers) in the OpenAPI document.
#[schema(as = SpecPlan)]
pub struct Plan {
    pub tickets: Vec<PlannedTicket>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedTicket {
    /// Unique in the plan, e.g. `TKT-001`.
    pub key: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub priority: Priority,
    /// Requirements of the spec this ticket serves.
    #[serde(default)]
    pub requirement_ids: Vec<String>,
    #[serde(default)]
    pub tasks: Vec<PlannedTask>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedTask {
    /// Unique in the plan, e.g. `TSK-001`.
    pub key: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// A free label such as `implement` or `write_tests`.
    pub task_type: String,
    /// Keys of tasks of this plan (any ticket) this one waits for.
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    /// Requirements of the spec this task serves.
    #[serde(default)]
    pub requirement_ids: Vec<String>,
}

/// How big a task is thought to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Estimate {
    S,
    M,
    L,
    XL,
}

/// Why a plan was refused; [`PlanError::field`] names the place (`tickets[1].tasks[0].key`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PlanError {
    pub field: String,
    pub problem: PlanProblem,
}

/// One variant per rule a plan must keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanProblem {
    #[error("a plan needs at least one ticket")]
    Empty,
    #[error("a ticket of a plan needs at least one task (nothing would ever move it to done)")]
    TicketWithoutTasks,
    #[error("a plan has at most {MAX_PLAN_TICKETS} tickets and {MAX_PLAN_TASKS} tasks")]
    TooLarge,
    #[error("a key is upper-case letters and digits in groups joined by '-' (TKT-001), at most {MAX_PLAN_KEY_CHARS} characters")]
    InvalidKey,
    #[error("the key {0} is used twice in the plan")]
    DuplicateKey(String),
    #[error("no task of the plan has the key {0}")]
    UnknownKey(String),
    #[error("the spec has no requirement {0}")]
    UnknownRequirement(String),
    #[error("tasks would wait for each other in a circle: {0}")]
    Cycle(String),
    #[error("a task may wait for at most {MAX_DEPENDENCIES} tasks")]
    TooManyDependencies,
    #[error("a task may require at most {MAX_REQUIRED_CAPABILITIES} capabilities (as many as an agent can have)")]
    TooManyCapabilities,
    #[error("must not be empty")]
    EmptyText,
    #[error("is longer than {0} characters")]
    TextTooLong(usize),
}

impl PlanProblem {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty_plan",
            Self::TicketWithoutTasks => "ticket_without_tasks",
            Self::TooLarge => "plan_too_large",
            Self::InvalidKey => "invalid_plan_key",
            Self::DuplicateKey(_) => "duplicate_plan_key",
            Self::UnknownKey(_) => "unknown_plan_key",
            Self::UnknownRequirement(_) => "unknown_requirement",
            Self::Cycle(_) => "plan_cycle",
            Self::TooManyDependencies => "too_many_dependencies",
            Self::TooManyCapabilities => "too_many_capabilities",
            Self::EmptyText => "empty_text",
            Self::TextTooLong(_) => "text_too_long",
        }
    }
}

fn refuse(field: impl Into<String>, problem: PlanProblem) -> PlanError {
    PlanError {
        field: field.into(),
        problem,
    }
}

/// Whether `key` matches [`PLAN_KEY_PATTERN`] and its length bound.
pub fn is_plan_key(key: &str) -> bool {
    let mut groups = key.split('-');
    let first_ok = groups.next().is_some_and(|first| {
        first.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && first
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    key.len() <= MAX_PLAN_KEY_CHARS
        && first_ok
        && groups.all(|g| {
            !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
}

fn text(field: String, value: &str, max: usize, required: bool) -> Result<String, PlanError> {
    let checked = if required {
        required_text(value, max)
    } else {
        optional_text(value, max)
    };
    checked.map_err(|problem| match problem {
        TextProblem::Empty => refuse(field, PlanProblem::EmptyText),
        TextProblem::TooLong { max } => refuse(field, PlanProblem::TextTooLong(max)),
    })
}

impl Plan {
    /// The plan with its texts trimmed, once every rule holds; `requirements` are the
    /// ids of the spec's requirements.
    pub fn validated(self, requirements: &BTreeSet<&str>) -> Result<Plan, PlanError> {
        if self.tickets.is_empty() {
            return Err(refuse("tickets", PlanProblem::Empty));
        }
        let task_count: usize = self.tickets.iter().map(|t| t.tasks.len()).sum();
        if self.tickets.len() > MAX_PLAN_TICKETS || task_count > MAX_PLAN_TASKS {
            return Err(refuse("tickets", PlanProblem::TooLarge));
        }
        let mut keys = BTreeSet::new();
        let mut claim = |field: String, key: &str| {
            if !is_plan_key(key) {
                return Err(refuse(field, PlanProblem::InvalidKey));
            }
            if !keys.insert(key.to_string()) {
                return Err(refuse(field, PlanProblem::DuplicateKey(key.to_string())));
            }
            Ok(())
        };
        for (t, ticket) in self.tickets.iter().enumerate() {
            claim(format!("tickets[{t}].key"), &ticket.key)?;
            if ticket.tasks.is_empty() {
                return Err(refuse(
                    format!("tickets[{t}].tasks"),
                    PlanProblem::TicketWithoutTasks,
                ));
            }
            for (k, task) in ticket.tasks.iter().enumerate() {
                claim(format!("tickets[{t}].tasks[{k}].key"), &task.key)?;
            }
        }
        let task_keys: BTreeSet<String> = self
            .tickets
            .iter()
            .flat_map(|t| t.tasks.iter().map(|k| k.key.clone()))
            .collect();
        let known = |field: String, ids: &[String]| {
            ids.iter().enumerate().try_for_each(|(i, id)| {
                match requirements.contains(id.as_str()) {
                    true => Ok(()),
                    false => Err(refuse(
                        format!("{field}[{i}]"),
                        PlanProblem::UnknownRequirement(id.clone()),
                    )),
                }
            })
        };
        let mut tickets = Vec::with_capacity(self.tickets.len());
        for (t, ticket) in self.tickets.into_iter().enumerate() {
            let at = format!("tickets[{t}]");
            known(format!("{at}.requirement_ids"), &ticket.requirement_ids)?;
            let mut tasks = Vec::with_capacity(ticket.tasks.len());
            for (k, task) in ticket.tasks.into_iter().enumerate() {
                let at = format!("{at}.tasks[{k}]");
                known(format!("{at}.requirement_ids"), &task.requirement_ids)?;
                let depends_on: BTreeSet<String> = task.depends_on.iter().cloned().collect();
                if depends_on.len() > MAX_DEPENDENCIES {
                    return Err(refuse(
                        format!("{at}.depends_on"),
                        PlanProblem::TooManyDependencies,
                    ));
                }
                for (d, key) in task.depends_on.iter().enumerate() {
                    if !task_keys.contains(key) {
                        return Err(refuse(
                            format!("{at}.depends_on[{d}]"),
                            PlanProblem::UnknownKey(key.clone()),
                        ));
                    }
                }
                let capabilities = task
                    .required_capabilities
                    .iter()
                    .enumerate()
                    .map(|(c, capability)| {
                        let field = format!("{at}.required_capabilities[{c}]");
                        text(field, capability, MAX_CAPABILITY_CHARS, true)
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?;
                if capabilities.len() > MAX_REQUIRED_CAPABILITIES {
                    return Err(refuse(
                        format!("{at}.required_capabilities"),
                        PlanProblem::TooManyCapabilities,
                    ));
                }
                tasks.push(PlannedTask {
                    title: text(format!("{at}.title"), &task.title, MAX_TITLE_CHARS, true)?,
                    description: text(
                        format!("{at}.description"),
                        &task.description,
                        MAX_TEXT_CHARS,
                        false,
                    )?,
                    task_type: text(
                        format!("{at}.task_type"),
                        &task.task_type,
                        MAX_TASK_TYPE_CHARS,
                        true,
                    )?,
                    depends_on: depends_on.into_iter().collect(),
                    required_capabilities: capabilities.into_iter().collect(),
                    ..task
                });
            }
            tickets.push(PlannedTicket {
                title: text(format!("{at}.title"), &ticket.title, MAX_TITLE_CHARS, true)?,
                description: text(
                    format!("{at}.description"),
                    &ticket.description,
                    MAX_TEXT_CHARS,
                    false,
                )?,
                tasks,
                ..ticket
            });
        }
        let plan = Plan { tickets };
        if let Some((field, cycle)) = plan.cycle() {
            return Err(refuse(field, PlanProblem::Cycle(cycle.join(" -> "))));
        }
        Ok(plan)
    }

    /// Every task with its place (`tickets[t].tasks[k]`), in plan order.
    pub fn tasks(&self) -> impl Iterator<Item = (&PlannedTicket, &PlannedTask)> {
        self.tickets
            .iter()
            .flat_map(|ticket| ticket.tasks.iter().map(move |task| (ticket, task)))
    }

    /// A circle of waiting tasks, if there is one: the `depends_on` field that closes it
    /// and the keys around it (first key repeated at the end).
    fn cycle(&self) -> Option<(String, Vec<String>)> {
        let mut place = BTreeMap::new();
        for (t, ticket) in self.tickets.iter().enumerate() {
            for (k, task) in ticket.tasks.iter().enumerate() {
                place.insert(
                    task.key.as_str(),
                    (format!("tickets[{t}].tasks[{k}]"), task),
                );
            }
        }
        // Depth-first, colouring keys: on the path (grey) or finished (black).
        #[derive(Clone, Copy, PartialEq)]
        enum Colour {
            Grey,
            Black,
        }
        let mut colour: BTreeMap<&str, Colour> = BTreeMap::new();
        for start in place.keys().copied() {
            if colour.contains_key(start) {
                continue;
            }
            // (key, index of the next dependency to look at)
            let mut path: Vec<(&str, usize)> = vec![(start, 0)];
            colour.insert(start, Colour::Grey);
            while let Some((key, next)) = path.last().copied() {
                let (at, task) = &place[key];
                match task.depends_on.get(next) {
                    None => {
                        colour.insert(key, Colour::Black);
                        path.pop();
                    }
                    Some(dependency) => {
                        if let Some(last) = path.last_mut() {
                            last.1 += 1;
                        }
                        let dependency = dependency.as_str();
                        match colour.get(dependency) {
                            Some(Colour::Black) => {}
                            Some(Colour::Grey) => {
                                let from = path.iter().position(|(k, _)| *k == dependency)?;
                                let mut keys: Vec<String> =
                                    path[from..].iter().map(|(k, _)| k.to_string()).collect();
                                keys.push(dependency.to_string());
                                return Some((format!("{at}.depends_on[{next}]"), keys));
                            }
                            None => {
                                colour.insert(dependency, Colour::Grey);
                                path.push((dependency, 0));
                            }
                        }
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(key: &str, depends_on: &[&str]) -> PlannedTask {
        PlannedTask {
            key: key.into(),
            title: format!("do {key}"),
            description: String::new(),
            task_type: "implement".into(),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            required_capabilities: vec![],
            estimate: Some(Estimate::M),
            requirement_ids: vec![],
        }
    }

    fn plan(tickets: Vec<Vec<PlannedTask>>) -> Plan {
        Plan {
            tickets: tickets
                .into_iter()
                .enumerate()
                .map(|(i, tasks)| PlannedTicket {
                    key: format!("TKT-{i}"),
                    title: format!("ticket {i}"),
                    description: String::new(),
                    priority: Priority::Medium,
                    requirement_ids: vec!["REQ-A-1".into()],
                    tasks,
                })
                .collect(),
        }
    }

    fn requirements() -> BTreeSet<&'static str> {
        BTreeSet::from(["REQ-A-1"])
    }

    fn problem(plan: Plan) -> (String, &'static str) {
        let error = plan.validated(&requirements()).expect_err("refused");
        (error.field, error.problem.code())
    }

    #[test]
    fn a_plan_with_cross_ticket_dependencies_is_accepted() {
        let accepted = plan(vec![
            vec![task("TSK-1", &[]), task("TSK-2", &["TSK-1"])],
            vec![task("TSK-3", &["TSK-2", "TSK-1", "TSK-1"])],
        ])
        .validated(&requirements())
        .expect("a valid plan");
        // Duplicate dependencies are merged.
        assert_eq!(accepted.tickets[1].tasks[0].depends_on, ["TSK-1", "TSK-2"]);
        assert_eq!(accepted.tasks().count(), 3);
    }

    #[test]
    fn each_rule_names_the_field_that_breaks_it() {
        assert_eq!(problem(plan(vec![])), ("tickets".into(), "empty_plan"));
        assert_eq!(
            problem(plan(vec![vec![task("TSK-1", &[])], vec![]])),
            ("tickets[1].tasks".into(), "ticket_without_tasks")
        );
        assert_eq!(
            problem(plan(vec![vec![task("TSK-1", &[]), task("TSK-1", &[])]])),
            ("tickets[0].tasks[1].key".into(), "duplicate_plan_key")
        );
        assert_eq!(
            problem(plan(vec![vec![task("tsk-1", &[])]])),
            ("tickets[0].tasks[0].key".into(), "invalid_plan_key")
        );
        assert_eq!(
            problem(plan(vec![vec![task("TSK-1", &["TSK-9"])]])),
            (
                "tickets[0].tasks[0].depends_on[0]".into(),
                "unknown_plan_key"
            )
        );
        let mut unknown_requirement = plan(vec![vec![task("TSK-1", &[])]]);
        unknown_requirement.tickets[0].tasks[0].requirement_ids = vec!["REQ-B-2".into()];
        assert_eq!(
            problem(unknown_requirement),
            (
                "tickets[0].tasks[0].requirement_ids[0]".into(),
                "unknown_requirement"
            )
        );
        let mut too_able = plan(vec![vec![task("TSK-1", &[])]]);
        too_able.tickets[0].tasks[0].required_capabilities = (0..=MAX_REQUIRED_CAPABILITIES)
            .map(|i| format!("skill-{i}"))
            .collect();
        assert_eq!(
            problem(too_able.clone()),
            (
                "tickets[0].tasks[0].required_capabilities".into(),
                "too_many_capabilities"
            )
        );
        // Duplicates are merged before they are counted.
        too_able.tickets[0].tasks[0].required_capabilities[0] = "skill-1".into();
        assert!(too_able.validated(&requirements()).is_ok());
        let mut blank = plan(vec![vec![task("TSK-1", &[])]]);
        blank.tickets[0].tasks[0].title = "  ".into();
        assert_eq!(
            problem(blank),
            ("tickets[0].tasks[0].title".into(), "empty_text")
        );
    }

    #[test]
    fn a_circle_of_waiting_tasks_is_refused_with_its_path() {
        let error = plan(vec![
            vec![task("TSK-1", &["TSK-3"])],
            vec![task("TSK-2", &["TSK-1"]), task("TSK-3", &["TSK-2"])],
        ])
        .validated(&requirements())
        .expect_err("a cycle");
        assert_eq!(error.problem.code(), "plan_cycle");
        assert_eq!(
            error.problem,
            PlanProblem::Cycle("TSK-1 -> TSK-3 -> TSK-2 -> TSK-1".into())
        );
        let myself = plan(vec![vec![task("TSK-1", &["TSK-1"])]]);
        assert_eq!(problem(myself).1, "plan_cycle");
    }

    proptest::proptest! {
        /// The hand-written key check and the documented pattern agree.
        #[test]
        fn keys_are_exactly_the_documented_pattern(key in "[A-Za-z0-9-]{0,6}") {
            let pattern = regex_lite::Regex::new(PLAN_KEY_PATTERN).expect("a pattern");
            proptest::prop_assert_eq!(is_plan_key(&key), pattern.is_match(&key), "{}", key);
        }
    }
}
