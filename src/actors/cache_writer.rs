//! The cache writer: writes every status transition through to Redis, in the
//! order the transitions happened. Senders never wait for it. Transitions
//! that arrive while a write is in flight go together in the next one (one
//! pipeline, one round trip), so a busy worker's two transitions per job cost
//! a share of a round trip each.
//!
//! A Redis outage only costs cache freshness for its duration: a status that
//! could not be written is kept (the latest per job) and written again every
//! [`RETRY_EVERY`], so once Redis is back no reader is left with a stale
//! `processing` until the entry's TTL runs out.

use std::collections::{HashMap, VecDeque};
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
/// Most statuses written in one round trip.
const MAX_BATCH: usize = 256;

pub(crate) struct CacheWriter;

pub(crate) struct CacheState {
    ctx: Ctx,
    /// Transitions not written yet, oldest first.
    queue: VecDeque<JobView>,
    /// A batch is being written: the next waits for it, which keeps the order.
    writing: bool,
    /// The latest status of each job that an outage kept from Redis.
    pending: HashMap<Uuid, JobView>,
    retry_scheduled: bool,
}

impl CacheState {
    /// Starts writing the next batch, unless one is in flight.
    fn flush(&mut self, myself: &ActorRef<CacheMsg>) {
        if self.writing || self.queue.is_empty() {
            return;
        }
        let take = self.queue.len().min(MAX_BATCH);
        let views: Vec<JobView> = self.queue.drain(..take).collect();
        self.writing = true;
        let (cache, me) = (self.ctx.cache.clone(), myself.clone());
        tokio::spawn(async move {
            let refs: Vec<&JobView> = views.iter().collect();
            let ok = match tokio::time::timeout(WRITE_TIMEOUT, cache.put_statuses(&refs)).await {
                Ok(Ok(())) => true,
                Ok(Err(err)) => {
                    debug!(error = %err, statuses = refs.len(), "statuses not cached yet");
                    false
                }
                Err(_) => {
                    debug!(statuses = refs.len(), "status cache write timed out");
                    false
                }
            };
            let _ = me.cast(CacheMsg::Written { views, ok });
        });
    }

    fn written(&mut self, views: Vec<JobView>, ok: bool) {
        self.writing = false;
        for view in views {
            if ok {
                self.pending.remove(&view.id);
            } else if self.pending.len() < MAX_PENDING || self.pending.contains_key(&view.id) {
                self.pending.insert(view.id, view);
            }
        }
    }

    /// What an outage kept back goes out again, ahead of anything newer.
    fn retry(&mut self) {
        self.retry_scheduled = false;
        for (_, view) in self.pending.drain() {
            self.queue.push_front(view);
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
            queue: VecDeque::new(),
            writing: false,
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
            CacheMsg::Put(view) => state.queue.push_back(*view),
            CacheMsg::Written { views, ok } => state.written(views, ok),
            CacheMsg::Retry => state.retry(),
        }
        state.flush(&myself);
        if !state.pending.is_empty() && !state.retry_scheduled {
            state.retry_scheduled = true;
            myself.send_after(RETRY_EVERY, || CacheMsg::Retry);
        }
        Ok(())
    }
}
