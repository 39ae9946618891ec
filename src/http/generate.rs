//! `POST /generate`: validate, then create the job exactly once per
//! (client, idempotency key), following the IETF Idempotency-Key draft.
//!
//! Redis `SET NX` answers the common repeats without touching PostgreSQL;
//! PostgreSQL's unique constraint decides every case Redis cannot (down,
//! flushed, expired), so a duplicate job is impossible either way.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use super::AppState;
use super::auth::Client;
use super::encoding;
use super::error::ApiError;
use super::fingerprint::fingerprint_with_metadata;
use super::status::job_json;
use crate::metrics::{IDEMPOTENT_REPLAYS, JOBS_CREATED};
use crate::render::{self, Format};
use crate::storage::cache::{Holder, Reservation};
use crate::storage::jobs::JobView;
use crate::storage::jobs::create::{Created, NewJob};

/// Longest accepted idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Documents up to this size are validated on the request's own task.
const INLINE_VALIDATION_BYTES: usize = 64 * 1024;
/// Longest accepted filename, in characters (before the extension).
const MAX_FILENAME_CHARS: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest<'a> {
    format: Option<String>,
    idempotency_key: Option<String>,
    filename: Option<String>,
    #[serde(borrow)]
    document: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

/// A slot among the large bodies this process may process at once, held
/// from before the body is read until the response: a large body costs a
/// few times its size in memory (the body, the payload, the buffered
/// members of the fingerprint), so their number is what bounds the API's
/// memory. `None` for a small body, which needs no slot.
pub struct LargeBodySlot {
    permit: Option<OwnedSemaphorePermit>,
}

impl LargeBodySlot {
    /// Whether this request already holds a slot.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }

    /// Keeps `permit` (taken once a compressed body inflated past the
    /// large-body size) until the response, like one taken up front.
    pub fn hold(&mut self, permit: Option<OwnedSemaphorePermit>) {
        if permit.is_some() {
            self.permit = permit;
        }
    }
}

impl FromRequestParts<AppState> for LargeBodySlot {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match length {
            Some(n) if n <= state.config.large_body_bytes => Ok(LargeBodySlot { permit: None }),
            // Too large to be read at all: the body limit answers 413.
            Some(n) if n > state.config.max_body_bytes => Ok(LargeBodySlot { permit: None }),
            // Large, or of unknown length (chunked): it needs a slot. Refused
            // at once rather than queued, so a client's retry lands on
            // another replica or a calmer moment instead of holding a socket.
            _ => state
                .large_bodies
                .clone()
                .try_acquire_owned()
                .map(|permit| LargeBodySlot {
                    permit: Some(permit),
                })
                .map_err(|_| ApiError::Busy),
        }
    }
}

