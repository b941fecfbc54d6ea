//! Schemas of request fields whose rules their Rust types do not state: the lengths,
//! patterns and counts the domain enforces, written from the same constants, so that a
//! client generated from the document (or a fuzzer) sends what the server accepts and
//! nothing it refuses. Used with `#[schema(schema_with = …)]`.
//!
//! Text is trimmed by the domain before its length is counted; a required text must hold
//! something other than white space (Unicode `White_Space`, as `str::trim` sees it), and
//! no text may hold U+0000 ([`crate::openapi::NO_NUL`]).

use omoi_domain::common::{MAX_TEXT_CHARS, MAX_TITLE_CHARS};
use omoi_domain::{agent, spec, task};
use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, SchemaType, Type};

/// `str::trim`'s white space, as a character class body.
const WHITE_SPACE: &str =
    "\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// Text with at least one character that is not white space, and no NUL.
pub fn non_blank_pattern() -> String {
    format!("^[^\\u0000]*[^\\u0000{WHITE_SPACE}][^\\u0000]*$")
}

fn text_of(max: usize, required: bool, nullable: bool) -> Object {
    let kind = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    let pattern = if required {
        non_blank_pattern()
    } else {
        crate::openapi::NO_NUL.to_string()
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .max_length(Some(max))
        .min_length(required.then_some(1))
        .pattern(Some(pattern))
        .build()
}

/// A title or name: not blank, at most [`MAX_TITLE_CHARS`].
pub fn title() -> Object {
    text_of(MAX_TITLE_CHARS, true, false)
}

/// [`title`], or `null` for "unchanged" / "the default".
pub fn title_or_null() -> Object {
    text_of(MAX_TITLE_CHARS, true, true)
}

/// A name that may be blank (blank takes the default), or `null`.
pub fn name_or_null() -> Object {
    text_of(MAX_TITLE_CHARS, false, true)
}

/// Free text that may be empty: at most [`MAX_TEXT_CHARS`].
pub fn text() -> Object {
    text_of(MAX_TEXT_CHARS, false, false)
}

/// [`text`], or `null`.
pub fn text_or_null() -> Object {
    text_of(MAX_TEXT_CHARS, false, true)
}

/// Free text that must say something: an error, feedback, an architecture.
pub fn statement() -> Object {
    text_of(MAX_TEXT_CHARS, true, false)
}

/// A steering message for an agent: not blank, at most [`task::MAX_STEERING_CHARS`].
pub fn steering() -> Object {
    text_of(task::MAX_STEERING_CHARS, true, false)
}

/// A progress report.
pub fn progress() -> Object {
    text_of(task::MAX_PROGRESS_CHARS, true, false)
}

/// A requirement's condition, action or acceptance criterion.
pub fn clause() -> Object {
    text_of(spec::MAX_CLAUSE_CHARS, true, false)
}

/// A requirement's acceptance criteria: one to [`spec::MAX_ACCEPTANCE_CRITERIA`].
pub fn acceptance_criteria() -> Array {
    ArrayBuilder::new()
        .items(clause())
        .min_items(Some(1))
        .max_items(Some(spec::MAX_ACCEPTANCE_CRITERIA))
        .build()
}

/// A requirement id: `REQ-` and groups of upper-case letters and digits joined by `-`.
pub fn requirement_id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(spec::REQUIREMENT_ID_PATTERN))
        .max_length(Some(spec::MAX_REQUIREMENT_ID_CHARS))
        .examples(["REQ-AUTH-001"])
        .build()
}

/// A task's type, a free label such as `implement`.
pub fn task_type() -> Object {
    text_of(task::MAX_TASK_TYPE_CHARS, true, false)
}

/// [`task_type`], or `null` for the default.
pub fn task_type_or_null() -> Object {
    text_of(task::MAX_TASK_TYPE_CHARS, true, true)
}

/// The capabilities a task requires (duplicates merged), at most
/// [`task::MAX_REQUIRED_CAPABILITIES`].
pub fn required_capabilities() -> Array {
    ArrayBuilder::new()
        .items(text_of(task::MAX_CAPABILITY_CHARS, true, false))
        .max_items(Some(task::MAX_REQUIRED_CAPABILITIES))
        .build()
}

/// What an agent can do (duplicates merged), at most [`agent::MAX_CAPABILITIES`].
pub fn agent_capabilities() -> Array {
    ArrayBuilder::new()
        .items(text_of(agent::MAX_CAPABILITY_CHARS, true, false))
        .max_items(Some(agent::MAX_CAPABILITIES))
        .build()
}

/// Lines of a transcript: 1 to [`transcripts::MAX_WRITE_LINES`], each at most
/// [`transcripts::MAX_LINE_CHARS`], without a line break or NUL.
pub fn log_lines() -> Array {
    use omoi_store::transcripts;
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(transcripts::MAX_LINE_CHARS))
                .pattern(Some("^[^\\u0000\\n\\r]*$")),
        )
        .min_items(Some(1))
        .max_items(Some(transcripts::MAX_WRITE_LINES))
        .build()
}

/// The tasks a new task waits for, at most [`task::MAX_DEPENDENCIES`].
pub fn depends_on() -> Array {
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String).format(Some(
            utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid),
        )))
        .max_items(Some(task::MAX_DEPENDENCIES))
        .build()
}

/// An email address as the server reads it: trimmed, something before the first `@`, a
/// domain that holds a dot and does not start with one, at most 254 characters.
pub fn email() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!(
            "^[{WHITE_SPACE}]*[^@\\u0000{WHITE_SPACE}][^@\\u0000]*@[^.\\u0000][^\\u0000]*\\.[^\\u0000]*$"
        )))
        .max_length(Some(254))
        .examples(["ada@example.com"])
        .build()
}

/// A new password: 8 to 128 characters with an upper-case and a lower-case ASCII letter,
/// a digit and a character that is none of these.
pub fn new_password() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(
            "^(?=[^\\u0000]*[A-Z])(?=[^\\u0000]*[a-z])(?=[^\\u0000]*[0-9])\
             (?=[^\\u0000]*[^A-Za-z0-9\\u0000])[^\\u0000]{8,128}$",
        ))
        .examples(["Correct-horse-9"])
        .build()
}
