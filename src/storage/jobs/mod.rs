//! Jobs in PostgreSQL: the source of truth for every job and, through
//! `published_at`, the transactional outbox.
//!
//! `create` holds the request side (batched inserts, look-ups, the outbox
//! scan); `lifecycle` holds the worker side (claims, leases, final statuses,
//! retention). Every status change is a guarded `UPDATE` so that a late or
//! duplicate message can never move a job backwards.

pub mod commits;
pub mod control;
pub mod create;
pub mod lifecycle;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::render::Format;

/// Where a job is in its life. Only ever moves forward:
/// `queued → processing → done | failed | canceled` (a lost lease lets
/// another worker take `processing` over; it never returns to `queued`;
/// `queued → canceled` is the client's cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Processing,
    Done,
    Failed,
    /// Canceled by its client (`DELETE /jobs/{id}`); nothing was stored.
    Canceled,
}

impl JobStatus {
    /// The lowercase name stored in SQL and shown to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Parses the SQL value; unknown text is a storage bug, reported as such.
    pub fn parse(text: &str) -> Result<Self, JobError> {
        match text {
            "queued" => Ok(JobStatus::Queued),
            "processing" => Ok(JobStatus::Processing),
            "done" => Ok(JobStatus::Done),
            "failed" => Ok(JobStatus::Failed),
            "canceled" => Ok(JobStatus::Canceled),
            other => Err(JobError::Corrupt(format!("unknown status {other:?}"))),
        }
    }

    /// `done`, `failed` and `canceled` never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

/// What clients and caches see of a job: everything but the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: Uuid,
    pub client_id: Uuid,
    pub format: Format,
    pub filename: String,
    pub status: JobStatus,
    pub attempts: i32,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub artifact_key: Option<String>,
    pub artifact_size: Option<i64>,
    pub artifact_sha256: Option<String>,
    pub artifact_deleted: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The client asked to cancel the job while a worker held it.
    /// (`default`: status entries cached before the field existed.)
    #[serde(default)]
    pub cancel_requested: bool,
    /// The client's own labels, given with `POST /generate`.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Columns that build a [`JobView`]; shared by every query that returns one.
pub const JOB_VIEW_COLUMNS: &str = "id, client_id, format, filename, status, attempts, error, \
     error_code, artifact_key, artifact_size, artifact_sha256, \
     (artifact_deleted_at IS NOT NULL) AS artifact_deleted, created_at, started_at, finished_at, \
     (cancel_requested_at IS NOT NULL) AS cancel_requested, metadata";

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for JobView {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let format: String = row.try_get("format")?;
        let status: String = row.try_get("status")?;
        let decode = |e: String| sqlx::Error::Decode(e.into());
        Ok(JobView {
            id: row.try_get("id")?,
            client_id: row.try_get("client_id")?,
            format: format
                .parse()
                .map_err(|_| decode(format!("unknown format {format:?}")))?,
            filename: row.try_get("filename")?,
            status: JobStatus::parse(&status).map_err(|e| decode(e.to_string()))?,
            attempts: row.try_get("attempts")?,
            error: row.try_get("error")?,
            error_code: row.try_get("error_code")?,
            artifact_key: row.try_get("artifact_key")?,
            artifact_size: row.try_get("artifact_size")?,
            artifact_sha256: row.try_get("artifact_sha256")?,
            artifact_deleted: row.try_get("artifact_deleted")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            cancel_requested: row.try_get("cancel_requested")?,
            metadata: row.try_get("metadata")?,
        })
    }
}

/// Failures of the jobs store.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The batching inserter is gone (process shutting down).
    #[error("the job inserter has stopped")]
    InserterStopped,
    #[error("corrupt job row: {0}")]
    Corrupt(String),
    /// PostgreSQL refused the row's data (SQLSTATE class 22, e.g. a NUL in
    /// text): the request's fault, not the service's, and a retry fails too.
    #[error("the database refused the row: {0}")]
    Refused(String),
    /// A group commit failed; every job in it gets this copy of the reason.
    #[error("batch commit: {reason}")]
    Batch { reason: String, unavailable: bool },
}

impl JobError {
    /// PostgreSQL could not be reached (or is going away with the process):
    /// the same call may pass later. Everything else is an answer that will
    /// not change, so a worker spends an attempt on it instead of waiting.
    pub fn is_unavailable(&self) -> bool {
        match self {
            JobError::Database(e) => crate::storage::db::is_unavailable(e),
            JobError::InserterStopped => true,
            JobError::Batch { unavailable, .. } => *unavailable,
            JobError::Corrupt(_) | JobError::Refused(_) => false,
        }
    }

    /// A copy for each job of a failed batch (`sqlx::Error` is not `Clone`).
    pub(crate) fn for_batch(&self) -> JobError {
        JobError::Batch {
            reason: self.to_string(),
            unavailable: self.is_unavailable(),
        }
    }
}

/// The deterministic artifact key of a job: a repeated attempt overwrites the
/// same object instead of adding another.
pub fn artifact_key(job_id: Uuid, format: Format) -> String {
    format!("jobs/{job_id}.{}", format.as_str())
}

/// A job's whole row for operators (`artefatos jobs show`): every column but
/// the payload, which is summarised by its size.
pub async fn record(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<serde_json::Value>, JobError> {
    Ok(sqlx::query_scalar(
        "SELECT to_jsonb(j) - 'payload' - 'fingerprint'
                || jsonb_build_object('fingerprint', encode(j.fingerprint, 'hex'),
                                      'payload_bytes', octet_length(j.payload::text))
         FROM jobs j WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}
