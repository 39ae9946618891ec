//! The cache writer: writes every status transition through to Redis, in the
//! order the transitions happened. Senders never wait for it, and a Redis
//! outage only costs cache freshness (`GET /status` falls back to PostgreSQL).

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;

use crate::storage::jobs::JobView;

use super::context::Ctx;

/// Longest one write may take; past it the status is left to expire.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) enum CacheMsg {
    Put(Box<JobView>),
}

pub(crate) struct CacheWriter;

impl Actor for CacheWriter {
    type Msg = CacheMsg;
    type State = Ctx;
    type Arguments = Ctx;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Ctx,
    ) -> Result<Ctx, ActorProcessingErr> {
        Ok(ctx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: CacheMsg,
        ctx: &mut Ctx,
    ) -> Result<(), ActorProcessingErr> {
        let CacheMsg::Put(view) = message;
        match tokio::time::timeout(WRITE_TIMEOUT, ctx.cache.put_status(&view)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => debug!(job_id = %view.id, error = %err, "status not cached"),
            Err(_) => debug!(job_id = %view.id, "status cache write timed out"),
        }
        Ok(())
    }
}
