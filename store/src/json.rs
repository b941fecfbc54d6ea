//! An event's payload and metadata as the log hands them over: their JSON text, decoded
//! straight into the type a reader wants.
//!
//! Reading a `jsonb` column into a [`serde_json::Value`] builds a tree (a map, its keys,
//! its strings) that every reader then walks again into its own type and drops: in a
//! rebuild that was the largest part of the client's time (`perf`). The text is kept
//! instead — copied once — and each reader decodes from it. Written out (the API, the
//! live streams) it is passed through as it is.
//!
//! Text read from a `jsonb` column is JSON by that type's guarantee and is not parsed on
//! the way in: checking it as a `RawValue` took a tenth of a rebuild's client time
//! (`perf` of `omoi-bench bench-projections --only board,graph`). Text from anywhere else
//! is checked when it is made; all of it is checked again where it is written out, which
//! is the only place serde_json wants a `RawValue`.

use std::fmt;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// A JSON document kept as its text.
#[derive(Clone)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The document as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.get())
    }

    /// The document as a tree: for callers that look around in it (tests, the CLI).
    pub fn to_value(&self) -> Value {
        // The text was checked to be JSON when this was made.
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }

    /// `value` written as JSON.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(value).map(Self::from)
    }

    /// `text` if it is one JSON document.
    pub fn from_text(text: String) -> serde_json::Result<Self> {
        RawValue::from_string(text).map(Self::from)
    }

    /// The text of a `jsonb` value as PostgreSQL wrote it out: JSON by the type's own
    /// guarantee, so not parsed here (see the module's documentation).
    pub(crate) fn from_jsonb(text: &str) -> Self {
        Self(text.into())
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> Self {
        // A tree always writes out as JSON: the error cannot happen.
        Self::encode(&value).unwrap_or_else(|_| Self::from(RawValue::NULL.to_owned()))
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw.into())
    }
}

/// The same text; `jsonb` writes equal documents out the same way.
impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Borrowed: checked, not copied.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self::from)
    }
}

/// An event's metadata: its text, and the fields readers ask for, read from it once by
/// the first that asks (a page of the log is shared by every build of a process) — or,
/// read from the log as some of its fields alone ([`Metadata::from_fields`]), those
/// fields, its text then the object of them.
#[derive(Clone)]
pub struct Metadata {
    /// At least one of the two is set.
    raw: OnceLock<RawJson>,
    fields: OnceLock<MetadataFields>,
    /// When only some fields were read ([`Metadata::from_fields`]), which (one bit per
    /// field): asking for another is a reader's mistake — it would read as absent, not as
    /// what the log holds — and fails a debug build.
    read: Option<u8>,
}

/// The fields the command bus writes. Every value it writes is a string; a field that is
/// missing or not a string reads as absent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct MetadataFields {
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    organization_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    project_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    actor: Option<String>,
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    correlation_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    causation_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    occurred_at: Option<String>,
}

/// A field of an event's metadata that [`Metadata`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataField {
    OrganizationId,
    ProjectId,
    Actor,
    CorrelationId,
    CausationId,
    OccurredAt,
}

impl MetadataField {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Its key in the metadata's object (as [`MetadataFields`] names it).
    pub fn key(self) -> &'static str {
        match self {
            Self::OrganizationId => "organization_id",
            Self::ProjectId => "project_id",
            Self::Actor => "actor",
            Self::CorrelationId => "correlation_id",
            Self::CausationId => "causation_id",
            Self::OccurredAt => "occurred_at",
        }
    }
}

impl MetadataFields {
    fn field(&mut self, field: MetadataField) -> &mut Option<String> {
        match field {
            MetadataField::OrganizationId => &mut self.organization_id,
            MetadataField::ProjectId => &mut self.project_id,
            MetadataField::Actor => &mut self.actor,
            MetadataField::CorrelationId => &mut self.correlation_id,
            MetadataField::CausationId => &mut self.causation_id,
            MetadataField::OccurredAt => &mut self.occurred_at,
        }
    }
}

/// A string as itself, any other value as absent.
fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => Some(text),
        _ => None,
    })
}

impl Metadata {
    /// Metadata of which only some fields were read, with their values: its text is the
    /// object of those present.
    pub fn from_fields(read: impl IntoIterator<Item = (MetadataField, Option<String>)>) -> Self {
        let (mut fields, mut asked) = (MetadataFields::default(), 0);
        for (field, value) in read {
            *fields.field(field) = value;
            asked |= field.bit();
        }
        Self {
            raw: OnceLock::new(),
            fields: OnceLock::from(fields),
            read: Some(asked),
        }
    }

    /// This metadata as a reader of only `fields` gets it from the log (what
    /// [`Metadata::from_fields`] makes of their values).
    pub fn only(&self, fields: &[MetadataField]) -> Self {
        Self::from_fields(
            fields
                .iter()
                .map(|&field| (field, self.field(field).map(str::to_string))),
        )
    }

    /// One of its fields.
    pub fn field(&self, field: MetadataField) -> Option<&str> {
        debug_assert!(
            self.read.is_none_or(|read| read & field.bit() != 0),
            "{field:?} was not read from the log: name it in the reader's columns"
        );
        let fields = self.fields();
        let value = match field {
            MetadataField::OrganizationId => &fields.organization_id,
            MetadataField::ProjectId => &fields.project_id,
            MetadataField::Actor => &fields.actor,
            MetadataField::CorrelationId => &fields.correlation_id,
            MetadataField::CausationId => &fields.causation_id,
            MetadataField::OccurredAt => &fields.occurred_at,
        };
        value.as_deref()
    }

