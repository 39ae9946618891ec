//! Helpers of the worker tests: a worker tree next to a test app, sharing its
//! database, namespace and storage, plus polling of job rows and queues.

use std::time::Duration;

use artefatos::Config;
use artefatos::actors::{self, Role, WorkerDeps, WorkerHandle};
use artefatos::render::Format;
use artefatos::storage::blobs::Blobs;
use artefatos::storage::cache::Cache;
use artefatos::storage::db;
use artefatos::storage::outbox::Outbox;
use artefatos::storage::queue::{self, Publisher, Topology};
use serde_json::Value;
use uuid::Uuid;

use crate::support::{TestApp, generate_body, poll_until};

/// Starts a worker tree (role `worker`) on the app's configuration.
pub async fn start_worker(config: &Config) -> WorkerHandle {
    let pool = db::connect(&config.database_url, config.db_pool_size)
        .await
        .expect("worker pool");
    let cache = Cache::from_config(config).expect("cache");
    let blobs = Blobs::from_config(&config.storage).await.expect("blobs");
    let outbox = Outbox::new(pool.clone(), Publisher::lazy(config));
    actors::start(
        Role::Worker,
        WorkerDeps {
            config: config.clone(),
            pool,
            cache,
            blobs,
            outbox,
        },
    )
    .await
    .expect("actor tree starts")
}

/// POSTs a job and returns its id.
pub async fn post_job(app: &TestApp, format: &str, body: Option<Value>) -> String {
    let body = body.unwrap_or_else(|| generate_body(format, &Uuid::new_v4().to_string()));
    let response = app.generate(&body).await;
    assert_eq!(response.status(), 202, "POST /generate accepted");
    let json: Value = response.json().await.expect("json");
    json["job_id"].as_str().expect("job_id").to_string()
}

/// A request body whose document title is `title`.
pub fn body_titled(format: &str, title: &str) -> Value {
    let mut body = generate_body(format, &Uuid::new_v4().to_string());
    body["document"]["title"] = Value::String(title.to_string());
    body
}

/// Messages ready in a queue of the app's namespace.
pub async fn depth(config: &Config, queue_name: &str) -> u32 {
    let connection = queue::connect(&config.amqp_url).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    queue::queue_depth(&channel, queue_name)
        .await
        .expect("depth")
}

/// Consumers attached to a queue of the app's namespace (0 before it exists).
pub async fn consumers(config: &Config, queue_name: &str) -> u32 {
    let connection = queue::connect(&config.amqp_url).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue_name.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    // Not declared yet: no worker has connected.
    declared.map(|q| q.consumer_count()).unwrap_or(0)
}

/// Waits until `n` consumers (one per worker) are attached to a work queue,
/// so jobs posted next can spread over all of them.
pub async fn wait_for_consumers(config: &Config, format: Format, n: u32) -> bool {
    let name = Topology::new(config).work_queue(format);
    poll_until(Duration::from_secs(30), || {
        let name = name.clone();
        async move { consumers(config, &name).await >= n }
    })
    .await
}

/// The DLQ's name in the app's namespace.
pub fn dlq(config: &Config) -> String {
    Topology::new(config).dlq()
}

/// Waits until the DLQ holds `n` messages.
pub async fn wait_for_dlq(config: &Config, n: u32, deadline: Duration) -> bool {
    let name = dlq(config);
    poll_until(deadline, || {
        let name = name.clone();
        async move { depth(config, &name).await == n }
    })
    .await
}

/// An XLSX request whose document is big enough that rendering it takes a
/// while in a debug build (≈ 1 s for 60,000 rows).
pub fn big_body(rows: usize) -> Value {
    let mut body = generate_body("xlsx", &Uuid::new_v4().to_string());
    let row = serde_json::json!(["2026-07-01", "Açaí Ltda", 1234.5, 3, true]);
    body["document"]["sheets"][0]["rows"] = Value::Array(vec![row; rows]);
    body
}
