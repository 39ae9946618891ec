//! The worker's guarded SQL on the real PostgreSQL: claims and leases, final
//! statuses that never move backwards, retention and DLQ replay.

use std::time::Duration;

use artefatos::storage::jobs::JobStatus;
use artefatos::storage::jobs::lifecycle::{self, Artifact, Claim};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

/// A fresh database with the migrations applied, dropped by nobody: names are
/// unique per test so runs never share rows.
pub(crate) async fn database() -> PgPool {
    let name = format!("artefatos_lc_{}", Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("postgres reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .expect("connect");
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .expect("migrate");
    pool
}

pub(crate) async fn insert_job(pool: &PgPool) -> Uuid {
    let client = Uuid::new_v4();
    sqlx::query("INSERT INTO clients (id, name) VALUES ($1, $2)")
        .bind(client)
        .bind(client.to_string())
        .execute(pool)
        .await
        .unwrap();
    let job = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO jobs (id, client_id, idempotency_key, fingerprint, format, filename, payload) \
         VALUES ($1, $2, 'k', '\\x00', 'xlsx', 'r.xlsx', '{\"title\":\"t\"}')",
    )
    .bind(job)
    .bind(client)
    .execute(pool)
    .await
    .unwrap();
    job
}

/// Moves a timestamp of a job two hours into the past, as if time had passed.
async fn backdate(pool: &PgPool, job: Uuid, column: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs SET {column} = now() - interval '2 hours' WHERE id = $1"
    )))
    .bind(job)
    .execute(pool)
    .await
    .unwrap();
}

pub(crate) fn artifact(job: Uuid) -> Artifact {
    Artifact {
        key: format!("jobs/{job}.xlsx"),
        size: 10,
        sha256: "ab".repeat(32),
    }
}

#[tokio::test]
async fn a_claimed_job_is_not_claimed_again_while_its_lease_lives() {
    let pool = database().await;
    let job = insert_job(&pool).await;
    let Claim::Claimed(view) = lifecycle::claim(&pool, job, "w1", LEASE).await.unwrap() else {
        panic!("first claim must win");
    };
    assert_eq!(view.status, JobStatus::Processing);
    assert_eq!(view.attempts, 1);
    assert!(view.started_at.is_some());
    assert!(matches!(
        lifecycle::claim(&pool, job, "w2", LEASE).await.unwrap(),
        Claim::Leased { .. }
    ));
    assert!(
        lifecycle::renew_lease(&pool, job, "w1", LEASE)
            .await
            .unwrap()
    );
    assert!(
        !lifecycle::renew_lease(&pool, job, "w2", LEASE)
            .await
            .unwrap()
    );
    assert_eq!(
        lifecycle::claim(&pool, Uuid::new_v4(), "w1", LEASE)
            .await
            .unwrap(),
        Claim::Missing
    );
}

