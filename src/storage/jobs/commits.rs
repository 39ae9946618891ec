//! Group commits of the worker's job-state writes: claims and `done`.
//!
//! A small job's attempt is mostly waiting on PostgreSQL: one round trip to
//! claim it, one to commit `done`. As with new jobs (`create.rs`), concurrent
//! attempts hand their write to a collector that sends whatever has gathered
//! as one statement, so a busy worker pays one round trip and one commit per
//! batch rather than per job, and an idle one pays a channel hop.
//!
//! A batch that PostgreSQL refuses (one job's row breaks a constraint or a
//! trigger) is sent again one write at a time, so one bad job never fails
//! its neighbours. A batch that fails for an outage fails every write in it
//! with a copy of the reason ([`JobError::Batch`]), which keeps that it was
//! an outage: attempts wait out an outage and spend an attempt on anything
//! else.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::lifecycle::{self, Artifact, Claimed};
use super::{JobError, JobView};
use crate::storage::batch;

/// Most writes one statement carries.
const MAX_BATCH: usize = 128;
/// Statements of each kind in flight at once: enough that a claim batch never
/// waits behind a `done` batch's commit, few enough that batches still form.
const CONCURRENT_BATCHES: usize = 2;

type ClaimReply = oneshot::Sender<Result<Option<Claimed>, JobError>>;
type DoneReply = oneshot::Sender<Result<Option<JobView>, JobError>>;

/// The worker's claim and `done` collectors for one lease owner; cheap to clone.
#[derive(Clone)]
pub struct JobCommits {
    claims: mpsc::Sender<(Uuid, ClaimReply)>,
    dones: mpsc::Sender<((Uuid, Artifact), DoneReply)>,
}

/// How claims are made: by whom, for how long, and what comes back inline.
#[derive(Debug, Clone)]
pub struct ClaimTerms {
    /// Lease owner written into every claimed job.
    pub owner: String,
    pub lease: Duration,
    /// Jobs queued longer than this are left to the expiry path.
    pub job_ttl: Duration,
    /// Payloads stored in at most this many bytes come back with the claim;
    /// larger ones are read when their render is about to start.
    pub inline_payload_bytes: usize,
}

impl JobCommits {
    /// Starts both collectors on the current runtime.
    pub fn new(pool: PgPool, terms: ClaimTerms) -> Self {
        let terms = Arc::new(terms);
        let (claim_pool, claim_terms) = (pool.clone(), terms.clone());
        let claims = batch::spawn(MAX_BATCH, CONCURRENT_BATCHES, move |batch| {
            let (pool, terms) = (claim_pool.clone(), claim_terms.clone());
            async move { claim_batch(&pool, &terms, batch).await }
        });
        let dones = batch::spawn(MAX_BATCH, CONCURRENT_BATCHES, move |batch| {
            let (pool, terms) = (pool.clone(), terms.clone());
            async move { done_batch(&pool, &terms.owner, batch).await }
        });
        JobCommits { claims, dones }
    }

    /// Claims a `queued` job, or a `processing` one whose lease ran out, if it
    /// has not waited past its TTL. `None`: not claimable that way (finished,
    /// leased elsewhere, stale or missing); the caller looks closer with
    /// [`lifecycle::claim`] and [`lifecycle::expire_if_stale`].
    pub async fn claim(&self, job_id: Uuid) -> Result<Option<Claimed>, JobError> {
        let (reply, answer) = oneshot::channel();
        self.claims
            .send((job_id, reply))
            .await
            .map_err(|_| JobError::InserterStopped)?;
        answer.await.map_err(|_| JobError::InserterStopped)?
    }

    /// Commits `done` with the artifact; `None` when the job is no longer
    /// this owner's `processing` job (see [`lifecycle::mark_done`]).
    pub async fn done(
        &self,
        job_id: Uuid,
        artifact: Artifact,
    ) -> Result<Option<JobView>, JobError> {
        let (reply, answer) = oneshot::channel();
        self.dones
            .send(((job_id, artifact), reply))
            .await
            .map_err(|_| JobError::InserterStopped)?;
        answer.await.map_err(|_| JobError::InserterStopped)?
    }
}

async fn claim_batch(pool: &PgPool, terms: &ClaimTerms, batch: Vec<(Uuid, ClaimReply)>) {
    let claim = |ids: Vec<Uuid>| async move {
        let claimed = lifecycle::claim_many(pool, &ids, terms).await?;
        let mut by_id: HashMap<Uuid, Claimed> =
            claimed.into_iter().map(|c| (c.view.id, c)).collect();
        Ok(ids.iter().map(|id| by_id.remove(id)).collect())
    };
    answer(batch, claim).await;
}

async fn done_batch(pool: &PgPool, owner: &str, batch: Vec<((Uuid, Artifact), DoneReply)>) {
    let done = |items: Vec<(Uuid, Artifact)>| async move {
        let done = lifecycle::mark_done_many(pool, owner, &items).await?;
        let mut by_id: HashMap<Uuid, JobView> = done.into_iter().map(|v| (v.id, v)).collect();
        Ok(items.iter().map(|(id, _)| by_id.remove(id)).collect())
    };
    answer(batch, done).await;
}

/// Runs `write` for the whole batch and answers each request with its own
/// outcome; if PostgreSQL refuses the batch, runs it again one request at a
/// time, so only the request it refuses fails.
async fn answer<T, R, W, Fut>(batch: Vec<(T, oneshot::Sender<Result<R, JobError>>)>, write: W)
where
    T: Clone,
    W: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, JobError>>,
{
    let (items, replies): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
    match write(items.clone()).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(err) if !err.is_unavailable() && items.len() > 1 => {
            for (item, reply) in items.into_iter().zip(replies) {
                let result = write(vec![item]).await.and_then(|mut one| {
                    one.pop()
                        .ok_or_else(|| JobError::Corrupt("a write without an outcome".into()))
                });
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.for_batch()));
            }
        }
    }
}
