//! Request side of a job: group-committed inserts and look-ups.
//!
//! `POST /generate` is bounded by PostgreSQL's commit rate, not by its
//! statement rate, so inserts are coalesced: concurrent requests hand their
//! row to a collector that sends whatever has gathered as one multi-row
//! `INSERT … ON CONFLICT DO NOTHING`, one batch at a time on a connection the
//! collector keeps.
//! The unique constraint on (client, idempotency key) is what makes a
//! duplicate job impossible; Redis only spares PostgreSQL the obvious ones.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{JOB_VIEW_COLUMNS, JobError, JobView};
use crate::render::Format;
use crate::storage::batch::{self, Held};

/// Most rows one insert statement carries.
const MAX_BATCH: usize = 256;
/// Insert statements in flight at once. One gathers the most rows per commit,
/// and commits (the WAL flush) are what job creation waits for: measured
/// 5,200 jobs/s with one against 4,100–4,500 with two (BENCHMARKS.md).
const CONCURRENT_BATCHES: usize = 1;
/// Payloads larger than this are inserted on their own, beside the batches,
/// so that one slow statement (up to a 16 MiB document) never holds up the
/// single group commit every other request is waiting for.
const GROUP_COMMIT_MAX_PAYLOAD: usize = 64 * 1024;

/// A job about to be created; `payload` is the document's JSON text.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub client_id: Uuid,
    pub idempotency_key: String,
    pub fingerprint: Vec<u8>,
    pub format: Format,
    pub filename: String,
    pub payload: String,
    /// The client's labels (`POST /generate`'s `metadata`), as a JSON object.
    pub metadata: Option<serde_json::Value>,
}

/// What `create` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// This request created the job.
    New(JobView),
    /// The key already had a job; `fingerprint` is the request that made it.
    Existing { job: JobView, fingerprint: Vec<u8> },
}

type Reply = oneshot::Sender<Result<Created, Arc<sqlx::Error>>>;

/// Creates and reads jobs; cheap to clone.
#[derive(Clone)]
pub struct JobStore {
    pool: PgPool,
    inserts: mpsc::Sender<(NewJob, Reply)>,
}

impl JobStore {
    /// Starts the insert collector on the current runtime.
    pub fn new(pool: PgPool) -> Self {
        let writer = pool.clone();
        let held = Arc::new(Held::new());
        let inserts = batch::spawn(MAX_BATCH, CONCURRENT_BATCHES, move |jobs| {
            let pool = writer.clone();
            let held = held.clone();
            async move { insert_batch(&pool, &held, jobs).await }
        });
        JobStore { pool, inserts }
    }

    /// The pool the store writes to, for the look-ups of other modules.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts the job unless its (client, key) already has one.
    pub async fn create(&self, job: NewJob) -> Result<Created, JobError> {
        if job.payload.len() > GROUP_COMMIT_MAX_PAYLOAD {
            return insert_one(&self.pool, &job).await.map_err(|e| classify(&e));
        }
        let (reply, answer) = oneshot::channel();
        self.inserts
            .send((job, reply))
            .await
            .map_err(|_| JobError::InserterStopped)?;
        match answer.await {
            Ok(Ok(created)) => Ok(created),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(JobError::InserterStopped),
        }
    }

