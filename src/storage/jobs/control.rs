//! The client's control over its jobs: cancellation (`DELETE /jobs/{id}`)
//! and the keyset-paginated job list (`GET /jobs`).
//!
//! A `queued` job (or a `processing` one nobody holds a live lease on) is
//! canceled at once. A job a worker is rendering is only marked
//! (`cancel_requested_at`): the worker's attempt looks at the mark at its
//! checkpoint and finishes the cancel itself with [`finish_cancel`], and the
//! `done` group commit refuses a marked job, so nothing is stored for it.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use super::{JOB_VIEW_COLUMNS, JobError, JobStatus, JobView};

/// What a cancel request found and did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// This request moved the job to `canceled`.
    Canceled(JobView),
    /// The job was `canceled` before (by an earlier request, or by its worker).
    AlreadyCanceled(JobView),
    /// A worker holds the job: the cancel is recorded and the worker stops
    /// at its next checkpoint.
    Requested(JobView),
    /// The job was already `done` or `failed`: nothing to cancel.
    Final(JobView),
    /// No such job for this client.
    Missing,
}

/// Cancels `client`'s job `job_id`, or records the request when a worker
/// holds a live lease on it; see [`Cancel`]. Repeating it is harmless: the
/// mark keeps its first time and a canceled job stays as it is.
pub async fn cancel(pool: &PgPool, job_id: Uuid, client: Uuid) -> Result<Cancel, JobError> {
    // Every CASE reads the row as it was before this UPDATE.
    let sql = format!(
        "UPDATE jobs SET \
           status = CASE WHEN {NOW} THEN 'canceled' ELSE status END, \
           finished_at = CASE WHEN {NOW} THEN now() ELSE finished_at END, \
           payload = CASE WHEN {NOW} THEN NULL ELSE payload END, \
           lease_until = CASE WHEN {NOW} THEN NULL ELSE lease_until END, \
           cancel_requested_at = COALESCE(cancel_requested_at, now()), updated_at = now() \
         WHERE id = $1 AND client_id = $2 AND status IN ('queued', 'processing') \
         RETURNING {JOB_VIEW_COLUMNS}",
        NOW = "(status = 'queued' OR lease_until IS NULL OR lease_until < now())",
    );
    let changed = sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(client)
        .fetch_optional(pool)
        .await?;
    let (view, changed) = match changed {
        Some(view) => (view, true),
        None => {
            let sql =
                format!("SELECT {JOB_VIEW_COLUMNS} FROM jobs WHERE id = $1 AND client_id = $2");
            match sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
                .bind(job_id)
                .bind(client)
                .fetch_optional(pool)
                .await?
            {
                Some(view) => (view, false),
                None => return Ok(Cancel::Missing),
            }
        }
    };
    Ok(match view.status {
        JobStatus::Canceled if changed => Cancel::Canceled(view),
        JobStatus::Canceled => Cancel::AlreadyCanceled(view),
        JobStatus::Done | JobStatus::Failed => Cancel::Final(view),
        JobStatus::Queued | JobStatus::Processing => Cancel::Requested(view),
    })
}

/// The worker's checkpoint: has the client asked to cancel this job?
pub async fn cancel_requested(pool: &PgPool, job_id: Uuid) -> Result<bool, JobError> {
    let asked: Option<bool> =
        sqlx::query_scalar("SELECT cancel_requested_at IS NOT NULL FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
    // A deleted row has nothing left to store either.
    Ok(asked.unwrap_or(true))
}

/// Moves a `processing` job whose cancel was requested to `canceled`, when
/// `owner` holds it or nobody holds a live lease on it (its worker died
/// after the request). `None` when there was nothing to finish.
pub async fn finish_cancel(
    pool: &PgPool,
    job_id: Uuid,
    owner: &str,
) -> Result<Option<JobView>, JobError> {
    let sql = format!(
        "UPDATE jobs SET status = 'canceled', finished_at = now(), payload = NULL, \
         lease_until = NULL, updated_at = now() \
         WHERE id = $1 AND status = 'processing' AND cancel_requested_at IS NOT NULL \
           AND (lease_owner = $2 OR lease_until IS NULL OR lease_until < now()) \
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(owner)
        .fetch_optional(pool)
        .await?)
}

/// Where a page of [`list`] ends: the next page starts after this job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// Up to `limit` of `client`'s jobs, newest first, after `after`, with
/// `status` if given; served by the `jobs_by_client` index. Rows inserted
/// meanwhile are newer than any cursor, so pages never skip or repeat a job.
pub async fn list(
    pool: &PgPool,
    client: Uuid,
    status: Option<JobStatus>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<JobView>, JobError> {
    let sql = format!(
        "SELECT {JOB_VIEW_COLUMNS} FROM jobs \
         WHERE client_id = $1 AND ($2::text IS NULL OR status = $2) \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    );
    Ok(sqlx::query_as::<_, JobView>(AssertSqlSafe(sql))
        .bind(client)
        .bind(status.map(JobStatus::as_str))
        .bind(after.map(|c| c.created_at))
        .bind(after.map(|c| c.id))
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

impl Cursor {
    /// The cursor of a page's last job.
    pub fn after(job: &JobView) -> Self {
        Cursor {
            created_at: job.created_at,
            id: job.id,
        }
    }

    /// The opaque text clients pass back (`next_cursor`): hex, so they
    /// cannot mistake it for something to build themselves.
    pub fn encode(&self) -> String {
        hex::encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    /// Reads [`Cursor::encode`]'s text back; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (micros, id) = text.split_once(':')?;
        Some(Cursor {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_exactly_and_garbage_is_refused() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_860_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode(&hex::encode("12:not-a-uuid")), None);
    }
}
