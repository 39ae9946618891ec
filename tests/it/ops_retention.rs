//! Retention: a final job keeps no document it no longer needs, its row is
//! deleted after the job retention, and its idempotency key then starts a
//! new job; `dlq replay --all` looks only at the records present when it starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use artefatos::actors::Role;
use artefatos::storage::dlq::{self, ReplayOutcome};
use artefatos::storage::queue::{self, Topology, publish_dlq_record};
use lapin::BasicProperties;
use lapin::options::ConfirmSelectOptions;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Options, generate_body, poll_until, spawn_app_with};

#[tokio::test]
async fn a_done_job_drops_its_document_its_row_expires_and_its_key_then_makes_a_new_job() {
    let app = spawn_app_with(Options {
        role: Some(Role::All),
        vars: vec![
            ("ARTEFATOS_RETENTION", "1s".into()),
            ("ARTEFATOS_JOB_RETENTION", "2s".into()),
        ],
        filesystem: true,
        ..Options::default()
    })
    .await;
    let body = generate_body("xlsx", "reused-after-retention");
    let first: Value = app.generate(&body).await.json().await.unwrap();
    let first_id = first["job_id"].as_str().unwrap().to_string();
    app.wait_for_status(&first_id, "done", Duration::from_secs(30))
        .await;
    let payload_gone: bool = sqlx::query_scalar("SELECT payload IS NULL FROM jobs WHERE id = $1")
        .bind(Uuid::parse_str(&first_id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(payload_gone, "a done job keeps no document");

    // The janitor deletes the artifact, then the row.
    assert!(
        poll_until(Duration::from_secs(30), || async {
            app.job_count().await == 0
        })
        .await,
        "the job row was never deleted"
    );
    let status = app.get(&format!("/status/{first_id}")).await;
    assert_eq!(status.status(), 404, "a deleted job is unknown");

    // The same key and body again: a new job, not a replay of the deleted one.
    let again = app.generate(&body).await;
    assert_eq!(again.status(), 202);
    assert!(again.headers().get("idempotent-replayed").is_none());
    let second: Value = again.json().await.unwrap();
    assert_ne!(second["job_id"], first["job_id"]);
    app.wait_for_status(
        second["job_id"].as_str().unwrap(),
        "done",
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test]
async fn dlq_replay_all_stops_at_the_records_present_when_it_started() {
    let app = spawn_app_with(Options {
        filesystem: true,
        ..Options::default()
    })
    .await;
    let topology = Topology::new(&app.config);
    let connection = queue::connect(&app.config.amqp_url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    let feeder = connection.create_channel().await.unwrap();
    feeder
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    const PRESENT: usize = 20;
    for _ in 0..PRESENT {
        publish_dlq_record(
            &feeder,
            &topology,
            Uuid::new_v4(),
            "test",
            &BasicProperties::default(),
        )
        .await
        .unwrap();
    }

    // Jobs failing again while the replay runs: records keep arriving.
    let stop = Arc::new(AtomicBool::new(false));
    let fed = Arc::new(AtomicUsize::new(0));
    let feeding = {
        let (stop, fed, topology) = (stop.clone(), fed.clone(), topology.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) && fed.load(Ordering::SeqCst) < 5_000 {
                publish_dlq_record(
                    &feeder,
                    &topology,
                    Uuid::new_v4(),
                    "again",
                    &BasicProperties::default(),
                )
                .await
                .unwrap();
                fed.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        dlq::replay(&channel, &topology, &app.pool, None),
    )
    .await
    .expect("the replay ends")
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    feeding.await.unwrap();
    let fed = fed.load(Ordering::SeqCst);
    // At most the few records the feeder got in before the replay counted
    // the queue; every later one stays for the next replay.
    assert!(
        outcomes.len() >= PRESENT && outcomes.len() < PRESENT + 50,
        "{} records replayed of {PRESENT} present at the start ({fed} fed meanwhile)",
        outcomes.len()
    );
    assert!(outcomes.iter().all(|(_, o)| *o == ReplayOutcome::Missing));
}

#[tokio::test]
async fn a_stalled_broker_holds_neither_the_sweep_nor_its_row_locks() {
    use artefatos::storage::outbox::Outbox;
    use artefatos::storage::queue::{CONFIRM_TIMEOUT, Publisher};

    let app = spawn_app_with(Options {
        proxy_rabbitmq: true,
        filesystem: true,
        ..Options::default()
    })
    .await;
    let published = |id: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT published_at IS NOT NULL FROM jobs WHERE id = $1")
                .bind(Uuid::parse_str(&id).unwrap())
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // A sweeper of our own, connected through the proxy before the stall.
    let outbox = Outbox::new(app.pool.clone(), Publisher::lazy(&app.config));
    outbox.check().await.unwrap();
    let first: Value = app
        .generate(&generate_body("pdf", "before"))
        .await
        .json()
        .await
        .unwrap();
    let first = first["job_id"].as_str().unwrap().to_string();
    assert!(poll_until(Duration::from_secs(10), || published(first.clone())).await);

    let proxy = app.rabbitmq_proxy.as_ref().unwrap();
    proxy.stall();
    let accepted = app.generate(&generate_body("pdf", "during")).await;
    assert_eq!(
        accepted.status(),
        202,
        "the API does not wait for the broker"
    );
    let job: Value = accepted.json().await.unwrap();
    let job = job["job_id"].as_str().unwrap().to_string();
    sqlx::query("UPDATE jobs SET created_at = now() - interval '1 minute' WHERE id = $1")
        .bind(Uuid::parse_str(&job).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();

    // The sweep gives up within the publish timeout and commits, releasing
    // its row locks and its connection.
    let swept = tokio::time::timeout(CONFIRM_TIMEOUT * 2, outbox.sweep())
        .await
        .expect("the sweep returns while the broker is stalled");
    // Either this sweep tried and gave up, or the app's own relay had the row
    // locked (SKIP LOCKED) and this one found nothing: never a publish.
    assert!(
        matches!(swept, Err(_) | Ok(0)),
        "nothing was confirmed: {swept:?}"
    );
    assert!(!published(job.clone()).await);

    // The broker returns (the stalled connections are dropped): published.
    proxy.cut();
    proxy.restore();
    assert!(poll_until(Duration::from_secs(30), || published(job.clone())).await);
}

#[tokio::test]
async fn an_idempotency_entry_naming_a_deleted_job_starts_a_new_job() {
    let app = spawn_app_with(Options {
        filesystem: true,
        ..Options::default()
    })
    .await;
    let body = generate_body("pdf", "entry-outlives-row");
    let first: Value = app.generate(&body).await.json().await.unwrap();
    let first_id = Uuid::parse_str(first["job_id"].as_str().unwrap()).unwrap();
    let redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The entry becomes `job:{id}` in the background, after the 202.
    let idem_pattern = format!("{}:idem:*", app.config.namespace);
    let named = || {
        let mut redis = redis.clone();
        let pattern = idem_pattern.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut redis)
                .await
                .unwrap();
            let Some(key) = keys.first() else {
                return false;
            };
            let value: String = redis::cmd("GET")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap();
            value.starts_with(&format!("job:{first_id}"))
        }
    };
    assert!(poll_until(Duration::from_secs(5), named).await);

    // The row goes (as the retention would) and its cached status with it,
    // but the idempotency entry naming it stays in Redis.
    sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(first_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{}:status:{first_id}", app.config.namespace))
        .query_async(&mut redis.clone())
        .await
        .unwrap();

    let again = app.generate(&body).await;
    assert_eq!(again.status(), 202);
    assert!(again.headers().get("idempotent-replayed").is_none());
    let second: Value = again.json().await.unwrap();
    assert_ne!(second["job_id"], first["job_id"]);
    assert_eq!(app.job_count().await, 1);
}