    /// A job by id, whoever owns it (callers check ownership).
    pub async fn get(&self, id: Uuid) -> Result<Option<JobView>, JobError> {
        let sql = format!("SELECT {JOB_VIEW_COLUMNS} FROM jobs WHERE id = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The job a client's idempotency key produced, with its request fingerprint.
    pub async fn find_by_key(
        &self,
        client_id: Uuid,
        key: &str,
    ) -> Result<Option<(JobView, Vec<u8>)>, JobError> {
        let sql = format!(
            "SELECT {JOB_VIEW_COLUMNS}, fingerprint FROM jobs
             WHERE client_id = $1 AND idempotency_key = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(client_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let job = <JobView as sqlx::FromRow<_>>::from_row(&row)?;
            Ok((job, row.try_get("fingerprint")?))
        })
        .transpose()
        .map_err(JobError::Database)
    }
}

/// A row's failure as the caller sees it: data PostgreSQL refuses (SQLSTATE
/// class 22, "data exception") is the request's fault; anything else is the
/// database's, shared among the batch's requests.
fn classify(e: &sqlx::Error) -> JobError {
    match e {
        sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("22")) => {
            JobError::Refused(db.message().to_string())
        }
        other => JobError::Database(share(other)),
    }
}

/// sqlx errors are not `Clone`; a batch shares one error among its requests.
fn share(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

async fn insert_batch(
    pool: &PgPool,
    held: &Held<PoolConnection<Postgres>>,
    batch: Vec<(NewJob, Reply)>,
) {
    // A row the database refuses must not fail its neighbours: the batch is
    // halved and each half tried again, so a bad row ends up alone in
    // O(log n) statements (not one statement per row while every other
    // request waits on the single insert slot).
    let mut pending = vec![batch];
    while let Some(batch) = pending.pop() {
        let jobs: Vec<&NewJob> = batch.iter().map(|(job, _)| job).collect();
        let result = match held.take_or(pool.acquire()).await {
            Ok(mut conn) => {
                let result = insert(&mut conn, &jobs).await;
                // A refused row leaves the connection as good as it was; any
                // other failure (I/O, protocol) may have broken it.
                match result {
                    Ok(_) | Err(sqlx::Error::Database(_)) => held.keep(conn),
                    Err(_) => conn.close_on_drop(),
                }
                result
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(results) => {
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(sqlx::Error::Database(_)) if batch.len() > 1 => {
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                pending.push(second);
                pending.push(first);
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One job in a statement of its own, outside the group commit.
async fn insert_one(pool: &PgPool, job: &NewJob) -> Result<Created, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    insert(&mut conn, &[job])
        .await?
        .pop()
        .ok_or_else(|| sqlx::Error::Protocol("an insert without an outcome".into()))
}

/// One statement for the whole batch; returns one outcome per job, in order.
async fn insert(conn: &mut PgConnection, jobs: &[&NewJob]) -> Result<Vec<Created>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO jobs (id, client_id, idempotency_key, fingerprint, format, filename, payload,
                           metadata)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::text[],
                              $6::text[], $7::text[]::json[], $8::text[]::jsonb[])
         ON CONFLICT (client_id, idempotency_key) DO NOTHING
         RETURNING {JOB_VIEW_COLUMNS}"
    );
    let inserted: Vec<JobView> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(jobs.iter().map(|j| j.id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.client_id).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.idempotency_key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.fingerprint.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.format.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.filename.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.payload.as_str()).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.metadata.as_ref().map(|m| m.to_string()))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    let inserted: HashMap<Uuid, JobView> = inserted.into_iter().map(|j| (j.id, j)).collect();

    // Rows skipped by the conflict: the key's job already existed (or was
    // inserted by a twin request in this very batch).
    let missing: Vec<&&NewJob> = jobs
        .iter()
        .filter(|j| !inserted.contains_key(&j.id))
        .collect();
    let mut existing: HashMap<(Uuid, String), (JobView, Vec<u8>)> = HashMap::new();
    if !missing.is_empty() {
        let sql = format!(
            "SELECT {JOB_VIEW_COLUMNS}, idempotency_key, fingerprint FROM jobs
             WHERE (client_id, idempotency_key) IN
                   (SELECT * FROM UNNEST($1::uuid[], $2::text[]))"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(missing.iter().map(|j| j.client_id).collect::<Vec<_>>())
            .bind(
                missing
                    .iter()
                    .map(|j| j.idempotency_key.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let job = <JobView as sqlx::FromRow<_>>::from_row(&row)?;
            let key: String = row.try_get("idempotency_key")?;
            existing.insert((job.client_id, key), (job, row.try_get("fingerprint")?));
        }
    }

    jobs.iter()
        .map(|j| match inserted.get(&j.id) {
            Some(job) => Ok(Created::New(job.clone())),
            None => existing
                .get(&(j.client_id, j.idempotency_key.clone()))
                .map(|(job, fingerprint)| Created::Existing {
                    job: job.clone(),
                    fingerprint: fingerprint.clone(),
                })
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "job {} neither inserted nor found by its key",
                        j.id
                    ))
                }),
        })
        .collect()
}
