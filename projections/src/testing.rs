//! Helpers shared by the read models' tests: a log of ticket and task events.

use chrono::{DateTime, TimeZone, Utc};
use omoi_domain::common::{Phase, Priority};
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::TicketEvent;
use omoi_store::StoredEvent;
use serde_json::json;
use uuid::Uuid;

/// A log for the tests: positions count up from 1.
#[derive(Default)]
pub(crate) struct Log {
    pub events: Vec<StoredEvent>,
}

impl Log {
    pub fn ticket(&mut self, id: Uuid, event: TicketEvent) -> &StoredEvent {
        let payload = serde_json::to_value(&event).expect("a ticket event serializes");
        self.push("Ticket", id, payload)
    }

    pub fn task(&mut self, id: Uuid, event: TaskEvent) -> &StoredEvent {
        let payload = serde_json::to_value(&event).expect("a task event serializes");
        self.push("Task", id, payload)
    }

    pub fn push(
        &mut self,
        aggregate_type: &str,
        id: Uuid,
        payload: serde_json::Value,
    ) -> &StoredEvent {
        let position = self.events.len() as i64 + 1;
        let sequence = self
            .events
            .iter()
            .filter(|e| e.aggregate_id == id.to_string())
            .count() as i64
            + 1;
        self.events.push(StoredEvent {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: id.to_string(),
            sequence,
            global_position: position,
            transaction_id: position,
            event_type: payload
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_default(),
            event_version: "1".to_string(),
            payload: payload.into(),
            metadata: json!({}).into(),
        });
        self.events.last().expect("just pushed")
    }
}

pub(crate) fn created_ticket(
    org: Uuid,
    project: Uuid,
    id: Uuid,
    title: &str,
    priority: Priority,
) -> TicketEvent {
    TicketEvent::TicketCreated {
        ticket_id: id,
        organization_id: org,
        project_id: project,
        spec_id: None,
        title: title.to_string(),
        description: String::new(),
        priority,
        phase: Phase::Backlog,
    }
}

pub(crate) fn created_task(
    org: Uuid,
    project: Uuid,
    ticket: Uuid,
    id: Uuid,
    depends_on: Vec<Uuid>,
) -> TaskEvent {
    TaskEvent::TaskCreated {
        task_id: id,
        organization_id: org,
        project_id: project,
        ticket_id: ticket,
        title: format!("task {id}"),
        description: String::new(),
        task_type: "implement".to_string(),
        phase: Phase::Implementation,
        priority: Priority::Medium,
        depends_on,
        required_capabilities: vec![],
        max_retries: 3,
        timeout_seconds: None,
        created_at: at(),
    }
}

pub(crate) fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
        .single()
        .expect("a valid instant")
}