/// The handler: parse, validate, then [`accept`].
pub async fn generate(
    State(state): State<AppState>,
    Client(client): Client,
    mut slot: LargeBodySlot,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.limits.admit(client).await?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(state.config.max_body_bytes),
        _ => ApiError::InvalidRequest(rejection.body_text()),
    })?;
    let body = encoding::decode(&state, &mut slot, &headers, body).await?;
    let request: GenerateRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let key = idempotency_key(&headers, request.idempotency_key.as_deref())?;
    let format_name = request
        .format
        .ok_or_else(|| ApiError::InvalidRequest("`format` is required".into()))?;
    let format: Format = format_name
        .parse()
        .map_err(|_| ApiError::UnsupportedFormat(format_name.clone()))?;
    let document = request
        .document
        .ok_or_else(|| ApiError::InvalidRequest("`document` is required".into()))?;
    let filename = sanitize_filename(request.filename.as_deref().unwrap_or("document"), format);

    // Validation is CPU work proportional to the document: a large one goes
    // off the async workers; a small one is cheaper than the thread hop.
    let limits = state.config.limits;
    let text = document.get().to_string();
    let text = if text.len() <= INLINE_VALIDATION_BYTES {
        render::validate(text.as_bytes(), &limits).map(|_| text)
    } else {
        tokio::task::spawn_blocking(move || {
            render::validate(text.as_bytes(), &limits).map(|_| text)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }
    .map_err(ApiError::InvalidDocument)?;

    let metadata = super::metadata::parse(request.metadata)?;
    let fingerprint = fingerprint_with_metadata(format, &filename, metadata.as_ref(), document);
    let new = NewJob {
        id: Uuid::now_v7(),
        client_id: client,
        idempotency_key: key,
        fingerprint: fingerprint.to_vec(),
        format,
        filename,
        payload: text,
        metadata: metadata.map(|m| serde_json::json!(m)),
    };
    let (job, replayed) = accept(&state, new).await?;
    Ok(respond(&job, replayed))
}

/// Creates the job or finds the one its key already made.
async fn accept(state: &AppState, new: NewJob) -> Result<(JobView, bool), ApiError> {
    let fp_hex = hex::encode(&new.fingerprint);
    let mut reserved = false;
    match state
        .cache
        .reserve_key(new.client_id, &new.idempotency_key, &fp_hex)
        .await
    {
        Ok(Reservation::Reserved) => reserved = true,
        Ok(Reservation::Held(Holder::Job {
            job_id,
            fingerprint,
        })) => {
            if fingerprint != fp_hex {
                return Err(ApiError::IdempotencyKeyReused);
            }
            if let Ok(Some(job)) = state.cache.get_status(job_id).await
                && job.client_id == new.client_id
            {
                return Ok((job, true));
            }
            if let Some(job) = state.jobs.get(job_id).await? {
                return Ok((job, true));
            }
            // The cache names a job PostgreSQL does not have (a namespace
            // reused over a fresh database): trust PostgreSQL, go on.
        }
        Ok(Reservation::Held(Holder::Pending { fingerprint })) => {
            if fingerprint != fp_hex {
                return Err(ApiError::IdempotencyKeyReused);
            }
            return match state
                .jobs
                .find_by_key(new.client_id, &new.idempotency_key)
                .await?
            {
                Some((job, _)) => Ok((job, true)),
                None => Err(ApiError::RequestInProgress),
            };
        }
        // Redis is only a shortcut; PostgreSQL's constraint still guards.
        Err(_) => {}
    }

    let created = match state.jobs.create(new.clone()).await {
        Ok(created) => created,
        Err(e) => {
            if reserved {
                let _ = state
                    .cache
                    .release_key(new.client_id, &new.idempotency_key)
                    .await;
            }
            return Err(e.into());
        }
    };
    match created {
        Created::New(job) => {
            metrics::counter!(JOBS_CREATED, "format" => job.format.as_str()).increment(1);
            state.outbox.notify(job.id, job.format);
            // Best effort, and off the response's path: the job is committed,
            // and until this lands a replay finds it through PostgreSQL and a
            // status read falls back to PostgreSQL too.
            let cache = state.cache.clone();
            let cached = job.clone();
            tokio::spawn(async move {
                let _ = cache
                    .complete_key(
                        new.client_id,
                        &new.idempotency_key,
                        cached.id,
                        &fp_hex,
                        Some(&cached),
                    )
                    .await;
            });
            Ok((job, false))
        }
        Created::Existing { job, fingerprint } => {
            if fingerprint != new.fingerprint {
                return Err(ApiError::IdempotencyKeyReused);
            }
            let _ = state
                .cache
                .complete_key(new.client_id, &new.idempotency_key, job.id, &fp_hex, None)
                .await;
            Ok((job, true))
        }
    }
}

fn respond(job: &JobView, replayed: bool) -> Response {
    if replayed {
        metrics::counter!(IDEMPOTENT_REPLAYS).increment(1);
    }
    let location = format!("/status/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(job_json(job))).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The key from the body or the `Idempotency-Key` header; both must agree.
fn idempotency_key(headers: &HeaderMap, body: Option<&str>) -> Result<String, ApiError> {
    let header = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::InvalidIdempotencyKey("the header is not visible ASCII".into())
        })?),
    };
    let key = match (header, body) {
        (Some(h), Some(b)) if h != b => return Err(ApiError::IdempotencyKeyMismatch),
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => return Err(ApiError::IdempotencyKeyRequired),
    };
    if key.trim().is_empty() {
        return Err(ApiError::IdempotencyKeyRequired);
    }
    // PostgreSQL text cannot hold U+0000, and no other control character
    // belongs in a key a client has to log and retry with.
    if key.chars().any(char::is_control) {
        return Err(ApiError::InvalidIdempotencyKey(
            "control characters are not allowed".into(),
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::InvalidIdempotencyKey(format!(
            "longer than {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(key.to_string())
}

/// A filename safe for a `Content-Disposition` header and any file system:
/// no path, no control characters, bounded length, the format's extension.
pub fn sanitize_filename(name: &str, format: Format) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let ext = format!(".{}", format.as_str());
    let base = base.strip_suffix(&ext).unwrap_or(base);
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '<' | '>' | ':' | '|' | '?' | '*'))
        .take(MAX_FILENAME_CHARS)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let cleaned = if cleaned.is_empty() {
        "document"
    } else {
        cleaned
    };
    format!("{cleaned}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_and_control_characters() {
        assert_eq!(
            sanitize_filename("../../etc/passwd", Format::Pdf),
            "passwd.pdf"
        );
        assert_eq!(
            sanitize_filename("Vendas Q3.xlsx", Format::Xlsx),
            "Vendas Q3.xlsx"
        );
        assert_eq!(sanitize_filename("a\"b\r\nc", Format::Pdf), "abc.pdf");
        assert_eq!(sanitize_filename("  ", Format::Pdf), "document.pdf");
    }
}
