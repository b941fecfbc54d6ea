//! Which agents an event concerns.

use std::collections::BTreeSet;

use omoi_store::StoredEvent;
use serde_json::Value;
use uuid::Uuid;

/// How deep into a payload agent ids are looked for: the variant's fields and the
/// objects they hold (a validation's target, a discovery), no further.
const DEPTH: usize = 3;

/// The agents `event` concerns: the agent that caused it (actor `agent:<id>`), the agent
/// it happened to (an `Agent` aggregate's events), and every agent its payload names —
/// any field called `agent_id` or ending in `_agent_id` (`TaskAssigned.agent_id`, a
/// validation target's `implementer_agent_id`, …). Naming by field keeps new events in
/// the audit without a list to update.
pub fn agents_named(event: &StoredEvent) -> BTreeSet<Uuid> {
    let mut agents = BTreeSet::new();
    if let Some(id) = event
        .metadata
        .get("actor")
        .and_then(Value::as_str)
        .and_then(|actor| actor.strip_prefix("agent:"))
        .and_then(|id| id.parse().ok())
    {
        agents.insert(id);
    }
    if event.aggregate_type == "Agent" {
        if let Ok(id) = event.aggregate_id.parse() {
            agents.insert(id);
        }
    }
    collect(&event.payload, DEPTH, &mut agents);
    agents
}

fn collect(value: &Value, depth: usize, agents: &mut BTreeSet<Uuid>) {
    if depth == 0 {
        return;
    }
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let names_agent = name == "agent_id" || name.ends_with("_agent_id");
                match field.as_str().and_then(|text| text.parse().ok()) {
                    Some(id) if names_agent => {
                        agents.insert(id);
                    }
                    _ => collect(field, depth - 1, agents),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect(item, depth - 1, agents)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(aggregate_type: &str, aggregate_id: Uuid, payload: Value, actor: &str) -> StoredEvent {
        StoredEvent {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.to_string(),
            sequence: 1,
            global_position: 1,
            transaction_id: 1,
            event_type: "X".into(),
            event_version: "1".into(),
            payload,
            metadata: json!({ "actor": actor }),
        }
    }

    #[test]
    fn the_actor_the_agent_aggregate_and_named_fields_are_found() {
        let (actor, holder, implementer, agent) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let task = Uuid::now_v7();
        let assigned = event(
            "Task",
            task,
            json!({"TaskAssigned": {"agent_id": holder.to_string(), "at": "now"}}),
            &format!("agent:{actor}"),
        );
        assert_eq!(agents_named(&assigned), BTreeSet::from([actor, holder]));

        let validates = event(
            "Task",
            task,
            json!({"TaskValidates": {"target": {"task_id": task.to_string(),
                "implementer_agent_id": implementer.to_string(), "revision": 0}}}),
            "system:validation",
        );
        assert_eq!(agents_named(&validates), BTreeSet::from([implementer]));

        let changed = event(
            "Agent",
            agent,
            json!({"AgentStatusChanged": {"from": "idle", "to": "degraded"}}),
            "system:worker",
        );
        assert_eq!(agents_named(&changed), BTreeSet::from([agent]));
    }

    #[test]
    fn other_ids_and_unparsable_values_are_not_agents() {
        let task = Uuid::now_v7();
        let created = event(
            "Task",
            task,
            json!({"TaskCreated": {"task_id": task.to_string(), "ticket_id": Uuid::now_v7().to_string(),
                "agent_id": "not an id", "notes": ["agent_id"]}}),
            "user:someone",
        );
        assert!(agents_named(&created).is_empty());
    }
}
