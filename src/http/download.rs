//! `GET /download/{job_id}`: a presigned S3 URL (302, or JSON on request),
//! or the artifact streamed through the service (`?mode=stream`, or always
//! with the filesystem backend).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::Client;
use super::error::ApiError;
use super::status::load;
use crate::storage::blobs::content_disposition;
use crate::storage::cache::CachedUrl;
use crate::storage::jobs::{JobStatus, JobView, artifact_key};

/// `?mode=stream` asks for the bytes instead of a URL.
#[derive(Debug, Deserialize)]
pub struct DownloadParams {
    mode: Option<String>,
}

/// The handler.
pub async fn download(
    State(state): State<AppState>,
    Client(client): Client,
    Path(id): Path<String>,
    Query(params): Query<DownloadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = load(&state, client, &id, true).await?;
    match job.status {
        JobStatus::Done => {}
        JobStatus::Failed => {
            return Err(ApiError::JobFailed {
                code: job.error_code.clone(),
                message: job.error.clone().unwrap_or_else(|| "unknown error".into()),
            });
        }
        JobStatus::Canceled => return Err(ApiError::JobCanceled),
        other => return Err(ApiError::NotReady(other)),
    }
    if job.artifact_deleted {
        return Err(ApiError::Gone);
    }
    let disposition = content_disposition(&job.filename);
    let stream = match params.mode.as_deref() {
        None | Some("url") => false,
        Some("stream") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "unknown mode {other:?}: expected \"stream\" or \"url\""
            )));
        }
    };
    if !stream && let Some(url) = presigned(&state, &job, &disposition).await? {
        let wants_json = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
        if wants_json {
            return Ok(
                Json(json!({ "url": url.url, "expires_at": url.expires_at })).into_response(),
            );
        }
        let location =
            HeaderValue::from_str(&url.url).map_err(|e| ApiError::Internal(e.to_string()))?;
        return Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
    }
    stream_artifact(&state, &job, &disposition).await
}

/// A cached URL, or a fresh one (cached for next time); `None` when the
/// backend cannot presign (filesystem).
async fn presigned(
    state: &AppState,
    job: &JobView,
    disposition: &str,
) -> Result<Option<CachedUrl>, ApiError> {
    if let Ok(Some(url)) = state.cache.get_download_url(job.id).await
        && url.expires_at > Utc::now()
    {
        return Ok(Some(url));
    }
    let key = job_key(job);
    let Some(url) = state
        .blobs
        .presign_get(&key, state.config.presign_ttl, disposition)
        .await?
    else {
        return Ok(None);
    };
    let url = CachedUrl {
        url: url.url,
        expires_at: url.expires_at,
    };
    let _ = state.cache.put_download_url(job.id, &url).await;
    Ok(Some(url))
}

async fn stream_artifact(
    state: &AppState,
    job: &JobView,
    disposition: &str,
) -> Result<Response, ApiError> {
    let blob = state.blobs.get(&job_key(job)).await?;
    let mut response = Response::new(Body::from_stream(blob.stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(job.format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(size) = blob.size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    Ok(response)
}

fn job_key(job: &JobView) -> String {
    job.artifact_key
        .clone()
        .unwrap_or_else(|| artifact_key(job.id, job.format))
}