    fn fields(&self) -> &MetadataFields {
        self.fields.get_or_init(|| {
            self.raw
                .get()
                .and_then(|raw| raw.decode().ok())
                .unwrap_or_default()
        })
    }

    /// The metadata as written, or the object of the fields read.
    pub fn raw(&self) -> &RawJson {
        self.raw.get_or_init(|| {
            let fields = self.fields.get().cloned().unwrap_or_default();
            RawJson::from(serde_json::to_value(fields).unwrap_or(Value::Null))
        })
    }

    pub fn organization_id(&self) -> Option<&str> {
        self.field(MetadataField::OrganizationId)
    }

    pub fn project_id(&self) -> Option<&str> {
        self.field(MetadataField::ProjectId)
    }

    /// Who caused it: `user:<id>`, `agent:<id>`, `api_key:<id>`, `system:<name>`, `stripe`.
    pub fn actor(&self) -> Option<&str> {
        self.field(MetadataField::Actor)
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.field(MetadataField::CorrelationId)
    }

    /// The event that caused this one's command, as `<aggregate type>/<id>/<sequence>`.
    pub fn causation_id(&self) -> Option<&str> {
        self.field(MetadataField::CausationId)
    }

    /// When the command bus recorded it (RFC 3339).
    pub fn occurred_at(&self) -> Option<&str> {
        self.field(MetadataField::OccurredAt)
    }

    /// The metadata as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        self.raw().decode()
    }

    /// The metadata as a tree (tests, the CLI).
    pub fn to_value(&self) -> Value {
        self.raw().to_value()
    }
}

impl From<RawJson> for Metadata {
    fn from(raw: RawJson) -> Self {
        Self {
            raw: OnceLock::from(raw),
            fields: OnceLock::new(),
            read: None,
        }
    }
}

impl From<Value> for Metadata {
    fn from(value: Value) -> Self {
        RawJson::from(value).into()
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.raw() == other.raw()
    }
}

impl Eq for Metadata {}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw().fmt(f)
    }
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw().fmt(f)
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawJson::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_document_keeps_its_text_and_decodes_into_any_type() {
        let raw =
            RawJson::from_text(r#"{"TicketCreated": {"title": "a \"b\""}}"#.into()).expect("json");
        assert_eq!(raw.get(), r#"{"TicketCreated": {"title": "a \"b\""}}"#);
        assert_eq!(
            raw.to_value(),
            json!({"TicketCreated": {"title": "a \"b\""}})
        );
        let written = serde_json::to_string(&json!({"payload": &raw})).expect("write");
        assert_eq!(
            written,
            r#"{"payload":{"TicketCreated":{"title":"a \"b\""}}}"#
        );
        assert!(RawJson::from_text("{".into()).is_err());
        assert!(raw.decode::<Vec<u8>>().is_err());
    }

    /// Text taken from a `jsonb` column is kept as it is, not parsed on the way in, and
    /// checked where it is written out: a text that is not JSON never reaches a client.
    #[test]
    fn jsonb_text_is_written_out_as_it_is_and_checked_there() {
        #[derive(Serialize)]
        struct Page<'a> {
            payload: &'a RawJson,
        }
        let raw = RawJson::from_jsonb(r#"{"note": "tab\t, é", "n": [1, 2.5]}"#);
        assert_eq!(
            serde_json::to_string(&Page { payload: &raw }).expect("write"),
            r#"{"payload":{"note": "tab\t, é", "n": [1, 2.5]}}"#
        );
        let broken = RawJson::from_jsonb("{");
        assert!(serde_json::to_string(&Page { payload: &broken }).is_err());
    }

    #[test]
    fn metadata_fields_are_strings_or_absent() {
        let metadata = Metadata::from(json!({
            "organization_id": "o",
            "actor": "system:plan_execution",
            "causation_id": null,
            "project_id": 7,
            "other": {"nested": ["x"]},
        }));
        assert_eq!(metadata.organization_id(), Some("o"));
        assert_eq!(metadata.actor(), Some("system:plan_execution"));
        assert_eq!(metadata.causation_id(), None);
        assert_eq!(metadata.project_id(), None);
        assert_eq!(metadata.occurred_at(), None);
        assert_eq!(metadata.to_value()["other"]["nested"][0], "x");
        let not_an_object = Metadata::from(json!([1, 2]));
        assert_eq!(not_an_object.actor(), None);
    }

    #[test]
    fn metadata_read_as_some_fields_holds_those_and_nothing_else() {
        let whole = Metadata::from(json!({
            "organization_id": "o", "project_id": "p", "actor": "user:1",
            "correlation_id": "c", "request_id": "r"
        }));
        let some = whole.only(&[MetadataField::Actor, MetadataField::ProjectId]);
        assert_eq!(some.actor(), Some("user:1"));
        assert_eq!(some.project_id(), Some("p"));
        assert_eq!(
            some.to_value(),
            json!({"project_id": "p", "actor": "user:1"})
        );
        assert_eq!(
            some,
            Metadata::from(json!({"actor": "user:1", "project_id": "p"}))
        );
        let none = whole.only(&[]);
        assert_eq!(none.to_value(), json!({}));
        let asked_absent = Metadata::from_fields([(MetadataField::CausationId, None)]);
        assert_eq!(asked_absent.causation_id(), None);
        assert_eq!(asked_absent.to_string(), "{}");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "Actor was not read from the log")]
    fn asking_metadata_for_a_field_not_read_fails_a_debug_build() {
        let some = Metadata::from(json!({"actor": "user:1", "project_id": "p"}))
            .only(&[MetadataField::ProjectId]);
        let _ = some.actor();
    }
}
