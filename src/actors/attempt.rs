//! One attempt at one job, start to end, as a task of its pool: claim (group
//! commit) → document → render (waits for a renderer) → upload (uploader) →
//! `done` (group commit), with the lease renewed all along. Between the render
//! and the upload of a big document, the attempt checks whether its client
//! canceled the job. Returns how the delivery must be settled.
//!
//! Only the render holds a renderer; everything else is waiting, and any
//! number of attempts wait at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use metrics::{counter, histogram};
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tracing::{info, warn};

use crate::metrics::{JOB_ATTEMPTS, JOB_STAGE_DURATION, JOBS_FINISHED};
use crate::render::RenderError;
use crate::storage::blobs::{ArtifactMeta, BlobError, StoredArtifact};
use crate::storage::jobs::control;
use crate::storage::jobs::lifecycle::{self, Artifact, Claim};
use crate::storage::jobs::{JobError, JobView, artifact_key};

use super::context::Ctx;
use super::protocol::{PoolMsg, RenderJob, Rendered, Settle, Ticket, UploaderMsg};

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
    /// The lease renewal found the job taken over: another worker owns it
    /// now, with a delivery of its own, and this attempt must store nothing.
    #[error("lease lost")]
    LeaseLost,
    /// The client canceled the job (`DELETE /jobs/{id}`) while it rendered:
    /// the attempt stops before the upload and stores nothing.
    #[error("canceled by its client")]
    Canceled,
    /// The renderer died (a panic) with this job's document.
    #[error("renderer crashed")]
    Crashed,
    #[error("{0}")]
    Internal(String),
}

impl AttemptError {
    /// Retrying the same document can never succeed.
    fn is_permanent(&self) -> bool {
        match self {
            AttemptError::Render(e) => e.is_permanent(),
            AttemptError::Storage(e) => !e.is_transient(),
            AttemptError::Database(_)
            | AttemptError::LeaseLost
            | AttemptError::Canceled
            | AttemptError::Crashed
            | AttemptError::Internal(_) => false,
        }
    }

    /// What the job's `error` tells the client: what went wrong, in words
    /// that hold no internals (hosts, SQL, library messages), which stay in
    /// the logs. A document's own fault is told in full, since the client
    /// can fix it.
    fn public_message(&self) -> String {
        match self {
            AttemptError::Render(RenderError::Invalid(e)) => format!("invalid document: {e}"),
            AttemptError::Render(e @ RenderError::TimedOut { .. }) => e.to_string(),
            AttemptError::Render(e) if e.is_permanent() => {
                "the document could not be rendered".into()
            }
            AttemptError::Render(_) => "rendering failed for a temporary reason".into(),
            AttemptError::Storage(_) => "the artifact could not be stored".into(),
            AttemptError::Database(_) => "the job's state could not be recorded".into(),
            AttemptError::Crashed => "the renderer stopped unexpectedly".into(),
            AttemptError::Canceled => "canceled by its client".into(),
            AttemptError::LeaseLost | AttemptError::Internal(_) => {
                "the worker could not finish the attempt".into()
            }
        }
    }

    /// The machine-readable `error_code` shown in `GET /status`.
    fn code(&self) -> &'static str {
        match self {
            AttemptError::Render(RenderError::Invalid(_)) => "invalid_document",
            AttemptError::Render(RenderError::TimedOut { .. }) => "render_timeout",
            AttemptError::Render(_) => "render_failed",
            AttemptError::Storage(_) => "storage_failed",
            AttemptError::Database(_) => "database_failed",
            AttemptError::Crashed => "worker_crashed",
            AttemptError::Canceled => "canceled",
            AttemptError::LeaseLost | AttemptError::Internal(_) => "worker_failed",
        }
    }
}

/// Runs one attempt of `ticket` and says how to settle its delivery.
pub(crate) async fn run(ctx: &Ctx, pool: &ActorRef<PoolMsg>, ticket: &Ticket) -> Settle {
    match try_run(ctx, pool, ticket).await {
        Ok(settle) => settle,
        Err(err) if err.is_unavailable() => {
            warn!(job_id = %ticket.job_id, error = %err, "database unavailable; retrying the delivery");
            Settle::Defer(DATABASE_RETRY)
        }
        // PostgreSQL answered, and will answer the same again: spend an
        // attempt, so the job ends `failed` instead of looping.
        Err(err) => {
            warn!(job_id = %ticket.job_id, error = %err, "database refused a job write");
            let text = AttemptError::Database(err).public_message();
            if let Err(err) = failed_attempt(ctx, ticket, &text, "database_failed").await {
                warn!(job_id = %ticket.job_id, error = %err, "could not record the failure");
            }
            Settle::Retry
        }
    }
}

