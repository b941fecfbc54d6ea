//! Choosing a dispatch pass's assignments: which free agent takes which ready task. Pure —
//! no clock, no database — so the rules can be tested on their own, and the worker's pass
//! is this choice followed by committing it.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use crate::queue::{Candidate, Queue};

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
/// organizations `serves` refuses are skipped.
pub fn choose(
    queue: &Queue,
    candidates: &[Candidate],
    free: &[FreeAgent],
    limits: &Limits,
    serves: impl Fn(Uuid) -> bool,
) -> Vec<Pick> {
    let (mut per_project, mut per_organization) = queue.active_counts();
    let mut taken = vec![false; free.len()];
    let mut picks = Vec::new();
    for candidate in candidates {
        if picks.len() == free.len() {
            break;
        }
        let Some(task) = queue.task(candidate.task_id) else {
            continue;
        };
        let project_full =
            per_project.get(&task.project_id).copied().unwrap_or(0) >= limits.project_concurrency;
        let cap = limits
            .organization_caps
            .get(&task.organization_id)
            .copied()
            .unwrap_or(0);
        let organization_full = per_organization
            .get(&task.organization_id)
            .copied()
            .unwrap_or(0)
            >= cap;
        if !serves(task.organization_id) || project_full || organization_full {
            continue;
        }
        let able = free.iter().enumerate().position(|(i, agent)| {
            !taken[i] && task.suits(agent.organization_id, Some(agent.id), &agent.capabilities)
        });
        let Some(index) = able else {
            continue;
        };
        taken[index] = true;
        *per_project.entry(task.project_id).or_insert(0) += 1;
        *per_organization.entry(task.organization_id).or_insert(0) += 1;
        picks.push(Pick {
            agent_id: free[index].id,
            task_id: task.id,
        });
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

    fn task(queue: &mut Queue, n: u128, priority: Priority, capabilities: &[&str]) -> Uuid {
        let id = Uuid::from_u128(100 + n);
        let event = TaskEvent::TaskCreated {
            task_id: id,
            organization_id: ORGANIZATION,
            project_id: PROJECT,
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
            metadata: json!({"organization_id": ORGANIZATION}).into(),
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
        let picks = choose(&queue, &candidates, &free, &limits(5, 10), |_| true);
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
        let picks = choose(&queue, &candidates, &free, &limits(5, 1), |_| true);
        assert_eq!(picks.len(), 1);
        // A project cap of zero, or an organization served elsewhere: nothing.
        assert!(choose(&queue, &candidates, &free, &limits(0, 10), |_| true).is_empty());
        assert!(choose(&queue, &candidates, &free, &limits(5, 10), |_| false).is_empty());
        // An organization without a known cap holds nothing.
        let no_caps = Limits {
            project_concurrency: 5,
            organization_caps: HashMap::new(),
        };
        assert!(choose(&queue, &candidates, &free, &no_caps, |_| true).is_empty());
    }
}
