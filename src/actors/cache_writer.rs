//! The cache writer: writes every status transition through to Redis, in the
//! order the transitions happened. Senders never wait for it, and a Redis
//! outage only costs cache freshness for its duration: a status that could
//! not be written is kept (the latest per job) and written again every
//! [`RETRY_EVERY`], so once Redis is back no reader is left with a stale
//! `processing` until the entry's TTL runs out.

use std::collections::HashMap;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;
use uuid::Uuid;

use crate::storage::jobs::JobView;

use super::context::Ctx;
use super::protocol::CacheMsg;

/// Longest one write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often statuses that failed to reach Redis are written again.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Most statuses kept for a retry; past it a status is left to expire.
const MAX_PENDING: usize = 10_000;

pub(crate) struct CacheWriter;

pub(crate) struct CacheState {
    ctx: Ctx,
    /// The latest unwritten status of each job.
    pending: HashMap<Uuid, Box<JobView>>,
    retry_scheduled: bool,
}

impl CacheState {
    async fn write(&self, view: &JobView) -> bool {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ctx.cache.put_status(view)).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                debug!(job_id = %view.id, error = %err, "status not cached yet");
                false
            }
            Err(_) => {
                debug!(job_id = %view.id, "status cache write timed out");
                false
            }
        }
    }
}

impl Actor for CacheWriter {
    type Msg = CacheMsg;
    type State = CacheState;
    type Arguments = Ctx;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Ctx,
    ) -> Result<CacheState, ActorProcessingErr> {
        Ok(CacheState {
            ctx,
            pending: HashMap::new(),
            retry_scheduled: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: CacheMsg,
        state: &mut CacheState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CacheMsg::Put(view) => {
                if state.write(&view).await {
                    state.pending.remove(&view.id);
                } else if state.pending.len() < MAX_PENDING || state.pending.contains_key(&view.id)
                {
                    state.pending.insert(view.id, view);
                }
            }
            CacheMsg::Retry => {
                state.retry_scheduled = false;
                let mut still = HashMap::new();
                for (id, view) in std::mem::take(&mut state.pending) {
                    // One failure means Redis is still away: keep the rest as is.
                    if !still.is_empty() || !state.write(&view).await {
                        still.insert(id, view);
                    }
                }
                state.pending = still;
            }
        }
        if !state.pending.is_empty() && !state.retry_scheduled {
            state.retry_scheduled = true;
            myself.send_after(RETRY_EVERY, || CacheMsg::Retry);
        }
        Ok(())
    }
}
