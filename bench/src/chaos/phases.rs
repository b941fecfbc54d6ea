//! The driver's tasks while the faults run, and what happens once they stop: the
//! commands end, every task finishes, the agents retire, the projectors catch up, and
//! every subscriber resumes a last time and must fold to what the log says.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Row;

use super::checks::{self, Verdict};
use super::client::Client;
use super::subscribers::{self, Expected, Stream, Subscriber};
use super::workload::{self, Driven, Setup};
use super::{agents, Args, LANES};
use omoi_testing::TestDatabase;

/// The driver's tasks while the faults run.
pub(super) struct Running {
    stop_commands: Arc<AtomicBool>,
    stop_agents: Arc<AtomicBool>,
    stop_subscribers: Arc<AtomicBool>,
    lanes: Vec<tokio::task::JoinHandle<Driven>>,
    agents: Vec<tokio::task::JoinHandle<agents::AgentStats>>,
    agent_ids: agents::AgentIds,
    subscribers: Vec<tokio::task::JoinHandle<Subscriber>>,
}

/// What the run left to check.
pub(super) struct Settled {
    pub driven: Driven,
    pub agents: agents::AgentStats,
    pub http_agents: HashSet<String>,
    pub subscribers: Verdict,
}

impl Running {
    pub(super) fn start(args: &Args, client: &Client, setup: &Arc<Setup>) -> Self {
        let stop_commands = Arc::new(AtomicBool::new(false));
        let stop_agents = Arc::new(AtomicBool::new(false));
        let stop_subscribers = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(LANES as f64 / args.rate as f64);
        let mut lanes: Vec<_> = (0..LANES as usize)
            .map(|n| {
                let (client, setup, stop) = (client.clone(), setup.clone(), stop_commands.clone());
                tokio::spawn(workload::lane(client, setup, n, interval, stop))
            })
            .collect();
        let (c, s, stop) = (client.clone(), setup.clone(), stop_commands.clone());
        lanes.push(tokio::spawn(workload::stripe(c, s, stop)));
        let agent_ids = agents::AgentIds::default();
        let agents = (0..args.agents)
            .map(|_| {
                let (c, s, ids) = (client.clone(), setup.clone(), agent_ids.clone());
                tokio::spawn(agents::run(c, s, ids, stop_agents.clone()))
            })
            .collect();
        let events = args.subscribers.min(setup.projects.len());
        let streams = std::iter::repeat_n(Stream::Board, args.subscribers)
            .chain(std::iter::repeat_n(Stream::Events, events));
        let subscribers = streams
            .enumerate()
            .map(|(n, stream)| {
                let project = setup.projects[n % setup.projects.len()].clone();
                let subscriber = Subscriber::new(project, stream);
                let (c, token) = (client.clone(), setup.token.clone());
                tokio::spawn(subscriber.follow(c, token, stop_subscribers.clone()))
            })
            .collect();
        Self {
            stop_commands,
            stop_agents,
            stop_subscribers,
            lanes,
            agents,
            agent_ids,
            subscribers,
        }
    }

    /// Stops the commands, waits for every task to finish, stops the agents, waits for
    /// the read models, then has every subscriber resume and fold to the HTTP board.
    pub(super) async fn settle(
        self,
        args: &Args,
        client: &Client,
        setup: &Setup,
        database: &TestDatabase,
    ) -> anyhow::Result<Settled> {
        self.stop_commands.store(true, Ordering::Relaxed);
        let mut driven = Driven::default();
        for lane in self.lanes {
            let lane = lane.await?;
            driven.tickets += lane.tickets;
            driven.tasks += lane.tasks;
            driven.stripe_deliveries += lane.stripe_deliveries;
            driven.stripe_events.extend(lane.stripe_events);
        }
        let deadline = Instant::now() + Duration::from_secs(args.settle_seconds);
        tasks_finished(&database.pool, deadline).await?;
        self.stop_agents.store(true, Ordering::Relaxed);
        let mut stats = agents::AgentStats::default();
        for agent in self.agents {
            let agent = agent.await?;
            stats.registered += agent.registered;
            stats.claims += agent.claims;
            stats.claimed += agent.claimed;
            stats.ambiguous_claims += agent.ambiguous_claims;
            stats.completed += agent.completed;
            stats.abandoned += agent.abandoned;
        }
        caught_up(&database.pool, deadline).await?;
        self.stop_subscribers.store(true, Ordering::Relaxed);
        let mut subscribers = Vec::new();
        let mut settled = Vec::new();
        for subscriber in self.subscribers {
            let mut subscriber = subscriber.await?;
            let expected = expected(&subscriber, client, setup, &database.pool).await?;
            let patience = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(10));
            settled.push(
                subscriber
                    .settle(client, &setup.token, &expected, patience)
                    .await,
            );
            subscribers.push(subscriber);
        }
        let http_agents = self
            .agent_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(Settled {
            driven,
            agents: stats,
            http_agents,
            subscribers: checks::subscribers(&subscribers, &settled),
        })
    }
}

/// What a subscriber must end with: the HTTP board view, or the project's events after
/// its first snapshot as the log holds them.
async fn expected(
    subscriber: &Subscriber,
    client: &Client,
    setup: &Setup,
    pool: &sqlx::PgPool,
) -> anyhow::Result<Expected> {
    if subscriber.stream == Stream::Board {
        let path = format!("/api/v1/board/view?project_id={}", subscriber.project);
        let view = client.read(&path, &setup.token).await?;
        return Ok(Expected::Board(subscribers::cards_of(&view)));
    }
    let start = subscriber.start.unwrap_or_default();
    let positions: Vec<(i64, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, global_position from events
          where metadata->>'project_id' = $1
            and (transaction_id::text::bigint, global_position) > ($2, $3)
          order by 1, 2",
    )
    .bind(&subscriber.project)
    .bind(start.transaction_id)
    .bind(start.global_position)
    .fetch_all(pool)
    .await?;
    Ok(Expected::Events(
        positions
            .into_iter()
            .map(|(transaction_id, global_position)| omoi_store::Cursor {
                transaction_id,
                global_position,
            })
            .collect(),
    ))
}

/// Waits until every task in the log completed (or one ended otherwise: then the
/// tasks check names it).
async fn tasks_finished(pool: &sqlx::PgPool, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let row = sqlx::query(
            "select count(*) as tasks,
                    count(*) filter (where done) as done,
                    count(*) filter (where ended and not done) as ended
               from (select aggregate_id,
                            bool_or(event_type = 'TaskCompleted') as done,
                            bool_or(event_type in ('TaskPermanentlyFailed', 'TaskCancelled')) as ended
                       from events where aggregate_type = 'Task' group by 1) t",
        )
        .fetch_one(pool)
        .await?;
        let (tasks, done, ended): (i64, i64, i64) = (
            row.try_get("tasks")?,
            row.try_get("done")?,
            row.try_get("ended")?,
        );
        if done + ended == tasks || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every live projector has applied the whole log.
async fn caught_up(pool: &sqlx::PgPool, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let behind: i64 = sqlx::query_scalar(
            "select count(*) from projector_builds b,
                    (select transaction_id::text::bigint as xid, global_position as pos
                       from events order by transaction_id desc, global_position desc
                      limit 1) newest
              where b.state = 'live' and (b.transaction_id, b.global_position) < (newest.xid, newest.pos)",
        )
        .fetch_one(pool)
        .await
        .context("projector positions")?;
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the read models did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
