//! One attempt at one job, start to end: expiry check, claim, render on a
//! blocking thread, upload, commit — with the lease renewed all along. The
//! renderer actor runs it; it returns how the delivery must be settled.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use metrics::{counter, histogram};
use ractor::rpc::CallResult;
use tracing::{info, warn};

use crate::metrics::{JOB_ATTEMPTS, JOB_STAGE_DURATION, JOBS_FINISHED};
use crate::render::{self, Format, RenderError};
use crate::storage::blobs::{ArtifactMeta, BlobError, StoredArtifact};
use crate::storage::jobs::lifecycle::{self, Artifact, Claim};
use crate::storage::jobs::{JobError, JobView, artifact_key};

use super::context::Ctx;
use super::ticket::{Settle, Ticket};
use super::uploader::UploaderMsg;

/// How long a delivery waits before looking again when PostgreSQL is down.
const DATABASE_RETRY: Duration = Duration::from_secs(1);
/// Bounds of the wait before a delivery whose job is leased elsewhere looks
/// again: soon enough to ack a duplicate right after the owner commits, and
/// to take over within a second of a dead owner's lease running out.
const MIN_DEFER: Duration = Duration::from_millis(100);
const MAX_DEFER: Duration = Duration::from_secs(1);
/// Longest an upload may take before the attempt counts as failed.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Why an attempt failed, sorted by what happens next.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("render: {0}")]
    Render(#[from] RenderError),
    #[error("storage: {0}")]
    Storage(#[from] BlobError),
    #[error("database: {0}")]
    Database(#[from] JobError),
    #[error("{0}")]
    Internal(String),
}

impl AttemptError {
    /// Retrying the same document can never succeed.
    fn is_permanent(&self) -> bool {
        match self {
            AttemptError::Render(e) => e.is_permanent(),
            AttemptError::Storage(e) => !e.is_transient(),
            AttemptError::Database(_) | AttemptError::Internal(_) => false,
        }
    }

    /// The machine-readable `error_code` shown in `GET /status`.
    fn code(&self) -> &'static str {
        match self {
            AttemptError::Render(RenderError::Invalid(_)) => "invalid_document",
            AttemptError::Render(_) => "render_failed",
            AttemptError::Storage(_) => "storage_failed",
            AttemptError::Database(_) => "database_failed",
            AttemptError::Internal(_) => "worker_failed",
        }
    }
}

/// Runs one attempt of `ticket` and says how to settle its delivery.
///
/// Panics only through the test fault hook; a panic kills the renderer actor
/// and its pool settles the delivery as a failed attempt.
pub(crate) async fn run(ctx: &Ctx, ticket: &Ticket) -> Settle {
    match try_run(ctx, ticket).await {
        Ok(settle) => settle,
        Err(err) => {
            warn!(job_id = %ticket.job_id, error = %err, "database unavailable; retrying the delivery");
            Settle::Defer(DATABASE_RETRY)
        }
    }
}

async fn try_run(ctx: &Ctx, ticket: &Ticket) -> Result<Settle, JobError> {
    let pool = &ctx.pool;
    let owner = ctx.worker_id.as_str();
    let lease = ctx.config.worker.lease;

    if let Some(view) =
        lifecycle::expire_if_stale(pool, ticket.job_id, ctx.config.worker.job_ttl).await?
    {
        finished(ctx, &view, "expired");
        return Ok(Settle::DeadLetter("expired".into()));
    }
    let view = match lifecycle::claim(pool, ticket.job_id, owner, lease).await? {
        Claim::Claimed(view) => view,
        Claim::Finished(_) => return Ok(Settle::Ack),
        Claim::Missing => {
            warn!(job_id = %ticket.job_id, "message for an unknown job; dropped");
            return Ok(Settle::Ack);
        }
        Claim::Leased { until } => {
            let wait = (until - Utc::now()).to_std().unwrap_or_default();
            return Ok(Settle::Defer(wait.clamp(MIN_DEFER, MAX_DEFER)));
        }
    };
    counter!(JOB_ATTEMPTS, "format" => ticket.format.as_str()).increment(1);
    if ticket.attempt == 1 {
        let waited = (view.started_at.unwrap_or_else(Utc::now) - view.created_at)
            .to_std()
            .unwrap_or_default();
        histogram!(JOB_STAGE_DURATION, "stage" => "queue_wait", "format" => ticket.format.as_str())
            .record(waited.as_secs_f64());
    }
    ctx.cache_status(view.clone());

    let work = work(ctx, ticket, &view);
    tokio::pin!(work);
    let mut renew = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    renew.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = renew.tick() => {
                match lifecycle::renew_lease(pool, ticket.job_id, owner, lease).await {
                    Ok(true) => {}
                    Ok(false) => warn!(job_id = %ticket.job_id, "lease lost mid-attempt"),
                    Err(err) => warn!(job_id = %ticket.job_id, error = %err, "lease renewal failed"),
                }
            }
        }
    };

    match outcome {
        Ok(artifact) => {
            match lifecycle::mark_done(pool, ticket.job_id, owner, &artifact).await? {
                Some(view) => finished(ctx, &view, "done"),
                // Lost the lease and someone else committed or holds the job
                // (with its own delivery): this delivery is a duplicate.
                None => info!(job_id = %ticket.job_id, "finished elsewhere; not committing"),
            }
            Ok(Settle::Ack)
        }
        Err(err) if err.is_permanent() => {
            let text = err.to_string();
            if let Some(view) =
                lifecycle::mark_failed(pool, ticket.job_id, owner, &text, err.code()).await?
            {
                finished(ctx, &view, "failed");
            }
            Ok(Settle::DeadLetter(format!("{}: {text}", err.code())))
        }
        Err(err) => {
            let text = err.to_string();
            warn!(job_id = %ticket.job_id, attempt = ticket.attempt, error = %text, "attempt failed");
            failed_attempt(ctx, ticket, &text, err.code()).await?;
            Ok(Settle::Retry)
        }
    }
}

