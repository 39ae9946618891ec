//! What an operator relies on: the health of the tree, the queue-depth gauge,
//! retention, and a worker that rides out a broker outage.

use std::time::Duration;

use artefatos::actors::ActorState;
use artefatos::metrics::recorder;
use artefatos::render::Format;
use artefatos::storage::queue::Topology;

use crate::support::{Options, poll_until, spawn_app, spawn_app_with};

use crate::worker_support::{big_body, depth, dlq, post_job, start_worker};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_health_report_lists_every_actor_of_the_worker_role_running() {
    let app = spawn_app().await;
    let worker = start_worker(&app.config).await;
    assert!(
        poll_until(DEADLINE, || async {
            worker
                .health()
                .actors
                .iter()
                .filter(|a| a.name.starts_with("consumer."))
                .all(|a| a.state == ActorState::Running)
        })
        .await
    );
    let health = worker.health();
    let names: Vec<&str> = health.actors.iter().map(|a| a.name.as_str()).collect();
    for expected in [
        "root",
        "consumer.xlsx",
        "consumer.pdf",
        "pool.xlsx",
        "pool.pdf",
        "renderer.xlsx.0",
        "renderer.pdf.1",
        "uploader",
        "cache_writer",
        "relay",
        "janitor",
        "queue_depth",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert!(health.actors.iter().all(|a| a.restarts == 0));
    assert!(!worker.failed());
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["role"], "worker");
    assert!(json["actors"][0]["jobs_in_flight"].is_number());
    worker.shutdown().await;
    assert_eq!(
        worker
            .health()
            .actors
            .iter()
            .find(|a| a.name == "root")
            .map(|a| a.state),
        Some(ActorState::Stopped)
    );
    assert!(!worker.failed(), "a requested stop is not a failure");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), worker.stopped())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_queue_depth_gauge_reports_each_work_queue() {
    let app = spawn_app().await;
    // Jobs wait in the queue: no worker consumes this format.
    for _ in 0..3 {
        post_job(&app, "pdf", None).await;
    }
    let mut config = app.config.clone();
    config.worker.formats = vec![artefatos::render::Format::Xlsx];
    let worker = start_worker(&config).await;
    let line = format!(
        "artefatos_queue_depth{{queue=\"{}.work.pdf\",format=\"pdf\"}} 3",
        app.config.namespace
    );
    assert!(
        poll_until(DEADLINE, || async { recorder().render().contains(&line) }).await,
        "{line} in /metrics"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn artifacts_past_retention_are_deleted_and_downloads_answer_410() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_RETENTION", "1s".into())],
        ..Default::default()
    })
    .await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "xlsx", None).await;
    app.wait_for_status(&job, "done", DEADLINE).await;
    let root = app.s3.as_ref().unwrap().root();
    let stored = |root: std::path::PathBuf, job: String| async move {
        walk(&root).iter().any(|p| p.contains(&job))
    };
    assert!(
        poll_until(DEADLINE, || async {
            app.get(&format!("/download/{job}")).await.status() == 410
        })
        .await,
        "download answers 410 once the janitor ran"
    );
    assert!(!stored(root, job.clone()).await, "the object is gone");
    worker.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path.to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[tokio::test]
async fn a_worker_rides_out_a_broker_outage() {
    let app = spawn_app_with(Options {
        proxy_rabbitmq: true,
        ..Default::default()
    })
    .await;
    let worker = start_worker(&app.config).await;
    let consuming = || async {
        worker
            .health()
            .actors
            .iter()
            .filter(|a| a.name.starts_with("consumer."))
            .all(|a| a.state == ActorState::Running)
    };
    assert!(poll_until(DEADLINE, consuming).await);
    let proxy = app.rabbitmq_proxy.as_ref().unwrap();
    proxy.cut();
    assert!(
        poll_until(DEADLINE, || async {
            worker
                .health()
                .actors
                .iter()
                .any(|a| a.name.starts_with("consumer.") && a.state == ActorState::Connecting)
        })
        .await,
        "the consumer noticed the outage"
    );
    // Accepted while the broker is unreachable: waits in the outbox.
    let job = post_job(&app, "xlsx", None).await;
    proxy.restore();
    app.wait_for_status(&job, "done", Duration::from_secs(60))
        .await;
    assert!(poll_until(DEADLINE, consuming).await);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_job_finishing_during_a_broker_outage_is_acked_after_the_reconnect() {
    let app = spawn_app_with(Options {
        proxy_rabbitmq: true,
        ..Default::default()
    })
    .await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "xlsx", Some(big_body(60_000))).await;
    let pool = app.pool.clone();
    let id = job.clone();
    assert!(
        poll_until(DEADLINE, || {
            let (pool, id) = (pool.clone(), id.clone());
            async move {
                sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE id = $1::uuid")
                    .bind(&id)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    == "processing"
            }
        })
        .await
    );
    // The delivery's connection dies while the job renders: its ack is lost.
    let proxy = app.rabbitmq_proxy.as_ref().unwrap();
    proxy.cut();
    let status = app.wait_for_status(&job, "done", DEADLINE).await;
    proxy.restore();
    // The broker redelivers the unacked message; the worker finds the job
    // done and acks it without a second render.
    let work = Topology::new(&app.config).work_queue(Format::Xlsx);
    assert!(
        poll_until(DEADLINE, || async {
            depth(&app.config, &work).await == 0
                && worker
                    .health()
                    .actors
                    .iter()
                    .filter(|a| a.name.starts_with("consumer."))
                    .all(|a| a.jobs_in_flight == 0 && a.state == ActorState::Running)
        })
        .await
    );
    assert_eq!(status["attempts"], 1, "{status}");
    assert_eq!(app.status(&job).await["attempts"], 1, "rendered once");
    assert_eq!(depth(&app.config, &dlq(&app.config)).await, 0);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_redis_outage_only_costs_cache_freshness() {
    let app = spawn_app_with(Options {
        proxy_redis: true,
        ..Default::default()
    })
    .await;
    // Queued while Redis is up (so the cache holds `queued`), done while it is down.
    let job = post_job(&app, "pdf", None).await;
    app.redis_proxy.as_ref().unwrap().cut();
    let worker = start_worker(&app.config).await;
    let status = app.wait_for_status(&job, "done", DEADLINE).await;
    assert_eq!(status["attempts"], 1, "{status}");
    let cache_writer = worker
        .health()
        .actors
        .into_iter()
        .find(|a| a.name == "cache_writer")
        .expect("cache writer line");
    assert_eq!(cache_writer.state, ActorState::Running);
    assert_eq!(cache_writer.restarts, 0);

    // The outage outlasts every write deadline (1 s) and the cache's cool-off
    // (2 s): the transitions are really missed, not merely delayed. (This
    // sleep is the outage's length, not a wait for something to happen.)
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Redis back: the transitions it missed are written after all, so the
    // cached status (read first) catches up long before its 5 min TTL.
    app.redis_proxy.as_ref().unwrap().restore();
    let redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}:status:{job}", app.config.namespace);
    let caught_up = poll_until(DEADLINE, || {
        let (mut redis, key) = (redis.clone(), key.clone());
        async move {
            let cached: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            cached.is_some_and(|c| c.contains("\"status\":\"done\""))
        }
    })
    .await;
    assert!(caught_up, "the missed transition reached the cache");
    worker.shutdown().await;
}
