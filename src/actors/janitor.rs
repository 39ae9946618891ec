//! The janitor: deletes artifacts older than the retention period and marks
//! their jobs, so a download answers 410 instead of a broken link.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use crate::storage::jobs::lifecycle;

use super::context::Ctx;

/// Jobs handled per sweep; the next sweep continues.
const BATCH: i64 = 100;

pub(crate) enum JanitorMsg {
    Sweep,
}

pub(crate) struct Janitor;

/// A tenth of the retention, between 1 s and 1 min: short retentions (tests)
/// are honoured closely, long ones cost one cheap indexed query a minute.
fn period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
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
        myself.send_interval(period(ctx.config.worker.retention), || JanitorMsg::Sweep);
        Ok(ctx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _message: JanitorMsg,
        ctx: &mut Ctx,
    ) -> Result<(), ActorProcessingErr> {
        let stale =
            match lifecycle::stale_artifacts(&ctx.db, ctx.config.worker.retention, BATCH).await {
                Ok(stale) => stale,
                Err(err) => {
                    warn!(error = %err, "janitor scan failed");
                    ctx.health.failure("janitor", &err.to_string(), false);
                    return Ok(());
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
        Ok(())
    }
}