/// Records a retryable failure: the job stays `processing` with its error
/// until the last attempt, which marks it `failed` (its message then goes to
/// the DLQ through the retry chain). Also used when a renderer died.
pub(crate) async fn failed_attempt(
    ctx: &Ctx,
    ticket: &Ticket,
    error: &str,
    code: &str,
) -> Result<(), JobError> {
    let pool = &ctx.pool;
    let owner = ctx.worker_id.as_str();
    if ticket.attempt >= ctx.topology.max_attempts() {
        if let Some(view) = lifecycle::mark_failed(pool, ticket.job_id, owner, error, code).await? {
            finished(ctx, &view, "failed");
        }
    } else if let Some(view) =
        lifecycle::record_attempt_error(pool, ticket.job_id, owner, error, code).await?
    {
        ctx.cache_status(view);
    }
    Ok(())
}

fn finished(ctx: &Ctx, view: &JobView, outcome: &'static str) {
    counter!(JOBS_FINISHED, "format" => view.format.as_str(), "outcome" => outcome).increment(1);
    ctx.cache_status(view.clone());
}

/// Render then upload; the artifact is durable when this returns `Ok`.
async fn work(ctx: &Ctx, ticket: &Ticket, view: &JobView) -> Result<Artifact, AttemptError> {
    let payload = lifecycle::payload(&ctx.pool, ticket.job_id).await?;
    fault::maybe_panic(&payload);
    let dir = tempfile::Builder::new()
        .prefix("artefatos-")
        .tempdir()
        .map_err(|e| AttemptError::Internal(format!("temporary directory: {e}")))?;
    let out = dir
        .path()
        .join(format!("{}.{}", ticket.job_id, ticket.format.as_str()));

    let started = Instant::now();
    render_blocking(ctx, ticket.format, payload, out.clone()).await?;
    histogram!(JOB_STAGE_DURATION, "stage" => "render", "format" => ticket.format.as_str())
        .record(started.elapsed().as_secs_f64());

    let key = artifact_key(ticket.job_id, ticket.format);
    let meta = ArtifactMeta {
        content_type: ticket.format.content_type().to_string(),
        content_disposition: crate::storage::blobs::content_disposition(&view.filename),
    };
    let started = Instant::now();
    let stored = upload(ctx, &key, &out, meta).await?;
    histogram!(JOB_STAGE_DURATION, "stage" => "upload", "format" => ticket.format.as_str())
        .record(started.elapsed().as_secs_f64());
    drop(dir);
    Ok(Artifact {
        key,
        size: i64::try_from(stored.size).unwrap_or(i64::MAX),
        sha256: stored.sha256,
    })
}

