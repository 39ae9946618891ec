//! The worker's pipeline under its own failures: a group commit that
//! PostgreSQL refuses, the uploader dying with uploads in flight, a lease
//! lost mid-render, and big documents sharing the renderers with small ones.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::support::{Options, TestApp, generate_body, poll_until, spawn_app_with};
use crate::worker_support::{big_body, dlq, post_job, start_worker, wait_for_dlq};

const DEADLINE: Duration = Duration::from_secs(60);

fn body_named(format: &str, filename: &str) -> Value {
    let mut body = generate_body(format, &Uuid::new_v4().to_string());
    body["filename"] = Value::String(filename.to_string());
    body
}

async fn job_row(app: &TestApp, job: &str) -> (String, i32, Option<String>, Option<String>) {
    sqlx::query_as("SELECT status, attempts, error_code, error FROM jobs WHERE id = $1::uuid")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_the_database_refuses_spends_its_attempts_and_fails_alone() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_RETRY_DELAYS", "100ms,200ms,300ms".into())],
        ..Default::default()
    })
    .await;
    // PostgreSQL refuses to mark one job done: an answer that never changes.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.status = 'done' AND NEW.filename = 'poison.xlsx' THEN
             RAISE EXCEPTION 'poisoned job row';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE UPDATE ON jobs
           FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Posted before the worker starts, so its batches mix them.
    let poison = post_job(&app, "xlsx", Some(body_named("xlsx", "poison"))).await;
    let mut others = Vec::new();
    for _ in 0..12 {
        others.push(post_job(&app, "xlsx", None).await);
    }
    let worker = start_worker(&app.config).await;

    for job in &others {
        let status = app.wait_for_status(job, "done", DEADLINE).await;
        assert_eq!(
            status["attempts"], 1,
            "never failed with its batch: {status}"
        );
    }
    let status = app.wait_for_status(&poison, "failed", DEADLINE).await;
    let (_, attempts, code, error) = job_row(&app, &poison).await;
    assert_eq!(attempts, 4, "every attempt spent: {status}");
    assert_eq!(code.as_deref(), Some("database_failed"));
    let error = error.unwrap_or_default();
    assert!(!error.contains("poisoned"), "no internals: {error}");
    assert!(
        wait_for_dlq(&app.config, 1, DEADLINE).await,
        "{}",
        dlq(&app.config)
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn the_uploader_dying_with_uploads_in_flight_loses_none() {
    let app = spawn_app_with(Options::default()).await;
    let token = Uuid::new_v4().simple().to_string();
    let faulty = body_named("xlsx", &format!("fault-uploader-panic-once-{token}"));
    let faulty = post_job(&app, "xlsx", Some(faulty)).await;
    let mut others = Vec::new();
    for _ in 0..12 {
        others.push(post_job(&app, "xlsx", None).await);
    }
    let worker = start_worker(&app.config).await;

    let status = app.wait_for_status(&faulty, "done", DEADLINE).await;
    assert_eq!(
        status["attempts"], 2,
        "the crashed upload was retried: {status}"
    );
    for job in &others {
        app.wait_for_status(job, "done", DEADLINE).await;
    }
    let health = worker.health();
    let uploader = health
        .actors
        .iter()
        .find(|a| a.name == "uploader")
        .expect("uploader line");
    assert_eq!(uploader.restarts, 1, "{health:?}");
    assert!(
        uploader
            .last_failure
            .as_deref()
            .unwrap_or_default()
            .contains("injected uploader fault"),
        "{health:?}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn an_attempt_that_lost_its_lease_stores_nothing() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_LEASE", "300ms".into())],
        ..Default::default()
    })
    .await;
    let job = post_job(&app, "xlsx", Some(big_body(150_000))).await;
    let worker = start_worker(&app.config).await;
    let pool = app.pool.clone();
    let claimed = poll_until(DEADLINE, || {
        let (pool, job) = (pool.clone(), job.clone());
        async move {
            // Another worker takes the job over while it renders.
            sqlx::query(
                "UPDATE jobs SET lease_owner = 'thief', lease_until = now() + interval '1 hour'
                 WHERE id = $1::uuid AND status = 'processing'",
            )
            .bind(&job)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected()
                == 1
        }
    })
    .await;
    assert!(claimed, "the job was claimed");
    // The attempt ends (its delivery settled) without storing anything.
    let ended = poll_until(DEADLINE, || async {
        worker
            .health()
            .actors
            .iter()
            .find(|a| a.name == "pool.xlsx")
            .is_some_and(|a| a.jobs_in_flight == 0)
    })
    .await;
    assert!(ended, "{:?}", worker.health());
    let object = app
        .s3
        .as_ref()
        .expect("s3")
        .root()
        .join(bucket(&app))
        .join(format!("jobs/{job}.xlsx"));
    assert!(!object.exists(), "nothing stored at {}", object.display());
    let (status, _, _, _) = job_row(&app, &job).await;
    assert_eq!(status, "processing", "still the thief's");
    worker.shutdown().await;
}

fn bucket(app: &TestApp) -> String {
    match &app.config.storage {
        artefatos::config::StorageConfig::S3(s3) => s3.bucket.clone(),
        other => panic!("S3 storage expected, got {other:?}"),
    }
}

#[tokio::test]
async fn big_documents_never_hold_every_renderer() {
    // Two renderers, and every document counts as big but a tiny one.
    let app = spawn_app_with(Options {
        vars: vec![
            ("ARTEFATOS_RENDERERS", "2".into()),
            ("ARTEFATOS_BIG_DOCUMENT_BYTES", "4096".into()),
        ],
        ..Default::default()
    })
    .await;
    let worker = start_worker(&app.config).await;
    let big = [
        post_job(&app, "xlsx", Some(big_body(40_000))).await,
        post_job(&app, "xlsx", Some(big_body(40_000))).await,
    ];
    // Both big jobs are claimed: one renders, one waits for its turn.
    let pool = app.pool.clone();
    assert!(
        poll_until(DEADLINE, || {
            let pool = pool.clone();
            async move {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'processing'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                n == 2
            }
        })
        .await
    );
    let small = post_job(&app, "xlsx", None).await;
    app.wait_for_status(&small, "done", DEADLINE).await;
    let finished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = 'done'",
    )
    .bind(&big[..])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(finished, 0, "the small job did not wait for a big one");
    for job in &big {
        app.wait_for_status(job, "done", DEADLINE).await;
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn a_render_past_its_deadline_fails_the_job_for_good() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_RENDER_TIMEOUT", "1ms".into())],
        ..Default::default()
    })
    .await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "xlsx", Some(big_body(20_000))).await;
    let status = app.wait_for_status(&job, "failed", DEADLINE).await;
    assert_eq!(status["error"]["code"], "render_timeout", "{status}");
    assert_eq!(status["attempts"], 1, "never retried: {status}");
    assert!(wait_for_dlq(&app.config, 1, DEADLINE).await);
    worker.shutdown().await;
}