async fn try_run(ctx: &Ctx, pool: &ActorRef<PoolMsg>, ticket: &Ticket) -> Result<Settle, JobError> {
    let (view, payload) = match ctx.commits.claim(ticket.job_id).await? {
        Some(claimed) => (claimed.view, claimed.payload),
        None => match claim_slowly(ctx, ticket).await? {
            Ok(view) => (view, None),
            Err(settle) => return Ok(settle),
        },
    };
    let format = ticket.format.as_str();
    counter!(JOB_ATTEMPTS, "format" => format).increment(1);
    if ticket.attempt == 1 {
        let waited = (view.started_at.unwrap_or_else(Utc::now) - view.created_at)
            .to_std()
            .unwrap_or_default();
        histogram!(JOB_STAGE_DURATION, "stage" => "queue_wait", "format" => format)
            .record(waited.as_secs_f64());
    }
    ctx.cache_status(view.clone());

    let (owner, lease) = (ctx.worker_id.as_str(), ctx.config.worker.lease);
    let lost = AtomicBool::new(false);
    let work = work(ctx, pool, ticket, &view, payload, &lost);
    tokio::pin!(work);
    let mut renew = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    renew.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = renew.tick() => {
                match lifecycle::renew_lease(&ctx.db, ticket.job_id, owner, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(job_id = %ticket.job_id, "lease lost mid-attempt");
                        lost.store(true, Ordering::SeqCst);
                    }
                    Err(err) => warn!(job_id = %ticket.job_id, error = %err, "lease renewal failed"),
                }
            }
        }
    };

    match outcome {
        Ok(artifact) => {
            let key = artifact.key.clone();
            if let Some(view) = ctx.commits.done(ticket.job_id, artifact).await? {
                finished(ctx, &view, "done");
            } else if cancel(ctx, ticket).await? {
                // Canceled after the checkpoint: `done` refused the job, so
                // the artifact just stored goes too.
                if let Err(err) = ctx.blobs.delete(&key).await {
                    warn!(job_id = %ticket.job_id, error = %err, "could not delete a canceled job's artifact");
                }
            } else {
                // Lost the lease and someone else committed or holds the job
                // (with its own delivery): this delivery is a duplicate.
                info!(job_id = %ticket.job_id, "finished elsewhere; not committing");
            }
            Ok(Settle::Ack)
        }
        Err(AttemptError::Canceled) => {
            info!(job_id = %ticket.job_id, "canceled by its client; stopped before storing anything");
            cancel(ctx, ticket).await?;
            Ok(Settle::Ack)
        }
        Err(AttemptError::LeaseLost) => {
            info!(job_id = %ticket.job_id, "lease lost; stopped before storing anything");
            Ok(Settle::Ack)
        }
        Err(err) if err.is_permanent() => {
            warn!(job_id = %ticket.job_id, error = %err, "attempt failed for good");
            let text = err.public_message();
            if let Some(view) =
                lifecycle::mark_failed(&ctx.db, ticket.job_id, owner, &text, err.code()).await?
            {
                finished(ctx, &view, "failed");
            }
            Ok(Settle::DeadLetter(format!("{}: {text}", err.code())))
        }
        Err(err) => {
            warn!(job_id = %ticket.job_id, attempt = ticket.attempt, error = %err, "attempt failed");
            failed_attempt(ctx, ticket, &err.public_message(), err.code()).await?;
            Ok(Settle::Retry)
        }
    }
}

/// The claim's slow path, for a job the group commit did not take: expired,
/// finished, leased elsewhere or missing. `Ok(view)` when claimed after all.
async fn claim_slowly(ctx: &Ctx, ticket: &Ticket) -> Result<Result<JobView, Settle>, JobError> {
    let worker = &ctx.config.worker;
    // Canceled while its worker was gone: the claim skips it, finish it here.
    if cancel(ctx, ticket).await? {
        return Ok(Err(Settle::Ack));
    }
    if let Some(view) = lifecycle::expire_if_stale(&ctx.db, ticket.job_id, worker.job_ttl).await? {
        finished(ctx, &view, "expired");
        return Ok(Err(Settle::DeadLetter("expired".into())));
    }
    Ok(
        match lifecycle::claim(&ctx.db, ticket.job_id, &ctx.worker_id, worker.lease).await? {
            Claim::Claimed(view) => Ok(view),
            Claim::Finished(_) => Err(Settle::Ack),
            Claim::Missing => {
                warn!(job_id = %ticket.job_id, "message for an unknown job; dropped");
                Err(Settle::Ack)
            }
            Claim::Leased { until } => {
                let wait = (until - Utc::now()).to_std().unwrap_or_default();
                Err(Settle::Defer(wait.clamp(MIN_DEFER, MAX_DEFER)))
            }
        },
    )
}

