use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AgentCommand, AgentError, AgentEvent};
use crate::common::{
    optional_text, required_text, Scope, Scoped, TextProblem, MAX_TEXT_CHARS, MAX_TITLE_CHARS,
};
use crate::guardian::{self, AnomalyParts, InterventionKind, ANOMALY_READINGS, ANOMALY_THRESHOLD};

/// Fewest tasks an agent may run at once: an agent that can take none is no agent.
pub const MIN_CAPACITY: u32 = 1;
/// Most tasks one agent may run at once; more is a misconfiguration, not a big machine.
pub const MAX_CAPACITY: u32 = 100;
/// Most capabilities one agent may declare; keeps the set (and its events) bounded.
pub const MAX_CAPABILITIES: usize = 64;
/// Longest capability; capabilities are short tags matched against task requirements.
pub const MAX_CAPABILITY_CHARS: usize = 100;

/// The role an agent plays (the original's four types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum AgentType {
    #[default]
    Worker,
    Monitor,
    Watchdog,
    Guardian,
}

impl AgentType {
    pub const ALL: [AgentType; 4] = [Self::Worker, Self::Monitor, Self::Watchdog, Self::Guardian];

    pub fn as_str(self) -> &'static str {
        use AgentType::*;
        match self {
            Worker => "worker",
            Monitor => "monitor",
            Watchdog => "watchdog",
            Guardian => "guardian",
        }
    }
}

