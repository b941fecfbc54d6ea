//! Choosing a dispatch pass's assignments: which free agent takes which ready task. Pure —
//! no clock, no database — so the rules can be tested on their own, and the worker's pass
//! is this choice followed by committing it.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use crate::queue::{ActiveCounts, Candidate, Queue};

/// An agent able to take a task now.
#[derive(Debug, Clone)]
pub struct FreeAgent {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub capabilities: BTreeSet<String>,
}

/// The bounds a pass keeps to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tasks held at once per project.
    pub project_concurrency: usize,
    /// Tasks held at once per organization (its plan's cap); an organization missing here
    /// may hold none.
    pub organization_caps: HashMap<Uuid, usize>,
    /// Tasks held that the queue does not show yet (assignments committing, or committed
    /// but not read back), per organization: they count against both caps.
    pub unseen_held: HashMap<Uuid, ActiveCounts>,
}

/// One assignment of the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub agent_id: Uuid,
    pub task_id: Uuid,
}

/// The pass's assignments: the candidates in order (best first), each to the first free
/// agent that suits it ([`crate::queue::QueuedTask::suits`]: of its organization, with
/// its capabilities, not the author of the work it validates), as long as neither the
/// task's project nor its organization holds as many tasks as it may. Tasks of
/// organizations `serves` refuses are skipped. A candidate costs a look at its own
/// organization's free agents and held tasks only, and candidates are taken (best first)
/// only until no organization can take more.
pub fn choose(
    queue: &Queue,
    candidates: impl IntoIterator<Item = Candidate>,
    free: &[FreeAgent],
    limits: &Limits,
    serves: impl Fn(Uuid) -> bool,
) -> Vec<Pick> {
    let mut free_in: HashMap<Uuid, Vec<&FreeAgent>> = HashMap::new();
    for agent in free {
        free_in
            .entry(agent.organization_id)
            .or_default()
            .push(agent);
    }
    let mut held: HashMap<Uuid, ActiveCounts> = HashMap::new();
    let mut picks = Vec::new();
    let mut candidates = candidates.into_iter();
    // Until every organization is full or has no agent left: the rest of the candidates
    // could not be taken either.
    while !free_in.is_empty() {
        let Some(candidate) = candidates.next() else {
            break;
        };
        let Some(task) = queue.task(candidate.task_id) else {
            continue;
        };
        let organization = task.organization_id;
        if !free_in.contains_key(&organization) {
            continue;
        }
        let counts = held.entry(organization).or_insert_with(|| {
            let mut counts = queue.active_in(organization);
            if let Some(unseen) = limits.unseen_held.get(&organization) {
                counts.add(unseen);
            }
            counts
        });
        let cap = limits
            .organization_caps
            .get(&organization)
            .copied()
            .unwrap_or(0);
        if !serves(organization) || counts.organization >= cap {
            free_in.remove(&organization);
            continue;
        }
        if counts.in_project(task.project_id) >= limits.project_concurrency {
            continue;
        }
        let Some(agents) = free_in.get_mut(&organization) else {
            continue;
        };
        let able = agents.iter().position(|agent| {
            task.suits(agent.organization_id, Some(agent.id), &agent.capabilities)
        });
        let Some(index) = able else {
            continue;
        };
        let agent = agents.remove(index);
        counts.hold(task.project_id);
        picks.push(Pick {
            agent_id: agent.id,
            task_id: task.id,
        });
        if agents.is_empty() || counts.organization >= cap {
            free_in.remove(&organization);
        }
    }
    picks
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use omoi_domain::common::Priority;
    use omoi_domain::task::TaskEvent;
    use omoi_store::StoredEvent;
    use serde_json::json;

    use super::*;
    use crate::score::ScoreConfig;

    const ORGANIZATION: Uuid = Uuid::from_u128(1);
    const PROJECT: Uuid = Uuid::from_u128(2);

    const OTHER_ORGANIZATION: Uuid = Uuid::from_u128(7);
    const OTHER_PROJECT: Uuid = Uuid::from_u128(8);

    fn task(queue: &mut Queue, n: u128, priority: Priority, capabilities: &[&str]) -> Uuid {
        task_of(queue, ORGANIZATION, PROJECT, n, priority, capabilities)
    }

    fn task_of(
        queue: &mut Queue,
        organization_id: Uuid,
        project_id: Uuid,
        n: u128,
        priority: Priority,
        capabilities: &[&str],
    ) -> Uuid {
        let id = Uuid::from_u128(100 + n);
        let event = TaskEvent::TaskCreated {
            task_id: id,
            organization_id,
            project_id,
            ticket_id: Uuid::from_u128(3),
            title: format!("t{n}"),
            description: String::new(),
            task_type: "implement".into(),
            phase: Default::default(),
            priority,
            depends_on: Vec::new(),
            required_capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            max_retries: 3,
            timeout_seconds: None,
            created_at: Utc::now(),
        };
        queue.apply(&StoredEvent {
            aggregate_type: "Task".into(),
            aggregate_id: id.to_string(),
            sequence: 1,
            global_position: 1,
            transaction_id: 1,
            event_type: "TaskCreated".into(),
            event_version: "1".into(),
            payload: serde_json::to_value(event).expect("an event").into(),
            metadata: json!({"organization_id": organization_id}).into(),
        });
        id
    }

    fn agent(n: u128, capabilities: &[&str]) -> FreeAgent {
        FreeAgent {
            id: Uuid::from_u128(900 + n),
            organization_id: ORGANIZATION,
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn limits(project: usize, organization: usize) -> Limits {
        Limits {
            project_concurrency: project,
            organization_caps: HashMap::from([(ORGANIZATION, organization)]),
            unseen_held: HashMap::new(),
        }
    }

    #[test]
    fn the_best_tasks_go_to_agents_able_to_run_them_within_the_caps() {
        let mut queue = Queue::default();
        let gpu = task(&mut queue, 1, Priority::Critical, &["gpu"]);
        let urgent = task(&mut queue, 2, Priority::High, &[]);
        let later = task(&mut queue, 3, Priority::Low, &[]);
        let candidates = queue.ready(Utc::now(), &ScoreConfig::default());
        let (plain, gifted) = (agent(1, &[]), agent(2, &["gpu"]));
        let free = [plain.clone(), gifted.clone()];
        let picks = choose(&queue, candidates.clone(), &free, &limits(5, 10), |_| true);
        assert_eq!(
            picks,
            vec![
                Pick {
                    agent_id: gifted.id,
                    task_id: gpu
                },
                Pick {
                    agent_id: plain.id,
                    task_id: urgent
                },
            ],
            "the only agent with the capability takes the gpu task; {later} waits"
        );
        // The organization's cap of one: only the best task goes.
        let picks = choose(&queue, candidates.clone(), &free, &limits(5, 1), |_| true);
        assert_eq!(picks.len(), 1);
        // A project cap of zero, or an organization served elsewhere: nothing.
        assert!(choose(&queue, candidates.clone(), &free, &limits(0, 10), |_| true).is_empty());
        assert!(choose(&queue, candidates.clone(), &free, &limits(5, 10), |_| false).is_empty());
        // An organization without a known cap holds nothing.
        let no_caps = Limits {
            project_concurrency: 5,
            organization_caps: HashMap::new(),
            unseen_held: HashMap::new(),
        };
        assert!(choose(&queue, candidates.clone(), &free, &no_caps, |_| true).is_empty());
        // Tasks held that the queue does not show yet count against both caps.
        let mut unseen = ActiveCounts::default();
        unseen.hold(PROJECT);
        let mut held_unseen = limits(2, 10);
        held_unseen.unseen_held = HashMap::from([(ORGANIZATION, unseen.clone())]);
        assert_eq!(
            choose(&queue, candidates.clone(), &free, &held_unseen, |_| true).len(),
            1,
            "a project holding one unseen of two"
        );
        let mut held_unseen = limits(5, 2);
        held_unseen.unseen_held = HashMap::from([(ORGANIZATION, unseen)]);
        assert_eq!(
            choose(&queue, candidates.clone(), &free, &held_unseen, |_| true).len(),
            1,
            "an organization holding one unseen of two"
        );
    }

    #[test]
    fn each_organizations_tasks_go_to_its_own_agents_within_its_own_caps() {
        let mut queue = Queue::default();
        let ours_best = task(&mut queue, 1, Priority::Critical, &[]);
        let ours_next = task(&mut queue, 2, Priority::High, &[]);
        let theirs = task_of(
            &mut queue,
            OTHER_ORGANIZATION,
            OTHER_PROJECT,
            3,
            Priority::Low,
            &[],
        );
        let theirs_held = task_of(
            &mut queue,
            OTHER_ORGANIZATION,
            OTHER_PROJECT,
            4,
            Priority::Low,
            &[],
        );
        let assigned = StoredEvent {
            aggregate_type: "Task".into(),
            aggregate_id: theirs_held.to_string(),
            sequence: 2,
            global_position: 2,
            transaction_id: 2,
            event_type: "TaskAssigned".into(),
            event_version: "1".into(),
            payload: serde_json::to_value(TaskEvent::TaskAssigned {
                agent_id: Uuid::from_u128(999),
                at: Utc::now(),
            })
            .expect("an event")
            .into(),
            metadata: json!({}).into(),
        };
        queue.apply(&assigned);
        let candidates = queue.ready(Utc::now(), &ScoreConfig::default());
        let mut their_agent = agent(3, &[]);
        their_agent.organization_id = OTHER_ORGANIZATION;
        let free = [their_agent.clone(), agent(1, &[])];
        let caps = |ours: usize, theirs: usize| Limits {
            project_concurrency: 5,
            organization_caps: HashMap::from([(ORGANIZATION, ours), (OTHER_ORGANIZATION, theirs)]),
            unseen_held: HashMap::new(),
        };
        let picks = choose(&queue, candidates.clone(), &free, &caps(10, 10), |_| true);
        assert_eq!(
            picks,
            vec![
                Pick {
                    agent_id: agent(1, &[]).id,
                    task_id: ours_best
                },
                Pick {
                    agent_id: their_agent.id,
                    task_id: theirs
                },
            ],
            "{ours_next} waits for an agent of its own organization, not the other's"
        );
        // The other organization already holds one: at a cap of one it takes nothing,
        // and its held task does not count against ours.
        let picks = choose(&queue, candidates.clone(), &free, &caps(1, 1), |_| true);
        assert_eq!(
            picks,
            vec![Pick {
                agent_id: agent(1, &[]).id,
                task_id: ours_best
            }]
        );
        // Served elsewhere: only that organization's tasks are skipped.
        let picks = choose(
            &queue,
            candidates.clone(),
            &free,
            &caps(10, 10),
            |organization| organization == OTHER_ORGANIZATION,
        );
        assert_eq!(
            picks,
            vec![Pick {
                agent_id: their_agent.id,
                task_id: theirs
            }]
        );
        assert_eq!(queue.task(theirs_held).map(|t| t.is_active()), Some(true));
    }

    #[test]
    fn a_pass_stops_taking_candidates_once_no_organization_can_take_more() {
        let mut queue = Queue::default();
        for n in 0..200 {
            task(&mut queue, n, Priority::Medium, &[]);
        }
        let candidates = queue.ready(Utc::now(), &ScoreConfig::default());
        let free = [agent(1, &[]), agent(2, &[])];
        let taken = std::cell::Cell::new(0);
        let counted = || {
            candidates
                .iter()
                .copied()
                .inspect(|_| taken.set(taken.get() + 1))
        };
        // Two agents, room for both: the two best, then nothing more is looked at.
        let picks = choose(&queue, counted(), &free, &limits(5, 10), |_| true);
        assert_eq!(picks.len(), 2);
        assert_eq!(taken.get(), 2);
        // At the organization's cap from the start: one look, no pick.
        taken.set(0);
        assert!(choose(&queue, counted(), &free, &limits(5, 0), |_| true).is_empty());
        assert_eq!(taken.get(), 1);
        // Room for one: after it, the organization is full.
        taken.set(0);
        assert_eq!(
            choose(&queue, counted(), &free, &limits(5, 1), |_| true).len(),
            1
        );
        assert_eq!(taken.get(), 1);
    }
}
