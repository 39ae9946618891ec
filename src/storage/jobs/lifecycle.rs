//! Worker side of a job: claims, leases, final statuses, retention and replay,
//! each one guarded SQL so a late or duplicate message cannot move a job back.
//!
//! A job is claimed when it is `queued`, or `processing` with no live lease
//! (its worker died or gave the attempt back). A retryable failure keeps the job
//! `processing` but releases the lease, so the retried message can claim it at
//! once; `done` and `failed` are never left again, except by an operator's
//! DLQ replay.
//!
//! The only text formatted into these statements is the constant
//! [`JOB_VIEW_COLUMNS`]; every value is a bind parameter.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use super::commits::ClaimTerms;
use super::{JOB_VIEW_COLUMNS, JobError, JobView};

/// What a delivery found when it tried to claim its job.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This worker now holds the lease; the attempt may start.
    Claimed(JobView),
    /// The job is `done` or `failed`: the message is a duplicate, ack and skip.
    Finished(JobView),
    /// Another worker holds a live lease until then: retry after it.
    Leased { until: DateTime<Utc> },
    /// No such job (deleted, or another namespace's message): nothing to do.
    Missing,
}

fn interval(d: Duration) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    }
}

/// Takes the job for `owner` for `lease`, counting an attempt; see [`Claim`].
pub async fn claim(
    pool: &PgPool,
    job_id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<Claim, JobError> {
    let sql = format!(
        "UPDATE jobs SET status = 'processing', lease_owner = $2, lease_until = now() + $3, \
         attempts = attempts + 1, started_at = COALESCE(started_at, now()), updated_at = now() \
         WHERE id = $1 AND (status = 'queued' OR (status = 'processing' \
           AND cancel_requested_at IS NULL \
           AND (lease_until IS NULL OR lease_until < now()))) \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    if let Some(view) = sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(owner)
        .bind(interval(lease))
        .fetch_optional(pool)
        .await?
    {
        return Ok(Claim::Claimed(view));
    }
    let sql = format!("SELECT {JOB_VIEW_COLUMNS}, lease_until FROM jobs WHERE id = $1");
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(Claim::Missing);
    };
    use sqlx::{FromRow, Row};
    let view = JobView::from_row(&row)?;
    if view.status.is_final() {
        return Ok(Claim::Finished(view));
    }
    let until: Option<DateTime<Utc>> = row.try_get("lease_until")?;
    // Lost a race with a lease that has just ended: claimable on the next look.
    Ok(Claim::Leased {
        until: until.unwrap_or_else(Utc::now),
    })
}

/// A job claimed by a group commit, with its document when it is small.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub view: JobView,
    /// The document's JSON text; `None` when it is stored in more than
    /// [`ClaimTerms::inline_payload_bytes`] (read it with [`payload`]).
    pub payload: Option<String>,
}

/// The fast path of [`claim`] for many jobs in one statement: claims those
/// that are `queued` (and not past `job_ttl`) or `processing` with no live
/// lease, and returns them. Rows are locked in id order, so two batches that
/// share a job wait for each other instead of deadlocking.
pub async fn claim_many(
    pool: &PgPool,
    ids: &[Uuid],
    terms: &ClaimTerms,
) -> Result<Vec<Claimed>, JobError> {
    let sql = format!(
        "UPDATE jobs SET status = 'processing', lease_owner = $2, lease_until = now() + $3, \
         attempts = attempts + 1, started_at = COALESCE(started_at, now()), updated_at = now() \
         WHERE id = ANY($1) AND ( \
           (status = 'queued' AND NOT (created_at < now() - $4 AND updated_at < now() - $4)) \
           OR (status = 'processing' AND cancel_requested_at IS NULL \
             AND (lease_until IS NULL OR lease_until < now()))) \
         RETURNING {JOB_VIEW_COLUMNS}, \
           CASE WHEN pg_column_size(payload) <= $5 THEN payload::text END AS inline_payload"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(ids)
        .bind(&terms.owner)
        .bind(interval(terms.lease))
        .bind(interval(terms.job_ttl))
        .bind(i32::try_from(terms.inline_payload_bytes).unwrap_or(i32::MAX))
        .fetch_all(pool)
        .await?;
    use sqlx::{FromRow, Row};
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                view: JobView::from_row(row)?,
                payload: row.try_get("inline_payload")?,
            })
        })
        .collect()
}

