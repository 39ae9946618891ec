//! `GET /status/{job_id}`: Redis first, PostgreSQL on a miss (and the cache
//! repopulated), the owner check on both paths.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::auth::Client;
use super::error::ApiError;
use crate::storage::jobs::JobView;

/// The handler.
pub async fn status(
    State(state): State<AppState>,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = load(&state, client, &id, false).await?;
    Ok(Json(job_json(&job)))
}

/// Finds a client's job: cache, then PostgreSQL. Another client's job is
/// `NotFound`, exactly like an unknown id, so ids reveal nothing.
///
/// With `final_only`, a cached entry counts only if its status can no longer
/// change, for callers that act on the status rather than show it.
pub(super) async fn load(
    state: &AppState,
    client: Uuid,
    id: &str,
    final_only: bool,
) -> Result<JobView, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    if let Ok(Some(job)) = state.cache.get_status(id).await
        && (!final_only || job.status.is_final())
    {
        return owned(job, client);
    }
    let job = state.jobs.get(id).await?.ok_or(ApiError::NotFound)?;
    if job.client_id == client {
        // A final status is the newest there is (only an operator's DLQ
        // replay moves it on): it replaces a stale entry. Any other may be
        // older than a transition a worker wrote through meanwhile: it only
        // fills an empty slot.
        let _ = if job.status.is_final() {
            state.cache.put_status(&job).await
        } else {
            state.cache.fill_status(&job).await
        };
    }
    owned(job, client)
}

fn owned(job: JobView, client: Uuid) -> Result<JobView, ApiError> {
    if job.client_id == client {
        Ok(job)
    } else {
        Err(ApiError::NotFound)
    }
}

/// A job as clients see it, in `POST /generate` and `GET /status` alike.
pub fn job_json(job: &JobView) -> Value {
    let mut body = json!({
        "job_id": job.id,
        "status": job.status,
        "format": job.format,
        "filename": job.filename,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "links": {
            "status": format!("/status/{}", job.id),
            "download": format!("/download/{}", job.id),
        },
    });
    if let Some(object) = body.as_object_mut() {
        if let Some(message) = &job.error {
            object.insert(
                "error".into(),
                json!({ "code": job.error_code, "message": message }),
            );
        }
        if job.cancel_requested && !job.status.is_final() {
            object.insert("cancel_requested".into(), json!(true));
        }
        if let Some(metadata) = &job.metadata {
            object.insert("metadata".into(), metadata.clone());
        }
        if let (Some(size), Some(sha256)) = (job.artifact_size, &job.artifact_sha256) {
            object.insert(
                "artifact".into(),
                json!({ "size": size, "sha256": sha256, "expired": job.artifact_deleted }),
            );
        }
    }
    body
}
