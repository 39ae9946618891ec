//! The DLQ as an operator sees it: what is in it and why (`artefatos dlq
//! list`), and putting jobs back to work (`artefatos dlq replay`).
//!
//! Listing takes every message without acknowledging it and then gives them
//! all back (closing the channel requeues them), so a listing never loses a
//! record. Replaying resets the job in PostgreSQL first (`failed → queued`,
//! attempts cleared, unpublished) and only then acknowledges its DLQ record;
//! the outbox publishes a fresh message, without `x-death`, so the job has a
//! whole new attempt budget. A crash in between leaves a queued job (which the
//! relay publishes) and a stale record (which the next replay drops).

use chrono::{DateTime, TimeZone, Utc};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::storage::jobs::lifecycle::ReplayRefusal;
use crate::storage::jobs::{JobError, JobStatus, lifecycle};
use crate::storage::queue::{
    Death, QueueError, Topology, deaths, dlq_reason, job_id_of, queue_depth,
};

/// Failures of DLQ operations.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Jobs(#[from] JobError),
}

impl From<lapin::Error> for DlqError {
    fn from(e: lapin::Error) -> Self {
        DlqError::Queue(QueueError::Amqp(e))
    }
}

/// One DLQ record, joined with what PostgreSQL knows of its job.
#[derive(Debug, Clone, Serialize)]
pub struct DlqEntry {
    pub job_id: Option<Uuid>,
    pub format: Option<String>,
    pub status: Option<JobStatus>,
    pub attempts: Option<i32>,
    pub reason: String,
    pub first_death: Option<DateTime<Utc>>,
    pub last_death: Option<DateTime<Utc>>,
    pub deaths: Vec<Death>,
}

/// What `replay` did with one record. Every record but `Requeued` is
/// acknowledged and so leaves the DLQ: there is nothing left to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// The job is queued again with a fresh attempt budget.
    Requeued,
    /// The job is no longer failed (done, or already replayed): record dropped.
    Dropped,
    /// The job failed longer ago than the DLQ replay window and its document
    /// was dropped: it cannot be rendered again; the client must post anew.
    PayloadGone,
    /// The job's row was deleted after the job retention: record dropped.
    Missing,
}

/// Every record in the DLQ, oldest first; the queue is left as it was.
pub async fn list(
    channel: &Channel,
    topology: &Topology,
    pool: &PgPool,
) -> Result<Vec<DlqEntry>, DlqError> {
    let mut entries = Vec::new();
    let mut tags = Vec::new();
    while let Some(delivery) = next(channel, topology).await? {
        tags.push(delivery.delivery_tag);
        entries.push(entry(pool, &delivery.data, &delivery.properties).await?);
    }
    // Give every record back, in order.
    if let Some(&last) = tags.last() {
        channel
            .basic_nack(
                last,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
    }
    Ok(entries)
}

/// Replays the records of `only` (or all of them); returns what happened to each.
///
/// Only the records present when it starts are looked at: a replayed job
/// that fails again while the replay runs lands back at the tail of the DLQ,
/// and taking it again would replay forever. The queue is FIFO and every
/// record looked at is held until the end, so the first `depth` records taken
/// are exactly the ones that were there.
pub async fn replay(
    channel: &Channel,
    topology: &Topology,
    pool: &PgPool,
    only: Option<Uuid>,
) -> Result<Vec<(Uuid, ReplayOutcome)>, DlqError> {
    let present = queue_depth(channel, &topology.dlq()).await?;
    let mut outcomes = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..present {
        let Some(delivery) = next(channel, topology).await? else {
            break;
        };
        let job_id = job_id_of(&delivery.data).ok();
        let wanted = match (only, job_id) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(only), Some(id)) => only == id,
        };
        let Some(job_id) = job_id.filter(|_| wanted) else {
            kept.push(delivery.delivery_tag);
            continue;
        };
        let outcome = match lifecycle::reset_for_replay(pool, job_id).await? {
            Some(_) => ReplayOutcome::Requeued,
            None => match lifecycle::replay_refusal(pool, job_id).await? {
                ReplayRefusal::NotFailed => ReplayOutcome::Dropped,
                ReplayRefusal::PayloadGone => ReplayOutcome::PayloadGone,
                ReplayRefusal::Missing => ReplayOutcome::Missing,
            },
        };
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        outcomes.push((job_id, outcome));
    }
    for tag in kept {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await?;
    }
    Ok(outcomes)
}

/// The next DLQ record, held (unacknowledged) until the caller settles it.
async fn next(channel: &Channel, topology: &Topology) -> Result<Option<Delivery>, DlqError> {
    let message = channel
        .basic_get(
            topology.dlq().as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await?;
    Ok(message.map(|m| m.delivery))
}

async fn entry(
    pool: &PgPool,
    body: &[u8],
    properties: &BasicProperties,
) -> Result<DlqEntry, DlqError> {
    let job_id = job_id_of(body).ok();
    let job = match job_id {
        Some(id) => lifecycle::view(pool, id).await?,
        None => None,
    };
    let history = deaths(properties);
    let times = history.iter().filter_map(|d| d.time);
    let at = |secs: Option<u64>| {
        secs.and_then(|s| Utc.timestamp_opt(i64::try_from(s).ok()?, 0).single())
    };
    Ok(DlqEntry {
        job_id,
        format: job.as_ref().map(|j| j.format.to_string()),
        status: job.as_ref().map(|j| j.status),
        attempts: job.as_ref().map(|j| j.attempts),
        reason: dlq_reason(properties),
        first_death: at(times.clone().min()),
        last_death: at(times.max()),
        deaths: history,
    })
}