/// [`mark_done`] for many jobs of one owner in one statement; returns the
/// jobs it moved to `done` (the others were no longer this owner's, or
/// their client asked to cancel them: see `control::finish_cancel`).
/// Each job's document is dropped as it becomes `done`.
pub async fn mark_done_many(
    pool: &PgPool,
    owner: &str,
    items: &[(Uuid, Artifact)],
) -> Result<Vec<JobView>, JobError> {
    let ids: Vec<Uuid> = items.iter().map(|(id, _)| *id).collect();
    let keys: Vec<&str> = items.iter().map(|(_, a)| a.key.as_str()).collect();
    let sizes: Vec<i64> = items.iter().map(|(_, a)| a.size).collect();
    let hashes: Vec<&str> = items.iter().map(|(_, a)| a.sha256.as_str()).collect();
    let sql = format!(
        "UPDATE jobs SET status = 'done', artifact_key = v.new_key, artifact_size = v.new_size, \
         artifact_sha256 = v.new_sha256, error = NULL, error_code = NULL, payload = NULL, \
         lease_until = NULL, finished_at = now(), updated_at = now() \
         FROM UNNEST($1::uuid[], $3::text[], $4::int8[], $5::text[]) \
           AS v(job_id, new_key, new_size, new_sha256) \
         WHERE jobs.id = v.job_id AND status = 'processing' AND lease_owner = $2 \
           AND cancel_requested_at IS NULL \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(&ids)
        .bind(owner)
        .bind(&keys)
        .bind(&sizes)
        .bind(&hashes)
        .fetch_all(pool)
        .await?)
}

/// Fails a job that has waited in the queue longer than `ttl` without being
/// started, as `expired`. Counts from creation or the last DLQ replay.
pub async fn expire_if_stale(
    pool: &PgPool,
    job_id: Uuid,
    ttl: Duration,
) -> Result<Option<JobView>, JobError> {
    let sql = format!(
        "UPDATE jobs SET status = 'failed', error_code = 'expired', \
         error = 'not started within ' || $2::text, finished_at = now(), updated_at = now() \
         WHERE id = $1 AND status = 'queued' \
           AND created_at < now() - $3 AND updated_at < now() - $3 \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(format!("{ttl:?}"))
        .bind(interval(ttl))
        .fetch_optional(pool)
        .await?)
}

