//! Extractors whose rejections are our [`ApiError`], so that every malformed request gets
//! a problem document naming what was wrong.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 256 * 1024;

/// A JSON body. Unknown fields, wrong types and missing fields are refused with a 400 that
/// names the field (`serde_path_to_error`).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(Body)
    }
}

/// The body as it came, within [`BODY_LIMIT`]: for a route that reads it itself (a
/// signed webhook), refused as [`Body`] refuses it (413 past the limit).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| match e {
                BytesRejection::FailedToBufferBody(_) => {
                    ApiError::PayloadTooLarge { limit: BODY_LIMIT }
                }
                other => ApiError::bad_request(other.body_text(), None),
            })
    }
}

/// Deserializes `bytes`, naming the offending field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer);
    let value = match parsed {
        Ok(value) => {
            deserializer.end().map_err(|e| {
                ApiError::bad_request(format!("trailing data after the JSON body: {e}"), None)
            })?;
            value
        }
        Err(e) if e.inner().is_syntax() || e.inner().is_eof() => {
            // Not JSON at all: no field is to blame.
            let inner = e.into_inner();
            return Err(ApiError::bad_request(
                format!("the body is not valid JSON: {inner}"),
                None,
            ));
        }
        Err(e) => with_integral_numbers(bytes).ok_or_else(|| shape_error(e))?,
    };
    refuse_nul_in_json(bytes)?;
    Ok(value)
}

fn shape_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let field = (path != ".").then_some(path);
    let detail = format!(
        "the body does not match the expected shape: {}",
        error.into_inner()
    );
    ApiError::BadRequest { detail, field }
}

/// The body read again with every integral number written as a fraction (`3.0`, `1e3`)
/// taken as the integer it is: JSON does not tell them apart (nor does JSON Schema's
/// `integer`), but serde refuses a float where it expects an integer. Only tried once the
/// strict read failed, so that the common body is parsed once.
fn with_integral_numbers<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    fn integral(value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::Number(number) if number.is_f64() => {
                let float = number.as_f64().unwrap_or(f64::NAN);
                // Within ±2^53 a float holds integers exactly; beyond, it is no count.
                let exact = float.fract() == 0.0 && float.abs() <= 9_007_199_254_740_992.0;
                if exact {
                    *value = Value::from(float as i64);
                }
                exact
            }
            Value::Array(items) => items.iter_mut().fold(false, |any, v| integral(v) | any),
            Value::Object(fields) => fields.values_mut().fold(false, |any, v| integral(v) | any),
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if !integral(&mut value) {
        return None;
    }
    serde_path_to_error::deserialize(value).ok()
}

/// PostgreSQL cannot store U+0000 in text or `jsonb`: a body carrying one is refused here,
/// naming the field, instead of failing at the append. In JSON the character can only
/// arrive escaped, so bodies without `\u0000` are not looked at twice.
fn refuse_nul_in_json(bytes: &[u8]) -> Result<(), ApiError> {
    const ESCAPED_NUL: &[u8] = b"\\u0000";
    if !bytes.windows(ESCAPED_NUL.len()).any(|w| w == ESCAPED_NUL) {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}"), None))?;
    match nul_path(&value, String::new()) {
        Some(field) => Err(nul_refused(&field)),
        None => Ok(()),
    }
}

/// The path (`.a.b[2]`) of the first key or string holding U+0000.
fn nul_path(value: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0').then_some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item, format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let here = format!("{path}.{key}");
            if key.contains('\0') {
                Some(here)
            } else {
                nul_path(item, here)
            }
        }),
        _ => None,
    }
}

fn nul_refused(field: &str) -> ApiError {
    ApiError::invalid(
        "nul_character",
        field.trim_start_matches('.'),
        "text may not contain the NUL character (U+0000)",
    )
}

/// The first query parameter whose value holds U+0000 (sent as `%00`).
fn parameter_with_nul(query: &str) -> Option<String> {
    query
        .split('&')
        .find(|pair| pair.contains("%00"))
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            name.replace("%00", "")
        })
}

/// The header an agent's step names its assignment by: the `assigned_at` its claim
/// answered ([`Assignment`]).
pub const ASSIGNMENT_HEADER: &str = "omoi-assignment";

/// The assignment a step of an agent is for (`Omoi-Assignment`, an RFC 3339 time: the
/// `assigned_at` its claim answered), when it names one: the step is then refused once the
/// task was assigned again, also to the same agent (`TaskCommand::AsHolder`).
pub struct Assignment(pub Option<chrono::DateTime<chrono::Utc>>);

impl<S: Send + Sync> FromRequestParts<S> for Assignment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(ASSIGNMENT_HEADER) else {
            return Ok(Self(None));
        };
        value
            .to_str()
            .ok()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
            .map(|at| Self(Some(at.with_timezone(&chrono::Utc))))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "Omoi-Assignment must be the assigned_at the claim answered (RFC 3339)",
                    Some("Omoi-Assignment"),
                )
            })
    }
}

/// A path holding one id, e.g. `/api/v1/tickets/{id}`.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(e.body_text(), None))?;
        raw.parse::<Uuid>()
            .map(IdPath)
            .map_err(|_| ApiError::bad_request(format!("{raw:?} is not a UUID"), Some("id")))
    }
}

/// Query parameters, refused with a 400 that says which parameter was wrong.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(name) = parameter_with_nul(parts.uri.query().unwrap_or_default()) {
            return Err(nul_refused(&name));
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| ApiError::bad_request(e.body_text(), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Counts {
        capacity: u32,
        retries: Vec<u8>,
    }

    fn field_of(error: ApiError) -> Option<String> {
        match error {
            ApiError::BadRequest { field, .. } => field,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn an_integral_number_written_as_a_fraction_is_that_integer() {
        let counts: Counts =
            parse_json(br#"{"capacity": 4.0, "retries": [1e1, 2]}"#).expect("integral numbers");
        assert_eq!(
            counts,
            Counts {
                capacity: 4,
                retries: vec![10, 2]
            }
        );
    }

    #[test]
    fn a_fraction_or_an_out_of_range_number_is_refused_naming_its_field() {
        let fraction = parse_json::<Counts>(br#"{"capacity": 4.5, "retries": []}"#);
        assert_eq!(
            field_of(fraction.expect_err("4.5")),
            Some("capacity".into())
        );
        let too_large = parse_json::<Counts>(br#"{"capacity": 1, "retries": [256.0]}"#);
        assert_eq!(
            field_of(too_large.expect_err("256")),
            Some("retries[0]".into())
        );
        let not_json = parse_json::<Counts>(br#"{"capacity": "#);
        assert_eq!(field_of(not_json.expect_err("not JSON")), None);
    }
}