/// Records a retryable failure: the job stays `processing` with its error
/// until the last attempt, which marks it `failed` (its message then goes to
/// the DLQ through the retry chain).
async fn failed_attempt(
    ctx: &Ctx,
    ticket: &Ticket,
    error: &str,
    code: &str,
) -> Result<(), JobError> {
    let owner = ctx.worker_id.as_str();
    if ticket.attempt >= ctx.topology.max_attempts() {
        if let Some(view) =
            lifecycle::mark_failed(&ctx.db, ticket.job_id, owner, error, code).await?
        {
            finished(ctx, &view, "failed");
        }
    } else if let Some(view) =
        lifecycle::record_attempt_error(&ctx.db, ticket.job_id, owner, error, code).await?
    {
        ctx.cache_status(view);
    }
    Ok(())
}

/// Finishes a cancel the client asked for while the job was `processing`;
/// `true` when this call moved the job to `canceled`.
async fn cancel(ctx: &Ctx, ticket: &Ticket) -> Result<bool, JobError> {
    match control::finish_cancel(&ctx.db, ticket.job_id, &ctx.worker_id).await? {
        Some(view) => {
            finished(ctx, &view, "canceled");
            Ok(true)
        }
        None => Ok(false),
    }
}

fn finished(ctx: &Ctx, view: &JobView, outcome: &'static str) {
    counter!(JOBS_FINISHED, "format" => view.format.as_str(), "outcome" => outcome).increment(1);
    ctx.cache_status(view.clone());
}

/// Document, render, upload; the artifact is durable when this returns `Ok`.
async fn work(
    ctx: &Ctx,
    pool: &ActorRef<PoolMsg>,
    ticket: &Ticket,
    view: &JobView,
    payload: Option<String>,
    lost: &AtomicBool,
) -> Result<Artifact, AttemptError> {
    let payload = match payload {
        Some(payload) => payload,
        None => lifecycle::payload(&ctx.db, ticket.job_id).await?,
    };
    let format = ticket.format;
    let big = payload.len() > ctx.config.worker.big_document_bytes;

    let started = Instant::now();
    let rendered = match pool
        .call(
            |reply| {
                PoolMsg::Render(RenderJob {
                    job_id: ticket.job_id,
                    format,
                    payload,
                    big,
                    reply,
                })
            },
            None,
        )
        .await
    {
        Ok(CallResult::Success(result)) => result?,
        Ok(_) | Err(_) => return Err(AttemptError::Crashed),
    };
    histogram!(JOB_STAGE_DURATION, "stage" => "render", "format" => format.as_str())
        .record(started.elapsed().as_secs_f64());

    // Taken over while rendering: the new owner stores its own artifact
    // under the same key; this attempt must not overwrite it.
    if lost.load(Ordering::SeqCst) {
        return Err(AttemptError::LeaseLost);
    }
    // The cancel checkpoint: the client may have asked while it rendered.
    // Only big documents pay its round trip; a small one's upload costs less,
    // and its `done` commit refuses a canceled job anyway (see `try_run`).
    if big && control::cancel_requested(&ctx.db, ticket.job_id).await? {
        return Err(AttemptError::Canceled);
    }
    let key = artifact_key(ticket.job_id, format);
    let meta = ArtifactMeta {
        content_type: format.content_type().to_string(),
        content_disposition: crate::storage::blobs::content_disposition(&view.filename),
    };
    let started = Instant::now();
    let stored = upload(ctx, &key, rendered, meta).await?;
    histogram!(JOB_STAGE_DURATION, "stage" => "upload", "format" => format.as_str())
        .record(started.elapsed().as_secs_f64());
    Ok(Artifact {
        key,
        size: i64::try_from(stored.size).unwrap_or(i64::MAX),
        sha256: stored.sha256,
    })
}

async fn upload(
    ctx: &Ctx,
    key: &str,
    artifact: Rendered,
    meta: ArtifactMeta,
) -> Result<StoredArtifact, AttemptError> {
    let uploader = ctx
        .peers
        .uploader()
        .ok_or_else(|| AttemptError::Internal("uploader not running".into()))?;
    let key = key.to_string();
    match uploader
        .call(
            |reply| UploaderMsg::Put {
                key,
                artifact,
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