/// Extends the lease while the attempt runs; `false` means it was lost (taken
/// over or finished elsewhere) and the attempt should stop trying to commit.
pub async fn renew_lease(
    pool: &PgPool,
    job_id: Uuid,
    owner: &str,
    lease: Duration,
) -> Result<bool, JobError> {
    let done = sqlx::query(
        "UPDATE jobs SET lease_until = now() + $3 \
         WHERE id = $1 AND status = 'processing' AND lease_owner = $2",
    )
    .bind(job_id)
    .bind(owner)
    .bind(interval(lease))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The document of a job, as the JSON text the client sent. Only a job not
/// yet final is sure to have one: `done` drops it, `failed` keeps it for the
/// DLQ replay window.
pub async fn payload(pool: &PgPool, job_id: Uuid) -> Result<String, JobError> {
    let text: Option<Option<String>> =
        sqlx::query_scalar("SELECT payload::text FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
    match text {
        Some(Some(text)) => Ok(text),
        Some(None) => Err(JobError::Corrupt(format!(
            "job {job_id} is final and its document was dropped"
        ))),
        None => Err(JobError::Corrupt(format!("job {job_id} has no row"))),
    }
}

/// Where the artifact of a finished attempt is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub key: String,
    pub size: i64,
    pub sha256: String,
}

/// Commits `done` with the artifact; `None` when the job is no longer this
/// owner's `processing` job (a duplicate finished first: nothing to do).
/// `lease_owner` stays as the record of which worker finished the job. The
/// document is dropped in the same statement: a `done` job is never rendered
/// again, and its payload (up to the body limit) would otherwise stay forever.
/// Workers commit through [`mark_done_many`] (the group commit); this is the
/// same statement for one job.
pub async fn mark_done(
    pool: &PgPool,
    job_id: Uuid,
    owner: &str,
    artifact: &Artifact,
) -> Result<Option<JobView>, JobError> {
    Ok(mark_done_many(pool, owner, &[(job_id, artifact.clone())])
        .await?
        .pop())
}

/// Commits `failed` with the last error; allowed from `queued` (expiry,
/// permanent error before a claim) or from `processing` unless another worker
/// holds a live lease. `None` when the job had already reached a final status.
pub async fn mark_failed(
    pool: &PgPool,
    job_id: Uuid,
    owner: &str,
    error: &str,
    error_code: &str,
) -> Result<Option<JobView>, JobError> {
    let sql = format!(
        "UPDATE jobs SET status = 'failed', error = $3, error_code = $4, lease_owner = NULL, \
         lease_until = NULL, finished_at = now(), updated_at = now() \
         WHERE id = $1 AND (status = 'queued' OR (status = 'processing' AND \
           (lease_owner IS NULL OR lease_owner = $2 OR lease_until < now()))) \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(owner)
        .bind(error)
        .bind(error_code)
        .fetch_optional(pool)
        .await?)
}

/// Records a retryable failure and gives the lease back, so the retried
/// message claims the job as soon as it returns. The status stays
/// `processing`: it never moves back to `queued`.
pub async fn record_attempt_error(
    pool: &PgPool,
    job_id: Uuid,
    owner: &str,
    error: &str,
    error_code: &str,
) -> Result<Option<JobView>, JobError> {
    let sql = format!(
        "UPDATE jobs SET error = $3, error_code = $4, lease_owner = NULL, lease_until = NULL, \
         updated_at = now() \
         WHERE id = $1 AND status = 'processing' AND lease_owner = $2 \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(owner)
        .bind(error)
        .bind(error_code)
        .fetch_optional(pool)
        .await?)
}

/// Gives the lease back without an error (shutdown requeues the delivery).
pub async fn release_lease(pool: &PgPool, job_id: Uuid, owner: &str) -> Result<bool, JobError> {
    let done = sqlx::query(
        "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, updated_at = now() \
         WHERE id = $1 AND status = 'processing' AND lease_owner = $2",
    )
    .bind(job_id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The current view of a job, for callers that need to re-read after a no-op.
pub async fn view(pool: &PgPool, job_id: Uuid) -> Result<Option<JobView>, JobError> {
    let sql = format!("SELECT {JOB_VIEW_COLUMNS} FROM jobs WHERE id = $1");
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_optional(pool)
        .await?)
}

/// Artifacts of `done` jobs finished more than `retention` ago and still
/// stored, oldest first: the janitor's batch.
pub async fn stale_artifacts(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, JobError> {
    Ok(sqlx::query_as::<_, (Uuid, String)>(
        "SELECT id, artifact_key FROM jobs \
         WHERE status = 'done' AND artifact_deleted_at IS NULL AND artifact_key IS NOT NULL \
           AND finished_at < now() - $1 \
         ORDER BY finished_at LIMIT $2",
    )
    .bind(interval(retention))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Records that a job's artifact is gone, so its download answers 410.
pub async fn mark_artifact_deleted(
    pool: &PgPool,
    job_id: Uuid,
) -> Result<Option<JobView>, JobError> {
    let sql = format!(
        "UPDATE jobs SET artifact_deleted_at = now(), updated_at = now() \
         WHERE id = $1 AND status = 'done' AND artifact_deleted_at IS NULL \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_optional(pool)
        .await?)
}

/// The operator's DLQ replay: a `failed` job goes back to `queued` with its
/// attempts and error cleared, and unpublished so the outbox relay sends it
/// again. The one sanctioned backwards move; nothing else calls it. A job
/// whose document was dropped (past the DLQ replay window) is not replayed:
/// [`replay_refusal`] says why.
pub async fn reset_for_replay(pool: &PgPool, job_id: Uuid) -> Result<Option<JobView>, JobError> {
    let sql = format!(
        "UPDATE jobs SET status = 'queued', attempts = 0, error = NULL, error_code = NULL, \
         lease_owner = NULL, lease_until = NULL, started_at = NULL, finished_at = NULL, \
         published_at = NULL, updated_at = now() \
         WHERE id = $1 AND status = 'failed' AND payload IS NOT NULL \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_optional(pool)
        .await?)
}

/// Why [`reset_for_replay`] did not requeue a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// The job is not `failed` (done, or already replayed).
    NotFailed,
    /// The job failed longer ago than the DLQ replay window: its document is gone.
    PayloadGone,
    /// The job's row was deleted after the job retention.
    Missing,
}

/// Classifies a job [`reset_for_replay`] left alone.
pub async fn replay_refusal(pool: &PgPool, job_id: Uuid) -> Result<ReplayRefusal, JobError> {
    let row: Option<(String, bool)> =
        sqlx::query_as("SELECT status, payload IS NULL FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        None => ReplayRefusal::Missing,
        Some((status, gone)) if status == "failed" && gone => ReplayRefusal::PayloadGone,
        Some(_) => ReplayRefusal::NotFailed,
    })
}

/// Drops the document of up to `limit` jobs that failed more than `window`
/// ago (out of the DLQ replay window); returns how many. One short
/// statement: rows another transaction holds are skipped, not waited for.
pub async fn drop_failed_payloads(
    pool: &PgPool,
    window: Duration,
    limit: i64,
) -> Result<u64, JobError> {
    let done = sqlx::query(
        "UPDATE jobs SET payload = NULL WHERE id IN ( \
           SELECT id FROM jobs WHERE status = 'failed' AND payload IS NOT NULL \
             AND finished_at < now() - $1 \
           ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         AND status = 'failed'",
    )
    .bind(interval(window))
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A job row the retention deleted: what the caches must forget of it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeletedJob {
    pub id: Uuid,
    pub client_id: Uuid,
    pub idempotency_key: String,
}

/// Deletes up to `limit` final jobs that finished more than `retention` ago
/// and whose artifact (if any) is already deleted, oldest first; their
/// idempotency keys are free again. One short statement per batch: rows
/// another transaction holds (a replay) are skipped, not waited for.
pub async fn delete_expired_jobs(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<Vec<DeletedJob>, JobError> {
    Ok(sqlx::query_as::<_, DeletedJob>(
        "DELETE FROM jobs WHERE id IN ( \
           SELECT id FROM jobs WHERE status IN ('done', 'failed', 'canceled') \
             AND finished_at < now() - $1 \
             AND (artifact_key IS NULL OR artifact_deleted_at IS NOT NULL) \
           ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         AND status IN ('done', 'failed', 'canceled') \
         RETURNING id, client_id, idempotency_key",
    )
    .bind(interval(retention))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
