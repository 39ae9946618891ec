//! Jobs that can never succeed end `failed` at once with a DLQ record instead
//! of spending retries: a document the worker's limits reject, and a job not
//! started within its TTL.

use std::time::Duration;

use artefatos::storage::queue::{self, DLQ_REASON_HEADER};
use lapin::options::BasicGetOptions;
use uuid::Uuid;

use crate::support::{Options, TestApp, poll_until, spawn_app, spawn_app_with};
use crate::worker_support::{dlq, post_job, start_worker, wait_for_dlq};

const DEADLINE: Duration = Duration::from_secs(30);

/// The one DLQ message: its job id and the reason the worker wrote.
async fn dlq_record(app: &TestApp) -> (Uuid, String) {
    let connection = queue::connect(&app.config.amqp_url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(dlq(&app.config).as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a DLQ message");
    let properties = &message.delivery.properties;
    assert!(
        properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(DLQ_REASON_HEADER)),
        "the worker names its reason"
    );
    (
        queue::job_id_of(&message.delivery.data).unwrap(),
        queue::dlq_reason(properties),
    )
}

#[tokio::test]
async fn a_document_the_worker_rejects_fails_at_once_without_retries() {
    let app = spawn_app().await;
    // The API accepted two rows; this worker allows one: a data error no
    // retry can fix.
    let mut config = app.config.clone();
    config.limits.max_rows = 1;
    let worker = start_worker(&config).await;
    let job = post_job(&app, "xlsx", None).await;
    let status = app.wait_for_status(&job, "failed", DEADLINE).await;
    assert_eq!(status["attempts"], 1, "no retry: {status}");
    assert_eq!(status["error"]["code"], "invalid_document", "{status}");
    assert!(wait_for_dlq(&app.config, 1, DEADLINE).await);
    let (id, reason) = dlq_record(&app).await;
    assert_eq!(id.to_string(), job);
    assert!(reason.starts_with("invalid_document"), "{reason}");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_job_not_started_within_its_ttl_fails_as_expired() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_JOB_TTL", "1s".into())],
        ..Default::default()
    })
    .await;
    // No worker yet: the job waits in the queue until it is older than its TTL.
    let job = post_job(&app, "pdf", None).await;
    let pool = app.pool.clone();
    let id = job.clone();
    assert!(
        poll_until(DEADLINE, || {
            let (pool, id) = (pool.clone(), id.clone());
            async move {
                sqlx::query_scalar::<_, bool>(
                    "SELECT updated_at < now() - interval '1 second' FROM jobs WHERE id = $1::uuid",
                )
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        })
        .await
    );
    let worker = start_worker(&app.config).await;
    let status = app.wait_for_status(&job, "failed", DEADLINE).await;
    assert_eq!(status["error"]["code"], "expired", "{status}");
    assert_eq!(status["attempts"], 0, "never started: {status}");
    assert!(wait_for_dlq(&app.config, 1, DEADLINE).await);
    let (id, reason) = dlq_record(&app).await;
    assert_eq!(id.to_string(), job);
    assert_eq!(reason, "expired");
    worker.shutdown().await;
}
