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
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_) => {
                ApiError::PayloadTooLarge { limit: BODY_LIMIT }
            }
            other => ApiError::bad_request(other.body_text(), None),
        })?;
        parse_json(&bytes).map(Body)
    }
}

/// Deserializes `bytes`, naming the offending field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            // Not JSON at all: no field is to blame.
            return ApiError::bad_request(format!("the body is not valid JSON: {inner}"), None);
        }
        let field = (path != ".").then_some(path);
        let detail = format!("the body does not match the expected shape: {inner}");
        ApiError::BadRequest { detail, field }
    })?;
    deserializer.end().map_err(|e| {
        ApiError::bad_request(format!("trailing data after the JSON body: {e}"), None)
    })?;
    refuse_nul_in_json(bytes)?;
    Ok(value)
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
