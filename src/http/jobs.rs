//! `GET /jobs?status=&limit=&cursor=`: the caller's jobs, newest first, a
//! page at a time (keyset on `(created_at, id)`, so jobs created meanwhile
//! never shift a page), each as `GET /status` shows it.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Client;
use super::error::ApiError;
use super::status::job_json;
use crate::storage::jobs::JobStatus;
use crate::storage::jobs::control::{self, Cursor};

/// Page size when the client names none.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page a client may ask for.
pub const MAX_LIMIT: i64 = 200;

/// The query string; everything optional.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The handler.
pub async fn list(
    State(state): State<AppState>,
    Client(client): Client,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let status = params
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).map_err(|_| {
                ApiError::InvalidRequest(format!(
                    "unknown status {s:?}: expected queued, processing, done, failed or canceled"
                ))
            })
        })
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"
                ))
            })?,
    };
    let after = params
        .cursor
        .as_deref()
        .map(|text| {
            Cursor::decode(text).ok_or_else(|| {
                ApiError::InvalidRequest("cursor is not one this API returned".into())
            })
        })
        .transpose()?;
    // One row more than the page says whether another page follows.
    let mut jobs = control::list(state.jobs.pool(), client, status, after, limit + 1).await?;
    let more = jobs.len() as i64 > limit;
    jobs.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if more {
        jobs.last().map(|job| Cursor::after(job).encode())
    } else {
        None
    };
    Ok(Json(json!({
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}