#[tokio::test]
async fn concurrent_claims_have_exactly_one_winner() {
    let pool = database().await;
    let job = insert_job(&pool).await;
    let claims = futures::future::join_all((0..16).map(|i| {
        let pool = pool.clone();
        async move {
            lifecycle::claim(&pool, job, &format!("w{i}"), LEASE)
                .await
                .unwrap()
        }
    }))
    .await;
    let winners = claims
        .iter()
        .filter(|c| matches!(c, Claim::Claimed(_)))
        .count();
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_owner_cannot_commit() {
    let pool = database().await;
    let job = insert_job(&pool).await;
    assert!(matches!(
        lifecycle::claim(&pool, job, "dead", LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    backdate(&pool, job, "lease_until").await;
    let Claim::Claimed(view) = lifecycle::claim(&pool, job, "heir", LEASE).await.unwrap() else {
        panic!("expired lease must be claimable");
    };
    assert_eq!(view.attempts, 2);
    assert_eq!(
        lifecycle::mark_done(&pool, job, "dead", &artifact(job))
            .await
            .unwrap(),
        None
    );
    let done = lifecycle::mark_done(&pool, job, "heir", &artifact(job))
        .await
        .unwrap()
        .expect("owner commits");
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!(done.artifact_size, Some(10));
}

#[tokio::test]
async fn final_statuses_never_move_backwards() {
    let pool = database().await;
    let job = insert_job(&pool).await;
    lifecycle::claim(&pool, job, "w", LEASE).await.unwrap();
    lifecycle::mark_done(&pool, job, "w", &artifact(job))
        .await
        .unwrap()
        .unwrap();

    assert!(matches!(
        lifecycle::claim(&pool, job, "w", LEASE).await.unwrap(),
        Claim::Finished(v) if v.status == JobStatus::Done
    ));
    assert_eq!(
        lifecycle::mark_failed(&pool, job, "w", "e", "c")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        lifecycle::record_attempt_error(&pool, job, "w", "e", "c")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        lifecycle::expire_if_stale(&pool, job, Duration::ZERO)
            .await
            .unwrap(),
        None
    );
    assert_eq!(lifecycle::reset_for_replay(&pool, job).await.unwrap(), None);
    let view = lifecycle::view(&pool, job).await.unwrap().unwrap();
    assert_eq!(view.status, JobStatus::Done);

    let failed = insert_job(&pool).await;
    lifecycle::mark_failed(&pool, failed, "w", "boom", "render_error")
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        lifecycle::claim(&pool, failed, "w", LEASE).await.unwrap(),
        Claim::Finished(v) if v.status == JobStatus::Failed
    ));
    assert_eq!(
        lifecycle::mark_done(&pool, failed, "w", &artifact(failed))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_retryable_failure_keeps_processing_and_frees_the_lease() {
    let pool = database().await;
    let job = insert_job(&pool).await;
    lifecycle::claim(&pool, job, "w1", LEASE).await.unwrap();
    let view = lifecycle::record_attempt_error(&pool, job, "w1", "storage down", "storage")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status, JobStatus::Processing);
    assert_eq!(view.error.as_deref(), Some("storage down"));
    let Claim::Claimed(view) = lifecycle::claim(&pool, job, "w2", LEASE).await.unwrap() else {
        panic!("a released lease is claimable at once");
    };
    assert_eq!(view.attempts, 2);
    assert_eq!(
        view.error.as_deref(),
        Some("storage down"),
        "last error stays visible"
    );
}

#[tokio::test]
async fn a_stale_queued_job_expires_and_a_replay_requeues_it() {
    let pool = database().await;
    let job = insert_job(&pool).await;
    assert_eq!(
        lifecycle::expire_if_stale(&pool, job, Duration::from_secs(3600))
            .await
            .unwrap(),
        None
    );
    backdate(&pool, job, "created_at").await;
    backdate(&pool, job, "updated_at").await;
    let expired = lifecycle::expire_if_stale(&pool, job, Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("expired");
    assert_eq!(expired.status, JobStatus::Failed);
    assert_eq!(expired.error_code.as_deref(), Some("expired"));

    let replayed = lifecycle::reset_for_replay(&pool, job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replayed.status, JobStatus::Queued);
    assert_eq!(replayed.attempts, 0);
    assert_eq!(replayed.error, None);
    let published: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT published_at FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(published, None, "the relay publishes a replayed job again");
}

#[tokio::test]
async fn the_janitor_sees_only_old_stored_artifacts_and_marks_them_once() {
    let pool = database().await;
    let old = insert_job(&pool).await;
    let fresh = insert_job(&pool).await;
    for job in [old, fresh] {
        lifecycle::claim(&pool, job, "w", LEASE).await.unwrap();
        lifecycle::mark_done(&pool, job, "w", &artifact(job))
            .await
            .unwrap()
            .unwrap();
    }
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '8 days' WHERE id = $1")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    let week = Duration::from_secs(7 * 86_400);
    let stale = lifecycle::stale_artifacts(&pool, week, 100).await.unwrap();
    assert_eq!(stale, vec![(old, format!("jobs/{old}.xlsx"))]);
    let marked = lifecycle::mark_artifact_deleted(&pool, old)
        .await
        .unwrap()
        .unwrap();
    assert!(marked.artifact_deleted);
    assert_eq!(
        lifecycle::mark_artifact_deleted(&pool, old).await.unwrap(),
        None
    );
    assert!(
        lifecycle::stale_artifacts(&pool, week, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_failed_job_keeps_its_document_for_the_replay_window_then_cannot_be_replayed() {
    let pool = database().await;
    let job = insert_job(&pool).await;
    lifecycle::mark_failed(&pool, job, "w", "boom", "render_error")
        .await
        .unwrap()
        .unwrap();
    let hour = Duration::from_secs(3600);
    assert_eq!(
        lifecycle::drop_failed_payloads(&pool, hour, 100)
            .await
            .unwrap(),
        0
    );
    assert!(
        lifecycle::payload(&pool, job).await.is_ok(),
        "kept inside the window"
    );

    backdate(&pool, job, "finished_at").await;
    assert_eq!(
        lifecycle::drop_failed_payloads(&pool, hour, 100)
            .await
            .unwrap(),
        1
    );
    assert!(lifecycle::payload(&pool, job).await.is_err());
    assert_eq!(lifecycle::reset_for_replay(&pool, job).await.unwrap(), None);
    assert_eq!(
        lifecycle::replay_refusal(&pool, job).await.unwrap(),
        lifecycle::ReplayRefusal::PayloadGone
    );

    let deleted = lifecycle::delete_expired_jobs(&pool, hour, 100)
        .await
        .unwrap();
    assert_eq!(deleted.iter().map(|d| d.id).collect::<Vec<_>>(), vec![job]);
    assert_eq!(
        lifecycle::replay_refusal(&pool, job).await.unwrap(),
        lifecycle::ReplayRefusal::Missing
    );
}

#[tokio::test]
async fn only_final_jobs_past_retention_whose_artifact_is_gone_are_deleted() {
    let pool = database().await;
    let queued = insert_job(&pool).await;
    let done = insert_job(&pool).await;
    lifecycle::claim(&pool, done, "w", LEASE).await.unwrap();
    lifecycle::mark_done(&pool, done, "w", &artifact(done))
        .await
        .unwrap()
        .unwrap();
    assert!(
        lifecycle::payload(&pool, done).await.is_err(),
        "done drops the document"
    );
    for job in [queued, done] {
        backdate(&pool, job, "created_at").await;
        backdate(&pool, job, "finished_at").await;
    }
    let hour = Duration::from_secs(3600);
    assert!(
        lifecycle::delete_expired_jobs(&pool, hour, 100)
            .await
            .unwrap()
            .is_empty(),
        "an artifact still stored keeps its row; a queued job is never deleted"
    );
    lifecycle::mark_artifact_deleted(&pool, done)
        .await
        .unwrap()
        .unwrap();
    let deleted = lifecycle::delete_expired_jobs(&pool, hour, 100)
        .await
        .unwrap();
    assert_eq!(deleted.iter().map(|d| d.id).collect::<Vec<_>>(), vec![done]);
    assert!(lifecycle::view(&pool, queued).await.unwrap().is_some());
}
