//! `DELETE /jobs/{job_id}`: the client cancels its job. `queued` → 200 with
//! the job `canceled`; `processing` → 202 (the worker stops at its next
//! checkpoint); already `done`/`failed` → 409 `job_final`; another client's
//! job → 404 like an unknown id. Repeating it answers as the state warrants.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use metrics::counter;
use uuid::Uuid;

use super::AppState;
use super::auth::Client;
use super::error::ApiError;
use super::status::job_json;
use crate::metrics::JOBS_FINISHED;
use crate::storage::jobs::control::{self, Cancel};

/// The handler.
pub async fn cancel(
    State(state): State<AppState>,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    match control::cancel(state.jobs.pool(), id, client).await? {
        Cancel::Canceled(job) => {
            counter!(JOBS_FINISHED, "format" => job.format.as_str(), "outcome" => "canceled")
                .increment(1);
            let _ = state.cache.put_status(&job).await;
            Ok(Json(job_json(&job)).into_response())
        }
        Cancel::AlreadyCanceled(job) => Ok(Json(job_json(&job)).into_response()),
        Cancel::Requested(job) => {
            // The worker may be writing `canceled` through right now: drop
            // the entry rather than race it with an older `processing`.
            let _ = state.cache.forget_status(job.id).await;
            Ok((StatusCode::ACCEPTED, Json(job_json(&job))).into_response())
        }
        Cancel::Final(job) => Err(ApiError::JobFinal(job.status)),
        Cancel::Missing => Err(ApiError::NotFound),
    }
}
