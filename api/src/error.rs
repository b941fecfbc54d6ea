//! One error type for every handler, rendered as `application/problem+json` (RFC 9457).
//!
//! The status is decided by the variant. A 5xx never shows its cause to the client; the
//! cause is logged once, here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use omoi_domain::common::{DomainError, ErrorKind};
use omoi_store::bus::{PairError, Refusal as ScopeRefusal};
use omoi_store::CommandError;
use omoi_workflow::admission::{AdmissionError, Refusal};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:omoi:problem:<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    pub status: u16,
    /// What exactly was wrong with this request.
    pub detail: String,
    /// The request field that was wrong, when one field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A stable machine-readable code for the rule that refused the request.
    pub code: String,
}

/// Everything a handler can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request could not be read (malformed JSON, bad path or query value).
    BadRequest {
        detail: String,
        field: Option<String>,
    },
    /// 401: no credential, or one that is invalid, expired or revoked.
    Unauthorized { detail: &'static str },
    /// 403: the caller sees the resource but its role lacks the permission.
    Forbidden { permission: &'static str },
    /// 403: the role has the permission, but a rule about who may do what to whom refuses
    /// this use of it (granting a role above one's own, changing one's own role, touching
    /// a member of a higher role); `code` names the rule.
    Denied { code: &'static str, detail: String },
    /// 429: too many attempts; retry after the given seconds.
    TooManyRequests {
        detail: &'static str,
        retry_after_seconds: u32,
    },
    /// 413: the body is larger than the limit.
    PayloadTooLarge { limit: usize },
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 422: well-formed input that breaks a rule.
    Invalid {
        code: &'static str,
        detail: String,
        field: Option<String>,
    },
    /// 404: the resource does not exist (or is not visible to the caller).
    NotFound { what: &'static str },
    /// 409: the current state forbids the request.
    Conflict { code: &'static str, detail: String },
    /// 402: the organization's plan does not allow it; `detail` says which limit and how
    /// to lift it.
    PaymentRequired { code: &'static str, detail: String },
    /// Another status with its own code: a refused webhook delivery (400, 401), a
    /// delivery to retry later (503), Stripe refusing or unreachable (502/503), an event
    /// past the end of a history (404).
    Status {
        status: StatusCode,
        code: &'static str,
        detail: String,
    },
    /// 503 without `Retry-After`: this server is not set up for the request (billing
    /// without a Stripe key). Retrying will not help until an operator configures it, so
    /// no time to retry is named.
    NotConfigured { code: &'static str, detail: String },
    /// 503: the database cannot be reached; retry later.
    Unavailable(String),
    /// 503 `busy`: a resource shared by all clients (password hashing) is saturated;
    /// retry after the given seconds.
    Overloaded {
        detail: &'static str,
        retry_after_seconds: u32,
    },
    /// 500: a bug. The cause is logged, not shown.
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad_request(detail: impl Into<String>, field: Option<&str>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            field: field.map(str::to_string),
        }
    }

    pub fn invalid(code: &'static str, field: &str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            detail: detail.into(),
            field: Some(field.to_string()),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } | Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PaymentRequired { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::Status { status, .. } => *status,
            Self::NotConfigured { .. } | Self::Unavailable(_) | Self::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(self) -> Problem {
        let status = self.status();
        let (code, detail, field) = match self {
            Self::BadRequest { detail, field } => ("bad_request", detail, field),
            Self::Unauthorized { detail } => ("unauthorized", detail.to_string(), None),
            Self::Forbidden { permission } => (
                "forbidden",
                format!("your role does not grant `{permission}` here"),
                None,
            ),
            Self::Denied { code, detail } => (code, detail, None),
            Self::TooManyRequests { detail, .. } => ("too_many_requests", detail.to_string(), None),
            Self::PayloadTooLarge { limit } => (
                "payload_too_large",
                format!("the request body is larger than {limit} bytes"),
                None,
            ),
            Self::UnsupportedMediaType => (
                "unsupported_media_type",
                "the request body must be JSON (Content-Type: application/json)".to_string(),
                None,
            ),
            Self::Invalid {
                code,
                detail,
                field,
            } => (code, detail, field),
            Self::NotFound { what } => ("not_found", format!("{what} not found"), None),
            Self::Conflict { code, detail } => (code, detail, None),
            Self::PaymentRequired { code, detail } => (code, detail, None),
            Self::Status { code, detail, .. } | Self::NotConfigured { code, detail } => {
                (code, detail, None)
            }
            Self::Overloaded { detail, .. } => ("busy", detail.to_string(), None),
            Self::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                (
                    "unavailable",
                    "the database is unavailable; retry shortly".to_string(),
                    None,
                )
            }
            Self::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    "internal",
                    "an internal error occurred; it has been logged".to_string(),
                    None,
                )
            }
        };
        Problem {
            kind: format!("urn:omoi:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            field,
            code: code.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            Self::Unavailable(_) => Some(2),
            Self::TooManyRequests {
                retry_after_seconds,
                ..
            }
            | Self::Overloaded {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            Self::NotConfigured { .. } => None,
            // Every other 429 and 503 (too many sockets, Stripe out of reach, …) says when
            // to try again too, as the API document promises for each: 2 s, as for the
            // database.
            _ if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) =>
            {
                Some(2)
            }
            _ => None,
        };
        let challenge = matches!(self, Self::Unauthorized { .. });
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl<E: DomainError> From<CommandError<E>> for ApiError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Domain(e) => Self::from_domain(&e),
            CommandError::Refused(ScopeRefusal::NotVisible) => Self::NotFound { what: "resource" },
            CommandError::Refused(ScopeRefusal::NotPermitted) => Self::Forbidden {
                permission: "this action",
            },
            CommandError::Conflict { attempts } => Self::Conflict {
                code: "concurrent_modification",
                detail: format!(
                    "the resource kept changing concurrently ({attempts} attempts); try again"
                ),
            },
            CommandError::Unavailable(cause) => Self::Unavailable(cause),
            CommandError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<AdmissionError> for ApiError {
    fn from(error: AdmissionError) -> Self {
        let refusal = match error {
            AdmissionError::Refused(refusal) => refusal,
            AdmissionError::Database(e) => return Self::from(e),
            AdmissionError::Unavailable(cause) => return Self::Unavailable(cause),
            AdmissionError::Internal(cause) => return Self::Internal(cause),
        };
        let detail = refusal.to_string();
        match refusal {
            Refusal::DependencyNotFound(_) => Self::Status {
                status: StatusCode::NOT_FOUND,
                code: "dependency_not_found",
                detail,
            },
            Refusal::SpecNotFound(_) => Self::NotFound { what: "spec" },
            Refusal::SpecInOtherProject(_) => {
                Self::invalid("spec_in_other_project", "spec_id", detail)
            }
            Refusal::ProjectArchived(_) => Self::Conflict {
                code: "project_archived",
                detail,
            },
            Refusal::TicketDone(_) => Self::Conflict {
                code: "ticket_done",
                detail,
            },
            Refusal::SpecArchived(_) => Self::Conflict {
                code: "spec_archived",
                detail,
            },
            Refusal::DependencyInOtherProject(_) => Self::Conflict {
                code: "dependency_in_other_project",
                detail,
            },
            Refusal::Cycle(_) => Self::Conflict {
                code: "dependency_cycle",
                detail,
            },
            Refusal::GraphTooLarge => Self::Conflict {
                code: "dependency_graph_too_large",
                detail,
            },
        }
    }
}

impl<EA: DomainError, EB: DomainError> From<PairError<EA, EB>> for ApiError {
    fn from(error: PairError<EA, EB>) -> Self {
        match error {
            PairError::First(error) => Self::from(error),
            PairError::Second(error) => Self::from(error),
            PairError::Conflict { attempts } => {
                Self::from(CommandError::<EA>::Conflict { attempts })
            }
            PairError::Unavailable(cause) => Self::Unavailable(cause),
            PairError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl ApiError {
    /// Maps a domain refusal by its kind: 404, 409, 422, 402 or 403.
    pub fn from_domain<E: DomainError>(error: &E) -> Self {
        let detail = error.to_string();
        match error.kind() {
            ErrorKind::NotFound => Self::NotFound {
                what: entity_of(error.code()),
            },
            ErrorKind::Conflict => Self::Conflict {
                code: error.code(),
                detail,
            },
            ErrorKind::Invalid => Self::Invalid {
                code: error.code(),
                detail,
                field: error.field_path(),
            },
            ErrorKind::PaymentRequired => Self::PaymentRequired {
                code: error.code(),
                detail,
            },
            ErrorKind::Forbidden => Self::Denied {
                code: error.code(),
                detail,
            },
        }
    }
}

/// `ticket_not_found` → `ticket`.
fn entity_of(code: &'static str) -> &'static str {
    code.strip_suffix("_not_found").unwrap_or("resource")
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match omoi_store::db::is_unavailable(&error) {
            true => Self::Unavailable(error.to_string()),
            false => Self::Internal(error.to_string()),
        }
    }
}