impl fmt::Display for AgentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's lifecycle status (the original's `AgentStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    #[default]
    Spawning,
    Idle,
    Running,
    Degraded,
    Failed,
    Quarantined,
    Terminated,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 7] = [
        Self::Spawning,
        Self::Idle,
        Self::Running,
        Self::Degraded,
        Self::Failed,
        Self::Quarantined,
        Self::Terminated,
    ];

    /// The original's transition table, verbatim. A status never "moves" to itself here;
    /// re-recording the current status is the separate, forced case.
    pub fn can_move_to(self, to: AgentStatus) -> bool {
        use AgentStatus::*;
        match self {
            Spawning => matches!(to, Idle | Failed | Terminated),
            Idle => matches!(to, Running | Degraded | Quarantined | Terminated),
            Running => matches!(to, Idle | Failed | Degraded | Quarantined),
            Degraded => matches!(to, Idle | Failed | Quarantined | Terminated),
            Failed => matches!(to, Quarantined | Terminated),
            Quarantined => matches!(to, Idle | Terminated),
            Terminated => false,
        }
    }

    /// Whether an agent in this status may be given new work: not once failed,
    /// quarantined (until released) or terminated. The claims and a person's assignment
    /// ask the same question.
    pub fn takes_work(self) -> bool {
        !matches!(self, Self::Failed | Self::Quarantined | Self::Terminated)
    }

    /// The statuses a silent agent is moved through to `failed`: straight there where the
    /// table allows it, else by way of `degraded` (an idle agent); `None` for one the
    /// table cannot fail that way (quarantined, terminated — a walk through `idle` would
    /// release a quarantine) and empty for one already failed.
    pub fn steps_to_failed(self) -> Option<Vec<AgentStatus>> {
        use AgentStatus::*;
        if self == Failed {
            Some(vec![])
        } else if self.can_move_to(Failed) {
            Some(vec![Failed])
        } else if self.can_move_to(Degraded) && Degraded.can_move_to(Failed) {
            Some(vec![Degraded, Failed])
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        use AgentStatus::*;
        match self {
            Spawning => "spawning",
            Idle => "idle",
            Running => "running",
            Degraded => "degraded",
            Failed => "failed",
            Quarantined => "quarantined",
            Terminated => "terminated",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's current state: the fold of its events. Liveness (heartbeats, missed
/// beats, anomaly scores) is not here; see the module documentation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    /// `None` for an agent that serves the whole organization.
    pub project_id: Option<Uuid>,
    pub name: String,
    pub agent_type: AgentType,
    pub capabilities: BTreeSet<String>,
    /// How many tasks the agent runs at once.
    pub capacity: u32,
    pub status: AgentStatus,
    /// Why the agent entered its current status, if anyone said.
    pub status_reason: Option<String>,
    pub status_changed_at: Option<DateTime<Utc>>,
    pub registered_at: Option<DateTime<Utc>>,
    /// Anomalous readings in a row (0 after a normal one or a quarantine).
    #[serde(default)]
    pub anomaly_streak: u32,
    /// When the last reading was recorded.
    #[serde(default)]
    pub last_reading_at: Option<DateTime<Utc>>,
}

impl Agent {
    fn exists(&self) -> bool {
        self.id.is_some()
    }

    /// Every command but registration needs an agent that exists and is not terminated.
    fn ensure_active(&self) -> Result<(), AgentError> {
        if !self.exists() {
            return Err(AgentError::NotFound);
        }
        if self.status == AgentStatus::Terminated {
            return Err(AgentError::Terminated);
        }
        Ok(())
    }

    fn decide(&self, command: AgentCommand) -> Result<Vec<AgentEvent>, AgentError> {
        match command {
            AgentCommand::RegisterAgent {
                agent_id,
                organization_id,
                project_id,
                name,
                agent_type,
                capabilities,
                capacity,
                at,
            } => {
                if self.exists() {
                    return Err(AgentError::AlreadyExists);
                }
                let name = match name {
                    Some(name) => {
                        required_text(&name, MAX_TITLE_CHARS).map_err(AgentError::name)?
                    }
                    None => default_name(agent_type, agent_id),
                };
                let capacity = capacity.unwrap_or(MIN_CAPACITY);
                if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
                    return Err(AgentError::CapacityOutOfRange {
                        capacity,
                        min: MIN_CAPACITY,
                        max: MAX_CAPACITY,
                    });
                }
                Ok(vec![AgentEvent::AgentRegistered {
                    agent_id,
                    organization_id,
                    project_id,
                    name,
                    agent_type,
                    capabilities: capability_set(capabilities)?,
                    capacity,
                    registered_at: at,
                }])
            }
            AgentCommand::ChangeAgentStatus {
                to,
                reason,
                force,
                guardian,
                at,
            } => {
                self.ensure_active()?;
                let from = self.status;
                // Quarantine is a Guardian's decision, both ways; ending the agent is not
                // a way out of it that gives the agent work.
                let touches_quarantine = to == AgentStatus::Quarantined
                    || (from == AgentStatus::Quarantined && to != AgentStatus::Terminated);
                if touches_quarantine && !guardian {
                    return Err(AgentError::GuardianRequired);
                }
                if from == to {
                    // Forcing re-records the current status, e.g. to log why a
                    // quarantine was extended; it is never a way around the table.
                    if !force {
                        return Err(AgentError::AlreadyInStatus(to));
                    }
                } else if !from.can_move_to(to) {
                    return Err(AgentError::IllegalTransition { from, to });
                }
                Ok(vec![AgentEvent::AgentStatusChanged {
                    from,
                    to,
                    reason: checked_reason(reason)?,
                    at,
                }])
            }
            AgentCommand::Intervene {
                quarantine,
                reason,
                at,
            } => {
                self.ensure_active()?;
                let reason = guardian::reason(&reason).map_err(|problem| match problem {
                    TextProblem::Empty => AgentError::ReasonRequired,
                    TextProblem::TooLong { max } => AgentError::TextTooLong {
                        field: "reason",
                        max,
                    },
                })?;
                let (kind, to) = if quarantine {
                    (InterventionKind::Quarantine, AgentStatus::Quarantined)
                } else {
                    (InterventionKind::Release, AgentStatus::Idle)
                };
                let from = self.status;
                if !quarantine && from != AgentStatus::Quarantined {
                    return Err(AgentError::NotQuarantined(from));
                }
                if from == to {
                    return Err(AgentError::AlreadyInStatus(to));
                }
                if !from.can_move_to(to) {
                    return Err(AgentError::IllegalTransition { from, to });
                }
                Ok(vec![
                    AgentEvent::GuardianIntervened {
                        kind,
                        reason: reason.clone(),
                        at,
                    },
                    AgentEvent::AgentStatusChanged {
                        from,
                        to,
                        reason: Some(reason),
                        at,
                    },
                ])
            }
            AgentCommand::RecordAnomalyReading {
                parts,
                min_gap_ms,
                at,
            } => {
                self.ensure_active()?;
                self.read_anomaly(parts, min_gap_ms, at)
            }
            AgentCommand::UpdateCapabilities { capabilities } => {
                self.ensure_active()?;
                let capabilities = capability_set(capabilities)?;
                if capabilities == self.capabilities {
                    return Ok(vec![]);
                }
                Ok(vec![AgentEvent::AgentCapabilitiesUpdated { capabilities }])
            }
        }
    }
}

impl Agent {
    /// An agent out of work already (quarantined, failed) is not read; a normal reading
    /// matters only when it ends a run of anomalous ones.
    fn read_anomaly(
        &self,
        parts: AnomalyParts,
        min_gap_ms: u64,
        at: DateTime<Utc>,
    ) -> Result<Vec<AgentEvent>, AgentError> {
        if !self.status.takes_work() {
            return Ok(vec![]);
        }
        let score = parts.score();
        if !parts.is_anomalous() {
            return Ok(match self.anomaly_streak {
                0 => vec![],
                _ => vec![AgentEvent::AnomalySubsided { score, at }],
            });
        }
        let gap = chrono::Duration::milliseconds(i64::try_from(min_gap_ms).unwrap_or(i64::MAX));
        if self.last_reading_at.is_some_and(|last| at - last < gap) {
            return Err(AgentError::ReadingTooSoon { min_gap_ms });
        }
        let streak = self.anomaly_streak + 1;
        let mut events = vec![AgentEvent::AnomalyDetected {
            score,
            parts,
            streak,
            at,
        }];
        let from = self.status;
        if streak >= ANOMALY_READINGS && from.can_move_to(AgentStatus::Quarantined) {
            let reason = format!(
                "anomaly score {score:.2} ≥ {ANOMALY_THRESHOLD} in {streak} readings in a row \
                 (latency {:.2}, errors {:.2}, resource skew {:.2}, queue impact {:.2})",
                parts.latency, parts.errors, parts.resource_skew, parts.queue_impact
            );
            events.push(AgentEvent::GuardianIntervened {
                kind: InterventionKind::Quarantine,
                reason: reason.clone(),
                at,
            });
            events.push(AgentEvent::AgentStatusChanged {
                from,
                to: AgentStatus::Quarantined,
                reason: Some(reason),
                at,
            });
        }
        Ok(events)
    }
}

/// `{type}-{first 8 hex digits of the id}`. The original numbered agents with a
/// per-type sequence, which needs a counter outside the aggregate; the id prefix is
/// unique enough to tell agents apart in logs and needs nothing but the command.
pub fn default_name(agent_type: AgentType, agent_id: Uuid) -> String {
    let prefix: String = agent_id.simple().to_string().chars().take(8).collect();
    format!("{agent_type}-{prefix}")
}

/// Trims every capability, refuses blank or overlong ones, and collapses duplicates:
/// capabilities are a set, so listing one twice is not an error.
fn capability_set(capabilities: Vec<String>) -> Result<BTreeSet<String>, AgentError> {
    let set = capabilities
        .iter()
        .map(|c| required_text(c, MAX_CAPABILITY_CHARS).map_err(AgentError::capability))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if set.len() > MAX_CAPABILITIES {
        return Err(AgentError::TooManyCapabilities {
            max: MAX_CAPABILITIES,
        });
    }
    Ok(set)
}

/// `optional_text` refuses only for length, so any problem it reports is that one.
fn checked_reason(reason: Option<String>) -> Result<Option<String>, AgentError> {
    reason
        .map(|r| {
            optional_text(&r, MAX_TEXT_CHARS).map_err(|_| AgentError::TextTooLong {
                field: "reason",
                max: MAX_TEXT_CHARS,
            })
        })
        .transpose()
}

impl Aggregate for Agent {
    const TYPE: &'static str = "Agent";
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AgentEvent::AgentRegistered {
                agent_id,
                organization_id,
                project_id,
                name,
                agent_type,
                capabilities,
                capacity,
                registered_at,
            } => {
                *self = Agent {
                    id: Some(agent_id),
                    organization_id: Some(organization_id),
                    project_id,
                    name,
                    agent_type,
                    capabilities,
                    capacity,
                    status: AgentStatus::Spawning,
                    status_reason: None,
                    // Registration is when the agent entered `spawning`.
                    status_changed_at: Some(registered_at),
                    registered_at: Some(registered_at),
                    anomaly_streak: 0,
                    last_reading_at: None,
                }
            }
            AgentEvent::AgentStatusChanged { to, reason, at, .. } => {
                if to == AgentStatus::Quarantined {
                    // Released, it starts over.
                    self.anomaly_streak = 0;
                }
                self.status = to;
                self.status_reason = reason;
                self.status_changed_at = Some(at);
            }
            AgentEvent::AgentCapabilitiesUpdated { capabilities } => {
                self.capabilities = capabilities
            }
            AgentEvent::GuardianIntervened { .. } => {}
            AgentEvent::AnomalyDetected { streak, at, .. } => {
                self.anomaly_streak = streak;
                self.last_reading_at = Some(at);
            }
            AgentEvent::AnomalySubsided { at, .. } => {
                self.anomaly_streak = 0;
                self.last_reading_at = Some(at);
            }
        }
    }
}

impl Scoped for Agent {
    fn scope(&self) -> Option<Scope> {
        Some(Scope {
            organization_id: self.organization_id?,
            project_id: self.project_id,
        })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
