//! Deliveries that are not simply "one message, one worker": the same message
//! twice (also concurrently), several workers on one queue, and a worker
//! stopped gracefully in the middle of a burst.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use artefatos::render::Format;
use artefatos::storage::queue::{Publisher, Topology};
use uuid::Uuid;

use crate::support::{Options, TestApp, poll_until, spawn_app, spawn_app_with};
use crate::worker_support::{depth, dlq, post_job, start_worker, wait_for_consumers};

const DEADLINE: Duration = Duration::from_secs(60);

/// Files stored under the app's bucket whose name contains `needle`.
fn stored_objects(app: &TestApp, needle: &str) -> usize {
    fn walk(dir: &Path, needle: &str) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let path = e.path();
                        if path.is_dir() {
                            walk(&path, needle)
                        } else {
                            usize::from(path.to_string_lossy().contains(needle))
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&app.s3.as_ref().expect("s3").root(), needle)
}

/// Rows per status and the distinct finishing workers of the app's jobs.
async fn statuses(app: &TestApp) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

async fn all_done(app: &TestApp, n: i64) -> bool {
    statuses(app).await.get("done").copied() == Some(n)
}

#[tokio::test]
async fn the_same_message_delivered_many_times_renders_once_and_never_regresses() {
    let app = spawn_app().await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "xlsx", None).await;
    let id = Uuid::parse_str(&job).unwrap();
    // Duplicates racing the original, as the outbox relay may produce them.
    let publisher = Publisher::connect(&app.config).await.unwrap();
    let sends = (0..3).map(|_| publisher.publish(id, Format::Xlsx));
    for sent in futures::future::join_all(sends).await {
        sent.expect("duplicate published");
    }
    app.wait_for_status(&job, "done", DEADLINE).await;
    // Every copy settled: nothing ready, nothing held by the worker.
    let work = Topology::new(&app.config).work_queue(Format::Xlsx);
    assert!(
        poll_until(DEADLINE, || async {
            depth(&app.config, &work).await == 0 && worker_idle(&worker)
        })
        .await,
        "every duplicate was acked"
    );
    // One more, long after `done`.
    publisher.publish(id, Format::Xlsx).await.unwrap();
    assert!(
        poll_until(DEADLINE, || async {
            depth(&app.config, &work).await == 0 && worker_idle(&worker)
        })
        .await
    );
    let status = app.status(&job).await;
    assert_eq!(status["status"], "done");
    assert_eq!(status["attempts"], 1, "claimed and rendered once: {status}");
    assert_eq!(stored_objects(&app, &job), 1, "one artifact");
    assert_eq!(depth(&app.config, &dlq(&app.config)).await, 0);
    worker.shutdown().await;
}

fn worker_idle(worker: &artefatos::actors::WorkerHandle) -> bool {
    worker
        .health()
        .actors
        .iter()
        .filter(|a| a.name.starts_with("consumer."))
        .all(|a| a.jobs_in_flight == 0)
}

#[tokio::test]
async fn several_workers_on_one_queue_share_the_jobs_and_do_each_once() {
    let app = spawn_app().await;
    let workers = vec![
        start_worker(&app.config).await,
        start_worker(&app.config).await,
        start_worker(&app.config).await,
    ];
    assert!(wait_for_consumers(&app.config, Format::Xlsx, 3).await);
    let mut jobs = Vec::new();
    for _ in 0..30 {
        jobs.push(post_job(&app, "xlsx", None).await);
    }
    assert!(
        poll_until(DEADLINE, || all_done(&app, 30)).await,
        "{:?}",
        statuses(&app).await
    );
    let owners: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT lease_owner, count(*), max(attempts)::bigint FROM jobs GROUP BY lease_owner",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let ids: Vec<&str> = workers.iter().map(|w| w.worker_id()).collect();
    assert!(owners.len() >= 2, "jobs spread over workers: {owners:?}");
    for (owner, _, max_attempts) in &owners {
        assert!(ids.contains(&owner.as_str()), "{owner} is one of {ids:?}");
        assert_eq!(*max_attempts, 1, "each job done once: {owners:?}");
    }
    for worker in &workers {
        worker.shutdown().await;
    }
}

#[tokio::test]
async fn a_worker_stopped_during_a_burst_loses_nothing() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_SHUTDOWN_GRACE", "2s".into())],
        ..Default::default()
    })
    .await;
    let total = 200;
    for i in 0..total {
        let format = if i % 2 == 0 { "xlsx" } else { "pdf" };
        post_job(&app, format, None).await;
    }
    // Everything is queued before the worker starts, so it is stopped mid-burst.
    let first = start_worker(&app.config).await;
    assert!(
        poll_until(DEADLINE, || async {
            statuses(&app).await.get("done").copied().unwrap_or(0) >= 10
        })
        .await
    );
    first.shutdown().await;
    let done_at_stop = statuses(&app).await.get("done").copied().unwrap_or(0);
    assert!(done_at_stop < total, "the stop happened mid-burst");

    let second = start_worker(&app.config).await;
    assert!(
        poll_until(Duration::from_secs(180), || all_done(&app, total)).await,
        "every job done: {:?}",
        statuses(&app).await
    );
    assert_eq!(depth(&app.config, &dlq(&app.config)).await, 0);
    second.shutdown().await;
}

#[tokio::test]
async fn a_render_longer_than_the_lease_keeps_its_lease_against_a_duplicate() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_LEASE", "1s".into())],
        ..Default::default()
    })
    .await;
    let first = start_worker(&app.config).await;
    let second = start_worker(&app.config).await;
    assert!(wait_for_consumers(&app.config, Format::Xlsx, 2).await);
    // Several lease periods of rendering, and a duplicate message that the
    // other worker keeps trying to claim meanwhile.
    let job = post_job(&app, "xlsx", Some(crate::worker_support::big_body(60_000))).await;
    let id = Uuid::parse_str(&job).unwrap();
    Publisher::connect(&app.config)
        .await
        .unwrap()
        .publish(id, Format::Xlsx)
        .await
        .unwrap();
    let status = app.wait_for_status(&job, "done", DEADLINE).await;
    let took = chrono::DateTime::parse_from_rfc3339(status["finished_at"].as_str().unwrap())
        .unwrap()
        - chrono::DateTime::parse_from_rfc3339(status["started_at"].as_str().unwrap()).unwrap();
    assert!(
        took > chrono::Duration::seconds(1),
        "the attempt outlived one lease ({took}); make the document bigger"
    );
    assert_eq!(status["attempts"], 1, "renewed, never taken over: {status}");
    let stopping = std::time::Instant::now();
    first.shutdown().await;
    second.shutdown().await;
    // A delivery only waiting for another worker's lease is not held for the
    // grace period (30 s by default).
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
}
