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
    Ok(value)
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
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| ApiError::bad_request(e.body_text(), None))
    }
}