/// Renders on a blocking thread so no actor's mailbox or runtime worker
/// stalls; a panic inside the renderer is re-raised here, in the actor.
async fn render_blocking(
    ctx: &Ctx,
    format: Format,
    payload: String,
    out: PathBuf,
) -> Result<(), AttemptError> {
    let (limits, timeout) = (ctx.config.limits, ctx.config.worker.render_timeout);
    let joined = tokio::task::spawn_blocking(move || {
        // The payload is already in memory: the slice path skips the reader
        // (and, for PDF, the temp-file copy its second pass would need).
        render::render_slice(format, payload.as_bytes(), &limits, &out, Some(timeout)).map(|_| ())
    })
    .await;
    match joined {
        Ok(result) => Ok(result?),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(AttemptError::Internal(format!("render task: {err}"))),
    }
}

async fn upload(
    ctx: &Ctx,
    key: &str,
    path: &Path,
    meta: ArtifactMeta,
) -> Result<StoredArtifact, AttemptError> {
    let uploader = ctx
        .peers
        .uploader()
        .ok_or_else(|| AttemptError::Internal("uploader not running".into()))?;
    let (key, path) = (key.to_string(), path.to_path_buf());
    match uploader
        .call(
            |reply| UploaderMsg::Put {
                key,
                path,
                meta,
                reply,
            },
            Some(UPLOAD_TIMEOUT),
        )
        .await
    {
        Ok(CallResult::Success(result)) => Ok(result?),
        Ok(CallResult::Timeout) => Err(AttemptError::Internal(format!(
            "upload not finished within {UPLOAD_TIMEOUT:?}"
        ))),
        Ok(CallResult::SenderError) | Err(_) => Err(AttemptError::Internal(
            "uploader stopped during the upload".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::ValidationError;

    #[test]
    fn data_errors_fail_at_once_and_outages_are_retried() {
        let invalid = AttemptError::Render(RenderError::Invalid(ValidationError {
            path: "sheets[0].rows".into(),
            message: "too many rows".into(),
        }));
        assert!(invalid.is_permanent());
        assert_eq!(invalid.code(), "invalid_document");

        let outage = AttemptError::Storage(BlobError::Unavailable("refused".into()));
        assert!(!outage.is_permanent());
        assert_eq!(outage.code(), "storage_failed");

        let denied = AttemptError::Storage(BlobError::Other("access denied".into()));
        assert!(denied.is_permanent(), "repeating cannot change the answer");

        let disk = AttemptError::Render(RenderError::Io(std::io::Error::other("disk full")));
        assert!(!disk.is_permanent());
        assert!(!AttemptError::Internal("uploader stopped".into()).is_permanent());
    }
}

/// The test-only renderer fault hook (feature `fault-injection`): a document
/// whose title contains `fault:panic-once:<token>` panics the renderer actor
/// the first time this process sees that token, so tests can watch a crashed
/// actor restart and its job be retried.
#[cfg(feature = "fault-injection")]
mod fault {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    pub fn maybe_panic(payload: &str) {
        const MARK: &str = "fault:panic-once:";
        let Some(start) = payload.find(MARK) else {
            return;
        };
        let token: String = payload[start + MARK.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        static FIRED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
        let first = FIRED
            .get_or_init(Default::default)
            .lock()
            .map(|mut fired| fired.insert(token.clone()))
            .unwrap_or(false);
        if first {
            panic!("injected renderer fault {token}");
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod fault {
    #[inline(always)]
    pub fn maybe_panic(_payload: &str) {}
}
