//! A spec as one document: its requirements in EARS form with acceptance criteria ticked
//! once every task serving the requirement completed, its design, and its plan with each
//! ticket's and task's status and result — as JSON, Markdown or YAML, now or as of a
//! position of the log.
//!
//! The plan's tickets and tasks are found by the ids `plan_execution` gave them (derived
//! from the approval), so the document needs no read model: it folds the spec's, the
//! tickets' and the tasks' own histories (three queries).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use omoi_domain::common::Priority;
use omoi_domain::spec::{Design, Estimate, Spec, SpecPhase};
use omoi_domain::task::{Task, TaskStatus};
use omoi_domain::ticket::{Ticket, TicketStatus};
use omoi_store::log::{aggregate_history, fold_until, histories, CorruptEvent};
use omoi_store::StoredEvent;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::execution::{created_by, last_approval};

/// Why a spec could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptEvent),
    /// The spec had no event at or before the position asked for.
    #[error("the spec did not exist at position {0}")]
    NotYet(i64),
}

/// The spec as a document (the JSON export; the other formats render it).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SpecDocument {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub phase: SpecPhase,
    /// How many events of the spec the document reflects.
    pub version: usize,
    /// The log position the document was taken at, when not now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<i64>,
    pub requirements: Vec<RequirementDocument>,
    pub design: Option<Design>,
    pub plan: Option<PlanDocument>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RequirementDocument {
    pub id: String,
    pub condition: String,
    pub action: String,
    /// `**WHEN** … **THE SYSTEM SHALL** …`
    pub ears: String,
    pub acceptance_criteria: Vec<Criterion>,
    /// Keys of the plan's tasks that serve the requirement (its own, or its ticket's).
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Criterion {
    pub text: String,
    /// Every task serving the requirement completed (and there is at least one).
    pub met: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlanDocument {
    /// Whether the plan was approved, so that its tickets and tasks exist.
    pub approved: bool,
    pub tickets: Vec<TicketDocument>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TicketDocument {
    pub key: String,
    /// The ticket created from the plan, once approved.
    pub id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub priority: Priority,
    pub requirement_ids: Vec<String>,
    pub status: Option<TicketStatus>,
    pub tasks: Vec<TaskDocument>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TaskDocument {
    pub key: String,
    pub id: Option<Uuid>,
    pub title: String,
    pub task_type: String,
    pub depends_on: Vec<String>,
    pub requirement_ids: Vec<String>,
    pub estimate: Option<Estimate>,
    pub status: Option<TaskStatus>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The document of spec `spec_id` now, or as of global position `as_of` (each history
/// folded up to its last event at or before it).
pub async fn document(
    pool: &PgPool,
    spec_id: Uuid,
    as_of: Option<i64>,
) -> Result<SpecDocument, ExportError> {
    let upto = |events: Vec<StoredEvent>| -> Vec<StoredEvent> {
        match as_of {
            Some(position) => events
                .into_iter()
                .filter(|e| e.global_position <= position)
                .collect(),
            None => events,
        }
    };
    let history = upto(aggregate_history(pool, "Spec", &spec_id.to_string()).await?);
    if history.is_empty() {
        return Err(ExportError::NotYet(as_of.unwrap_or(0)));
    }
    let spec: Spec = fold_until(&history, None)?;
    let approval = last_approval(&history);
    let mut tickets = BTreeMap::new();
    let mut tasks = BTreeMap::new();
    if let (Some(plan), Some(approval)) = (spec.plan.as_ref(), approval.as_deref()) {
        let ticket_ids: Vec<String> = plan
            .tickets
            .iter()
            .map(|t| created_by(approval, &t.key).to_string())
            .collect();
        let task_ids: Vec<String> = plan
            .tasks()
            .map(|(_, t)| created_by(approval, &t.key).to_string())
            .collect();
        tickets = fold_each::<Ticket>(upto(histories(pool, "Ticket", &ticket_ids).await?))?;
        tasks = fold_each::<Task>(upto(histories(pool, "Task", &task_ids).await?))?;
    }
    Ok(assemble(
        spec_id,
        &spec,
        history.len(),
        as_of,
        approval.as_deref(),
        &tickets,
        &tasks,
    ))
}

/// Each aggregate of `events` (sorted by aggregate) folded, by id.
fn fold_each<A: cqrs_es::Aggregate>(
    events: Vec<StoredEvent>,
) -> Result<BTreeMap<String, A>, CorruptEvent> {
    let mut by_id: BTreeMap<String, Vec<StoredEvent>> = BTreeMap::new();
    for event in events {
        by_id
            .entry(event.aggregate_id.clone())
            .or_default()
            .push(event);
    }
    by_id
        .into_iter()
        .map(|(id, history)| Ok((id, fold_until::<A>(&history, None)?)))
        .collect()
}

/// The document of a folded spec and the states of its plan's tickets and tasks.
fn assemble(
    spec_id: Uuid,
    spec: &Spec,
    version: usize,
    as_of: Option<i64>,
    approval: Option<&str>,
    tickets: &BTreeMap<String, Ticket>,
    tasks: &BTreeMap<String, Task>,
) -> SpecDocument {
    let id_of = |key: &str| approval.map(|a| created_by(a, key));
    let plan = spec.plan.as_ref().map(|plan| PlanDocument {
        approved: approval.is_some(),
        tickets: plan
            .tickets
            .iter()
            .map(|ticket| {
                let id = id_of(&ticket.key);
                let state = id.and_then(|id| tickets.get(&id.to_string()));
                TicketDocument {
                    key: ticket.key.clone(),
                    id,
                    title: ticket.title.clone(),
                    description: ticket.description.clone(),
                    priority: ticket.priority,
                    requirement_ids: ticket.requirement_ids.clone(),
                    status: state.map(|t| t.status),
                    tasks: ticket
                        .tasks
                        .iter()
                        .map(|task| {
                            let id = id_of(&task.key);
                            let state = id.and_then(|id| tasks.get(&id.to_string()));
                            TaskDocument {
                                key: task.key.clone(),
                                id,
                                title: task.title.clone(),
                                task_type: task.task_type.clone(),
                                depends_on: task.depends_on.clone(),
                                requirement_ids: task.requirement_ids.clone(),
                                estimate: task.estimate,
                                status: state.map(|t| t.status),
                                result: state.and_then(|t| t.result.clone()),
                                completed_at: state.and_then(|t| t.completed_at),
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    });
    // The tasks serving each requirement: named by the task, or by its ticket.
    let mut serving: BTreeMap<&str, Vec<&TaskDocument>> = BTreeMap::new();
    if let Some(plan) = &plan {
        for ticket in &plan.tickets {
            for task in &ticket.tasks {
                let requirements: BTreeSet<&str> = ticket
                    .requirement_ids
                    .iter()
                    .chain(&task.requirement_ids)
                    .map(String::as_str)
                    .collect();
                for requirement in requirements {
                    serving.entry(requirement).or_default().push(task);
                }
            }
        }
    }
    let requirements = spec
        .requirements
        .iter()
        .map(|r| {
            let tasks = serving.get(r.id.as_str()).cloned().unwrap_or_default();
            let met = !tasks.is_empty()
                && tasks
                    .iter()
                    .all(|t| t.status == Some(TaskStatus::Completed));
            RequirementDocument {
                id: r.id.clone(),
                condition: r.condition.clone(),
                action: r.action.clone(),
                ears: ears(&r.condition, &r.action),
                acceptance_criteria: r
                    .acceptance_criteria
                    .iter()
                    .map(|text| Criterion {
                        text: text.clone(),
                        met,
                    })
                    .collect(),
                tasks: tasks.iter().map(|t| t.key.clone()).collect(),
            }
        })
        .collect();
    SpecDocument {
        id: spec_id,
        title: spec.title.clone(),
        description: spec.description.clone(),
        phase: spec.phase,
        version,
        as_of,
        requirements,
        design: spec.design.clone(),
        plan,
    }
}

/// `**WHEN** <condition> **THE SYSTEM SHALL** <action>`, whether or not the texts
/// already begin with their keywords.
pub fn ears(condition: &str, action: &str) -> String {
    format!(
        "**WHEN** {} **THE SYSTEM SHALL** {}",
        without_prefix(condition, "WHEN"),
        without_prefix(action, "THE SYSTEM SHALL")
    )
}

fn without_prefix<'a>(text: &'a str, keyword: &str) -> &'a str {
    let text = text.trim();
    match text.get(..keyword.len()) {
        Some(head)
            if head.eq_ignore_ascii_case(keyword)
                && text[keyword.len()..].starts_with(char::is_whitespace) =>
        {
            text[keyword.len()..].trim_start()
        }
        _ => text,
    }
}

// ---------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------

/// The document as Markdown: requirements as EARS sentences with checkboxes, the design,
/// and the plan as one table per ticket.
pub fn markdown(document: &SpecDocument) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", one_line(&document.title));
    let _ = write!(
        out,
        "> Spec `{}` · phase **{}** · version {}",
        document.id,
        document.phase.as_str(),
        document.version
    );
    if let Some(position) = document.as_of {
        let _ = write!(out, " · as of log position {position}");
    }
    out.push_str("\n\n");
    if !document.description.trim().is_empty() {
        let _ = writeln!(out, "{}\n", contained(&document.description));
    }
    out.push_str("## Requirements\n\n");
    if document.requirements.is_empty() {
        out.push_str("_None yet._\n\n");
    }
    for requirement in &document.requirements {
        let _ = writeln!(out, "### {}\n", requirement.id);
        let _ = writeln!(out, "{}\n", one_line(&requirement.ears));
        for criterion in &requirement.acceptance_criteria {
            let mark = if criterion.met { "x" } else { " " };
            let _ = writeln!(out, "- [{mark}] {}", one_line(&criterion.text));
        }
        if !requirement.tasks.is_empty() {
            let _ = writeln!(out, "\nServed by: {}", requirement.tasks.join(", "));
        }
        out.push('\n');
    }
    out.push_str("## Design\n\n");
    match &document.design {
        None => out.push_str("_None yet._\n\n"),
        Some(design) => {
            for (heading, text) in [
                ("Architecture", &design.architecture),
                ("Data model", &design.data_model),
                ("API", &design.api_spec),
            ] {
                if !text.trim().is_empty() {
                    let _ = writeln!(out, "### {heading}\n\n{}\n", contained(text));
                }
            }
        }
    }
    out.push_str("## Plan\n\n");
    let Some(plan) = &document.plan else {
        out.push_str("_None yet._\n");
        return out;
    };
    if !plan.approved {
        out.push_str("_Not approved yet._\n\n");
    }
    for ticket in &plan.tickets {
        let status = ticket.status.map_or("not created", TicketStatus::as_str);
        let _ = writeln!(
            out,
            "### {} — {} ({}, {})\n",
            ticket.key,
            one_line(&ticket.title),
            wire(&ticket.priority),
            status
        );
        if !ticket.requirement_ids.is_empty() {
            let _ = writeln!(out, "Requirements: {}\n", ticket.requirement_ids.join(", "));
        }
        out.push_str("| Task | Title | Type | Depends on | Estimate | Status |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for task in &ticket.tasks {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                task.key,
                cell(&task.title),
                cell(&task.task_type),
                task.depends_on.join(", "),
                task.estimate.as_ref().map(wire).unwrap_or_default(),
                task.status.map_or("not created", TaskStatus::as_str),
            );
        }
        out.push('\n');
        for task in &ticket.tasks {
            if let Some(result) = task.result.as_ref().filter(|r| !r.is_null()) {
                let _ = writeln!(
                    out,
                    "Result of {}: `{}`\n",
                    task.key,
                    cell(&result.to_string())
                );
            }
        }
    }
    out
}

/// A value's wire name (`HIGH`, `XL`).
fn wire<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Text on one line (headings, list items).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An author's Markdown (a description, a part of the design), kept as written but held
/// to its own section: a code fence it leaves open is closed after it, and an HTML
/// comment it opens outside a fence is written as text — either would otherwise swallow
/// the sections after it (the requirements, their computed checkmarks, the plan).
fn contained(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    // The fence that opened the code block we are in: its character and length.
    let mut fence: Option<(char, usize)> = None;
    for line in text.trim().lines() {
        match (fence, fence_of(line)) {
            (None, Some(opened)) => fence = Some(opened),
            // Closed by a fence of the same character, at least as long (CommonMark).
            (Some((c, n)), Some((d, m))) if c == d && m >= n && only_fence(line) => fence = None,
            _ => {}
        }
        match fence {
            Some(_) => out.push_str(line),
            None => out.push_str(&line.replace("<!--", "&lt;!--")),
        }
        out.push('\n');
    }
    if let Some((c, n)) = fence {
        out.extend(std::iter::repeat_n(c, n));
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

/// The fence a line opens or closes (`` ``` `` or `~~~`, at most three spaces in): its
/// character and length.
fn fence_of(line: &str) -> Option<(char, usize)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = &line[indent..];
    let c = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = rest.chars().take_while(|d| *d == c).count();
    (indent <= 3 && n >= 3).then_some((c, n))
}

/// Whether the line is a fence and nothing else (a closing fence carries no info string).
fn only_fence(line: &str) -> bool {
    let rest = line.trim();
    rest.chars().all(|c| c == '`') || rest.chars().all(|c| c == '~')
}

/// Text in a table cell: one line, pipes and backticks escaped.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|").replace('`', "'")
}

// ---------------------------------------------------------------------------------------
// YAML
// ---------------------------------------------------------------------------------------

/// The document as YAML: a front-matter document (id, title, phase, version) and then the
/// whole document. Every string is double-quoted ([`quoted`]), which YAML reads as the
/// same string whatever it holds.
pub fn yaml(document: &SpecDocument) -> String {
    let mut out = String::from("---\n");
    let _ = writeln!(out, "id: {}", quoted(&document.id.to_string()));
    let _ = writeln!(out, "title: {}", quoted(&document.title));
    let _ = writeln!(out, "phase: {}", quoted(document.phase.as_str()));
    let _ = writeln!(out, "version: {}", document.version);
    out.push_str("---\n");
    let value = serde_json::to_value(document).unwrap_or(Value::Null);
    write_yaml(&mut out, &value, 0);
    out
}

fn write_yaml(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                let key = quoted(key);
                if is_block(item) {
                    let _ = writeln!(out, "{pad}{key}:");
                    write_yaml(out, item, indent + 2);
                } else {
                    let _ = writeln!(out, "{pad}{key}: {}", scalar(item));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                if is_block(item) {
                    let _ = writeln!(out, "{pad}-");
                    write_yaml(out, item, indent + 2);
                } else {
                    let _ = writeln!(out, "{pad}- {}", scalar(item));
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

/// Non-empty maps and lists are written as blocks; everything else on its line.
fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

/// A scalar (or an empty map or list) in flow form: JSON's spelling is valid YAML, but
/// for strings ([`quoted`]).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => quoted(text),
        other => other.to_string(),
    }
}

/// `text` as a double-quoted scalar that YAML 1.2 and JSON both read back as `text`:
/// `"` and `\` escaped, and every character a YAML parser refuses or folds escaped as
/// `\uXXXX` — the C0 controls, DEL and the C1 controls (NEL is a line break to YAML 1.1),
/// the line and paragraph separators, the byte-order mark, and U+FFFE and U+FFFF. JSON's
/// own spelling leaves all but the C0 controls raw: valid YAML 1.2, which libyaml, PyYAML
/// and SnakeYAML refuse (DEL, C1) or turn into other text (NEL, U+2028 — and `x\u{2028}---`
/// read as a new document).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if yaml_escapes(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The characters [`quoted`] escapes by number.
fn yaml_escapes(c: char) -> bool {
    matches!(
        u32::from(c),
        0..=0x1F | 0x7F..=0x9F | 0x2028 | 0x2029 | 0xFEFF | 0xFFFE | 0xFFFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ears_sentences_keep_one_keyword_each() {
        assert_eq!(
            ears("WHEN a user signs in", "THE SYSTEM SHALL issue a session"),
            "**WHEN** a user signs in **THE SYSTEM SHALL** issue a session"
        );
        assert_eq!(
            ears("a user signs in", "issue a session"),
            "**WHEN** a user signs in **THE SYSTEM SHALL** issue a session"
        );
        assert_eq!(
            ears("when  WHENever", "the system shall  do it"),
            "**WHEN** WHENever **THE SYSTEM SHALL** do it"
        );
        assert_eq!(
            ears("WHENEVER", "x"),
            "**WHEN** WHENEVER **THE SYSTEM SHALL** x"
        );
    }

    #[test]
    fn yaml_strings_are_json_quoted_and_blocks_indent() {
        let value = serde_json::json!({
            "title": "a: b # c\n- d",
            "list": [1, {"k": null}, []],
            "empty": {},
        });
        let mut out = String::new();
        write_yaml(&mut out, &value, 0);
        assert_eq!(
            out,
            "\"empty\": {}\n\"list\":\n  - 1\n  -\n    \"k\": null\n  - []\n\"title\": \"a: b # c\\n- d\"\n"
        );
    }

    proptest::proptest! {
        /// Whatever a string holds, its quoted form reads back as the string (JSON's
        /// reading, which for these escapes is YAML's) and holds none of the characters a
        /// YAML parser may refuse or fold, nor an unescaped quote or line break.
        #[test]
        fn a_quoted_string_reads_back_and_holds_nothing_a_parser_may_refuse(
            text in "(\\PC|[\u{0}-\u{1f}\u{7f}-\u{9f}\u{2028}\u{2029}\u{feff}\u{fffe}\u{ffff}\"\\\\])*"
        ) {
            let written = quoted(&text);
            let read: String = serde_json::from_str(&written).expect("JSON reads it");
            proptest::prop_assert_eq!(&read, &text);
            let inner = &written[1..written.len() - 1];
            proptest::prop_assert!(!inner.chars().any(yaml_escapes), "{written:?}");
            proptest::prop_assert!(!inner.replace("\\\\", "").replace("\\\"", "").contains('"'));
        }
    }

    /// An author's open fence is closed and an HTML comment outside a fence is text;
    /// what is inside a fence is left as written, and whole text is unchanged.
    #[test]
    fn an_authors_markdown_cannot_swallow_the_sections_after_it() {
        assert_eq!(
            contained("run:\n```sh\nmake <!-- x\n"),
            "run:\n```sh\nmake <!-- x\n```"
        );
        assert_eq!(
            contained("a <!-- hidden\n## Plan"),
            "a &lt;!-- hidden\n## Plan"
        );
        assert_eq!(
            contained("~~~~\n```\nstill code\n~~~~\nafter <!--"),
            "~~~~\n```\nstill code\n~~~~\nafter &lt;!--"
        );
        let whole = "# Title\n\n```rust\nfn main() {}\n```\n\n- [ ] an item";
        assert_eq!(contained(whole), whole);
    }

    #[test]
    fn table_cells_cannot_break_the_table() {
        assert_eq!(cell("a | b\n`c`"), "a \\| b 'c'");
    }
}
