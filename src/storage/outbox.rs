//! The transactional outbox: a committed job is published to RabbitMQ at
//! least once, even if the API dies right after the commit or the broker is
//! down when the job is accepted.
//!
//! Two paths share one rule (publish, wait for the broker's confirm, then set
//! `published_at`): `notify` publishes a just-committed job in the background
//! without delaying its `202`, batching the confirms and the `UPDATE`; `sweep`
//! (driven by the relay actor every second) republishes whatever is still
//! unpublished after [`SWEEP_GRACE`]. Consumers therefore see duplicates and
//! treat them as such.

use std::time::Duration;

use futures::future::join_all;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics::OUTBOX_BACKLOG;
use crate::render::Format;
use crate::storage::queue::{Publisher, QueueError};

/// How old an unpublished job must be before the sweep takes it from `notify`.
pub const SWEEP_GRACE: Duration = Duration::from_secs(3);
/// Most jobs one notify batch or one sweep round publishes.
const BATCH: usize = 512;
/// Just-committed jobs waiting for the background publisher, at most (about
/// six seconds of the measured peak rate). When the broker is slow or blocked
/// and the queue is full, further jobs are not queued here: they stay
/// unpublished in PostgreSQL and the sweep publishes them [`SWEEP_GRACE`]
/// after their commit, so a stalled broker costs memory bounded by this.
pub const NOTIFY_CAPACITY: usize = 65_536;
/// Read `jobs_unpublished` with a plain index scan. The index keeps an entry
/// for every job ever inserted until VACUUM removes it, and the planner's
/// bitmap scan visited the heap for each of them on every sweep (10 ms a
/// query after 15 s at 10,000 jobs/s, and growing). A plain index scan marks
/// the entries of published jobs dead as it passes, so the next sweep skips
/// them: 5 ms once, then 0.6 ms.
const INDEX_SCAN_ONLY: &str =
    "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_indexonlyscan = off";

/// Failures of the outbox; the sweep retries them next round.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Queue(#[from] QueueError),
}

/// Handle to the outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    publisher: Publisher,
    notify: mpsc::Sender<(Uuid, Format)>,
}

impl Outbox {
    /// Starts the background publisher of `notify` on the current runtime.
    pub fn new(pool: PgPool, publisher: Publisher) -> Self {
        let (notify, rx) = mpsc::channel(NOTIFY_CAPACITY);
        tokio::spawn(publish_notified(pool.clone(), publisher.clone(), rx));
        Outbox {
            pool,
            publisher,
            notify,
        }
    }

    /// Publishes a just-committed job soon; never fails nor waits (the sweep
    /// is the backstop: a job that finds the queue full is published by it).
    pub fn notify(&self, job_id: Uuid, format: Format) {
        if self.notify.try_send((job_id, format)).is_err() {
            tracing::debug!(%job_id, "notify queue full; the sweep publishes this job");
        }
    }

    /// Publishes every job committed more than [`SWEEP_GRACE`] ago and still
    /// unpublished; returns how many were published. Replicas sweeping at
    /// once skip each other's rows (`SKIP LOCKED`).
    pub async fn sweep(&self) -> Result<usize, OutboxError> {
        let mut published = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(INDEX_SCAN_ONLY).execute(&mut *tx).await?;
            let rows = sqlx::query(
                "SELECT id, format FROM jobs
                 WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT $2
                 FOR UPDATE SKIP LOCKED",
            )
            .bind(SWEEP_GRACE.as_secs_f64())
            .bind(BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
            let mut jobs = Vec::with_capacity(rows.len());
            for row in &rows {
                let format: String = row.try_get("format")?;
                if let Ok(format) = format.parse::<Format>() {
                    jobs.push((row.try_get::<Uuid, _>("id")?, format));
                }
            }
            let done = publish_all(&self.publisher, &jobs).await;
            mark_published(&mut tx, &done).await?;
            // The broker refused some (stop here, retry next round), or
            // nothing older is left: either way this round is the last.
            let refused = jobs.len() - done.len();
            let last = refused > 0 || jobs.len() < BATCH;
            if last {
                // Counted in this transaction, under the same index scan.
                let backlog: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE published_at IS NULL")
                        .fetch_one(&mut *tx)
                        .await?;
                metrics::gauge!(OUTBOX_BACKLOG).set(backlog as f64);
            }
            tx.commit().await?;
            published += done.len();
            if refused > 0 {
                return Err(OutboxError::Queue(QueueError::Unavailable(format!(
                    "{refused} of {} jobs not confirmed",
                    jobs.len()
                ))));
            }
            if last {
                return Ok(published);
            }
        }
    }

    /// Health probe for the broker, as seen by this process's publisher.
    pub async fn check(&self) -> Result<(), QueueError> {
        self.publisher.check().await
    }
}

/// The `notify` path: publish what has gathered, then one `UPDATE` for all.
async fn publish_notified(
    pool: PgPool,
    publisher: Publisher,
    mut rx: mpsc::Receiver<(Uuid, Format)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let done = publish_all(&publisher, &batch).await;
        if let Err(e) = mark_published_alone(&pool, &done).await {
            // Published but not marked: the sweep publishes them again, and
            // consumers skip the duplicate.
            tracing::warn!(error = %e, jobs = done.len(), "could not mark jobs published");
        }
        batch.clear();
    }
}

/// Publishes concurrently (confirms pipelined); returns the confirmed ids.
async fn publish_all(publisher: &Publisher, jobs: &[(Uuid, Format)]) -> Vec<Uuid> {
    let results = join_all(
        jobs.iter()
            .map(|&(id, format)| async move { (id, publisher.publish(id, format).await) }),
    )
    .await;
    let mut done = Vec::with_capacity(results.len());
    for (id, result) in results {
        match result {
            Ok(()) => done.push(id),
            Err(e) => tracing::debug!(job_id = %id, error = %e, "publish not confirmed"),
        }
    }
    done
}

/// Sets `published_at` inside the caller's transaction, whose commit then
/// does not wait for the WAL flush: a marker lost in a crash only costs a
/// duplicate publish (the sweep sends the job again, consumers skip it), while
/// waiting for the flush doubled the fsyncs that job creation queues behind.
async fn mark_published(tx: &mut sqlx::PgConnection, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE jobs SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// [`mark_published`] in a transaction of its own.
async fn mark_published_alone(pool: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    mark_published(&mut tx, ids).await?;
    tx.commit().await
}
