//! The janitor: deletes artifacts older than the retention period and marks
//! their jobs, so a download answers 410 instead of a broken link; drops the
//! document of jobs that failed longer ago than the DLQ replay window; and
//! deletes final job rows older than the job retention, so PostgreSQL stays
//! the size of the retention window however long the service runs.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use crate::storage::jobs::lifecycle;

use super::context::Ctx;
use super::protocol::JanitorMsg;

/// Jobs handled per sweep; the next sweep continues.
const BATCH: i64 = 100;
/// Rows one delete (or payload drop) statement touches: each is a short
/// statement of its own, so a sweep never holds many row locks for long.
const ROW_BATCH: i64 = 500;
/// Row statements per sweep at most; a backlog is worked off over sweeps.
const ROW_BATCHES_PER_SWEEP: usize = 20;

pub(crate) struct Janitor;

/// A tenth of the shortest retention, between 1 s and 1 min: short
/// retentions (tests) are honoured closely, long ones cost a few cheap
/// indexed queries a minute.
fn period(config: &crate::config::WorkerConfig) -> Duration {
    let shortest = config
        .retention
        .min(config.job_retention)
        .min(config.dlq_replay_window);
    (shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

impl Actor for Janitor {
    type Msg = JanitorMsg;
    type State = Ctx;
    type Arguments = Ctx;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Ctx,
    ) -> Result<Ctx, ActorProcessingErr> {
        myself.send_interval(period(&ctx.config.worker), || JanitorMsg::Sweep);
        Ok(ctx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _message: JanitorMsg,
        ctx: &mut Ctx,
    ) -> Result<(), ActorProcessingErr> {
        sweep_artifacts(ctx).await;
        sweep_rows(ctx).await;
        Ok(())
    }
}

async fn sweep_artifacts(ctx: &mut Ctx) {
    let stale = match lifecycle::stale_artifacts(&ctx.db, ctx.config.worker.retention, BATCH).await
    {
        Ok(stale) => stale,
        Err(err) => {
            warn!(error = %err, "janitor scan failed");
            ctx.health.failure("janitor", &err.to_string(), false);
            return;
        }
    };
    for (job_id, key) in stale {
        // Delete first, mark second: a crash in between repeats the
        // (idempotent) delete instead of leaving an unmarked orphan.
        if let Err(err) = ctx.blobs.delete(&key).await {
            warn!(%job_id, error = %err, "artifact not deleted; next sweep retries");
            ctx.health.failure("janitor", &err.to_string(), false);
            continue;
        }
        match lifecycle::mark_artifact_deleted(&ctx.db, job_id).await {
            Ok(Some(view)) => {
                info!(%job_id, "artifact past retention deleted");
                let _ = ctx.cache.forget_download_url(job_id).await;
                ctx.cache_status(view);
            }
            Ok(None) => {}
            Err(err) => warn!(%job_id, error = %err, "artifact deleted but not marked"),
        }
    }
}

/// Drops the documents of failed jobs out of the replay window, then deletes
/// job rows past the job retention and forgets what Redis holds of them.
async fn sweep_rows(ctx: &mut Ctx) {
    let worker = &ctx.config.worker;
    for _ in 0..ROW_BATCHES_PER_SWEEP {
        match lifecycle::drop_failed_payloads(&ctx.db, worker.dlq_replay_window, ROW_BATCH).await {
            Ok(n) if n < ROW_BATCH as u64 => break,
            Ok(_) => {}
            Err(err) => {
                warn!(error = %err, "janitor: failed documents not dropped");
                ctx.health.failure("janitor", &err.to_string(), false);
                return;
            }
        }
    }
    for _ in 0..ROW_BATCHES_PER_SWEEP {
        let deleted =
            match lifecycle::delete_expired_jobs(&ctx.db, worker.job_retention, ROW_BATCH).await {
                Ok(deleted) => deleted,
                Err(err) => {
                    warn!(error = %err, "janitor: job rows not deleted");
                    ctx.health.failure("janitor", &err.to_string(), false);
                    return;
                }
            };
        if !deleted.is_empty() {
            info!(jobs = deleted.len(), "job rows past retention deleted");
        }
        // Best effort: the entries expire on their own (status and
        // idempotency TTLs are far shorter than any sensible retention), and
        // an idempotency entry naming a job PostgreSQL no longer has, with no
        // cached status, is ignored by the API, which creates the new job.
        for job in &deleted {
            let _ = ctx
                .cache
                .forget_job(job.id, job.client_id, &job.idempotency_key)
                .await;
        }
        if (deleted.len() as i64) < ROW_BATCH {
            break;
        }
    }
}
