//! Shared state of the handlers and the one path every command takes.

use std::sync::Arc;
use std::time::Instant;

use cqrs_es::Aggregate;
use omoi_domain::common::{DomainError, Scoped};
use omoi_store::{CommandBus, CommandContext, CommandError, Committed};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::metrics::{Metrics, Outcome};

#[derive(Clone)]
pub struct AppState {
    pub bus: Arc<CommandBus>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(bus: CommandBus, metrics: Metrics) -> Self {
        Self {
            bus: Arc::new(bus),
            metrics: Arc::new(metrics),
        }
    }

    pub fn pool(&self) -> &PgPool {
        self.bus.pool()
    }

    /// Executes a command through the bus, recording its outcome and latency.
    pub async fn execute<A>(
        &self,
        name: &'static str,
        id: Uuid,
        command: A::Command,
        context: &CommandContext,
    ) -> ApiResult<Committed<A>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone,
        A::Command: Clone + Send,
        A::Error: DomainError,
    {
        let started = Instant::now();
        let result = self
            .bus
            .execute::<A>(&id.to_string(), command, context)
            .await;
        let outcome = match &result {
            Ok(_) => Outcome::Committed,
            Err(CommandError::Domain(_) | CommandError::Forbidden) => Outcome::Refused,
            Err(CommandError::Conflict { .. }) => Outcome::Conflict,
            Err(CommandError::Unavailable(_) | CommandError::Internal(_)) => Outcome::Failed,
        };
        self.metrics
            .record_command(name, outcome, started.elapsed());
        result.map_err(ApiError::from)
    }

    /// The aggregate's current state and version; 404 naming `what` when it does not exist.
    pub async fn load<A>(&self, id: Uuid, what: &'static str) -> ApiResult<(A, usize)>
    where
        A: Aggregate,
        A::Error: DomainError,
    {
        self.bus
            .load::<A>(&id.to_string())
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound { what })
    }
}
