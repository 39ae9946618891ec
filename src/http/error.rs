//! Every error the API returns, mapped to `application/problem+json`
//! (RFC 9457) in this one place, each with a stable machine-readable `code`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::render::ValidationError;
use crate::storage::blobs::BlobError;
use crate::storage::jobs::{JobError, JobStatus};
use crate::storage::keys::KeyError;

/// What a client is told when a dependency fails: the cause (which can name
/// hosts, buckets or SQL) is logged with the request id instead.
pub const UNAVAILABLE_DETAIL: &str =
    "a dependency of the service is temporarily unavailable; retry shortly";

/// An error as a client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid `Authorization: Bearer <api key>` header is required")]
    Unauthorized,
    #[error("no such job")]
    NotFound,
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unsupported format {0:?}: expected \"xlsx\" or \"pdf\"")]
    UnsupportedFormat(String),
    #[error(
        "an idempotency key is required (body field `idempotency_key` or `Idempotency-Key` header)"
    )]
    IdempotencyKeyRequired,
    #[error("the `Idempotency-Key` header and the body's `idempotency_key` differ")]
    IdempotencyKeyMismatch,
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("this idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this idempotency key is still being processed")]
    RequestInProgress,
    #[error("invalid document: {0}")]
    InvalidDocument(ValidationError),
    #[error("the request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body exceeds the limit of {0} bytes once decompressed")]
    DocumentTooLarge(usize),
    #[error("unsupported Content-Encoding {0:?}: expected gzip, zstd or identity")]
    UnsupportedEncoding(String),
    #[error("the job is {} and has no artifact yet", .0.as_str())]
    NotReady(JobStatus),
    #[error("the job failed: {message}")]
    JobFailed {
        code: Option<String>,
        message: String,
    },
    #[error("the artifact has expired and was deleted")]
    Gone,
    #[error("the job was canceled by its client and has no artifact")]
    JobCanceled,
    #[error("the job is already {} and can no longer be canceled", .0.as_str())]
    JobFinal(JobStatus),
    #[error("too many requests from this client or address; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("this client already has {0} jobs not yet done or failed; retry once some finish")]
    TooManyJobs(u32),
    /// The cause is for the log only; clients get [`UNAVAILABLE_DETAIL`].
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    #[error("too many large requests are being processed; retry shortly")]
    Busy,
    #[error("the request took longer than {0:?}; retry later")]
    Timeout(std::time::Duration),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::UnsupportedFormat(_) => "unsupported_format",
            ApiError::IdempotencyKeyRequired => "idempotency_key_required",
            ApiError::IdempotencyKeyMismatch => "idempotency_key_mismatch",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RequestInProgress => "request_in_progress",
            ApiError::InvalidDocument(_) => "invalid_document",
            ApiError::PayloadTooLarge(_) | ApiError::DocumentTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::NotReady(_) => "not_ready",
            ApiError::JobFailed { .. } => "job_failed",
            ApiError::Gone => "gone",
            ApiError::JobCanceled => "job_canceled",
            ApiError::JobFinal(_) => "job_final",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TooManyJobs(_) => "too_many_jobs",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::Busy => "server_busy",
            ApiError::Timeout(_) => "request_timeout",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::InvalidJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::IdempotencyKeyRequired
            | ApiError::IdempotencyKeyMismatch
            | ApiError::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedFormat(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::InvalidDocument(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RequestInProgress
            | ApiError::NotReady(_)
            | ApiError::JobFailed { .. }
            | ApiError::JobCanceled
            | ApiError::JobFinal(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) | ApiError::DocumentTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Gone => StatusCode::GONE,
            ApiError::RateLimited { .. } | ApiError::TooManyJobs(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) | ApiError::Busy | ApiError::Timeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Members beyond the standard ones, for clients that want the details.
    fn extensions(&self) -> Value {
        match self {
            ApiError::InvalidDocument(e) => {
                json!({ "errors": [{ "path": e.path, "message": e.message }] })
            }
            ApiError::NotReady(status) => json!({ "status": status.as_str() }),
            // Not `status`: that member is the HTTP status code (RFC 9457).
            ApiError::JobFinal(status) => json!({ "job_status": status.as_str() }),
            ApiError::JobFailed { code, .. } => json!({ "status": "failed", "error_code": code }),
            _ => json!({}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            // Never leak internals; they are in the log.
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                "internal error".to_string()
            }
            // Driver and SDK messages name hosts, buckets and queries.
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "dependency unavailable");
                UNAVAILABLE_DETAIL.to_string()
            }
            _ => self.to_string(),
        };
        let mut body = json!({
            "type": format!("urn:artefatos:problem:{}", self.code()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "code": self.code(),
            "detail": detail,
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), self.extensions()) {
            body.extend(extra);
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RequestInProgress
            | ApiError::Unavailable(_)
            | ApiError::Busy
            | ApiError::Timeout(_)
            | ApiError::TooManyJobs(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // RFC 9110 15.5.16: a 415 about a content coding names the accepted ones.
            ApiError::UnsupportedEncoding(_) => {
                headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("gzip, zstd, identity"),
                );
            }
            ApiError::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match &e {
            e if e.is_unavailable() => ApiError::Unavailable(e.to_string()),
            JobError::Refused(cause) => {
                tracing::warn!(%cause, "the database refused a job row");
                ApiError::InvalidRequest(
                    "the request holds text the database cannot store \
                     (such as the character U+0000)"
                        .into(),
                )
            }
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match &e {
            e if e.is_unavailable() => ApiError::Unavailable(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(_) => ApiError::Gone,
            e if e.is_transient() => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}
