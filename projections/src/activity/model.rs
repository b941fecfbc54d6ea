//! Which agents an event concerns.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use omoi_store::StoredEvent;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
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
        .actor()
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
    // The payload's text is JSON (checked when it was read): a walk cannot fail midway
    // but on a bug, and then the ids found so far stand.
    let mut payload = serde_json::Deserializer::from_str(event.payload.get());
    let walk = Walk {
        depth: DEPTH,
        names_agent: false,
        agents: &mut agents,
    };
    let _ = walk.deserialize(&mut payload);
    agents
}

/// A walk over a payload's text that collects the agent ids its fields name, without
/// building the document.
struct Walk<'a> {
    /// Levels of objects and arrays still to look into.
    depth: usize,
    /// The value is a field named `agent_id` or `…_agent_id`.
    names_agent: bool,
    agents: &'a mut BTreeSet<Uuid>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        if self.names_agent {
            if let Ok(id) = text.parse() {
                self.agents.insert(id);
            }
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        if self.depth == 0 {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            map.next_value_seed(Walk {
                depth: self.depth - 1,
                names_agent: name == "agent_id" || name.ends_with("_agent_id"),
                agents: &mut *self.agents,
            })?;
        }
        Ok(())
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut items: S) -> Result<(), S::Error> {
        if self.depth == 0 {
            while items.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        while items
            .next_element_seed(Walk {
                depth: self.depth - 1,
                names_agent: false,
                agents: &mut *self.agents,
            })?
            .is_some()
        {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn event(aggregate_type: &str, aggregate_id: Uuid, payload: Value, actor: &str) -> StoredEvent {
        StoredEvent {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.to_string(),
            sequence: 1,
            global_position: 1,
            transaction_id: 1,
            event_type: "X".into(),
            event_version: "1".into(),
            payload: payload.into(),
            metadata: json!({ "actor": actor }).into(),
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

    #[test]
    fn ids_are_looked_for_three_levels_deep_and_no_further() {
        let (within, beyond) = (Uuid::now_v7(), Uuid::now_v7());
        let nested = event(
            "Task",
            Uuid::now_v7(),
            json!({"TaskX": {"a": {"agent_id": within.to_string()},
                             "b": {"c": {"agent_id": beyond.to_string()}},
                             "list": [{"agent_id": within.to_string()}, [{"agent_id": beyond.to_string()}]]}}),
            "user:someone",
        );
        assert_eq!(agents_named(&nested), BTreeSet::from([within]));
    }
}
