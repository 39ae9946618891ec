//! Degraded modes: Redis, RabbitMQ or PostgreSQL unreachable for one app
//! (through a proxy the test cuts), everything else real.

use std::collections::HashSet;
use std::time::Duration;

use artefatos::render::Format;
use serde_json::Value;

use crate::api_generate::work_queue_depth;
use crate::api_read::finish_job;
use crate::support::{Options, generate_body, poll_until, spawn_app_with};

#[tokio::test]
async fn without_redis_everything_works_from_postgres_and_keys_stay_unique() {
    let app = spawn_app_with(Options {
        proxy_redis: true,
        ..Options::default()
    })
    .await;
    app.redis_proxy.as_ref().unwrap().cut();

    let body = generate_body("pdf", "no-redis");
    let responses = futures::future::join_all((0..64).map(|_| app.generate(&body))).await;
    let mut ids = HashSet::new();
    for response in responses {
        assert_eq!(response.status(), 202, "PostgreSQL decides alone");
        let body: Value = response.json().await.unwrap();
        ids.insert(body["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.job_count().await, 1);
    let id = ids.into_iter().next().unwrap();

    let reused = app.generate(&generate_body("xlsx", "no-redis")).await;
    assert_eq!(reused.status(), 422);

    assert_eq!(app.status(&id).await["status"], "queued");
    finish_job(&app, &id, b"%PDF-1.7 no redis").await;
    let download = app.get(&format!("/download/{id}")).await;
    assert_eq!(download.status(), 302);

    let ready: Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["checks"]["redis"]["status"], "degraded");
}

#[tokio::test]
async fn a_job_accepted_while_rabbitmq_is_down_is_published_when_it_returns() {
    let app = spawn_app_with(Options {
        proxy_rabbitmq: true,
        ..Options::default()
    })
    .await;
    app.rabbitmq_proxy.as_ref().unwrap().cut();

    let response = app.generate(&generate_body("xlsx", "no-broker")).await;
    assert_eq!(response.status(), 202);
    let ready = app.get("/health/ready").await;
    assert_eq!(
        ready.status(),
        200,
        "a broker outage never makes the API unready"
    );
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["rabbitmq"]["status"], "degraded");
    assert_eq!(work_queue_depth(&app, Format::Xlsx).await, 0);

    app.rabbitmq_proxy.as_ref().unwrap().restore();
    assert!(
        poll_until(Duration::from_secs(30), || async {
            work_queue_depth(&app, Format::Xlsx).await == 1
        })
        .await,
        "the relay publishes the job once the broker is back"
    );
    // The relay marks the job after the broker's confirm, so the mark may
    // trail the message by a moment.
    assert!(
        poll_until(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE published_at IS NULL")
                .fetch_one(&app.pool)
                .await
                .unwrap()
                == 0
        })
        .await,
        "the publish is recorded"
    );
}

#[tokio::test]
async fn without_postgres_requests_fail_cleanly_and_write_nothing() {
    let app = spawn_app_with(Options {
        proxy_postgres: true,
        ..Options::default()
    })
    .await;
    app.postgres_proxy.as_ref().unwrap().cut();

    let response = app.generate(&generate_body("pdf", "no-db")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "service_unavailable");
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 503);

    app.postgres_proxy.as_ref().unwrap().restore();
    assert_eq!(app.job_count().await, 0, "nothing half-written");
    // The key was not burnt: the retry creates the job.
    let retry = app.generate(&generate_body("pdf", "no-db")).await;
    assert_eq!(retry.status(), 202);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let app = spawn_app_with(Options::default()).await;
    let live = app.get("/health/live").await;
    assert_eq!(live.status(), 200);
    let ready: Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "ok", "{ready}");

    assert_eq!(app.generate(&generate_body("pdf", "m")).await.status(), 202);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("artefatos_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/generate\""));
    assert!(metrics.contains("artefatos_http_request_duration_seconds_bucket"));

    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/generate", "/status/{job_id}", "/download/{job_id}"] {
        assert!(spec["paths"][path].is_object(), "{path} documented");
    }
}
