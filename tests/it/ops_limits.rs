//! Per-client limits (rate, jobs not yet final, 401s per address) and the
//! readiness probe cache, against the real services.

use std::time::{Duration, Instant};

use artefatos::actors::Role;
use artefatos::app::Application;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::cli::artefatos;
use crate::support::{Options, generate_body, poll_until, spawn_app_with};

fn limited(rate: &str, burst: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ARTEFATOS_RATE_LIMIT", rate.into()),
        ("ARTEFATOS_RATE_BURST", burst.into()),
    ]
}

async fn assert_problem(response: reqwest::Response, code: &str) {
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
}

async fn post(app: &crate::support::TestApp, key: &str) -> reqwest::Response {
    app.generate_as(key, &generate_body("pdf", &Uuid::new_v4().to_string()))
        .await
}

#[tokio::test]
async fn the_rate_limit_is_per_client_shared_by_replicas_and_raised_per_client() {
    let app = spawn_app_with(Options {
        vars: limited("1", "3"),
        filesystem: true,
        ..Options::default()
    })
    .await;
    // A second replica on the same database and namespace.
    let replica = Application::build(app.config.clone())
        .await
        .unwrap()
        .start_actors(Role::Api)
        .await
        .unwrap();
    let replica_address = format!("http://127.0.0.1:{}", replica.port());
    tokio::spawn(replica.serve(std::future::pending()));
    let post_replica = |key: String| {
        let (http, address) = (app.http.clone(), replica_address.clone());
        async move {
            http.post(format!("{address}/generate"))
                .bearer_auth(key)
                .json(&generate_body("pdf", &Uuid::new_v4().to_string()))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post(&app, &app.api_key).await.status(), 202);
    assert_eq!(post(&app, &app.api_key).await.status(), 202);
    assert_eq!(post_replica(app.api_key.clone()).await.status(), 202);
    assert_problem(post_replica(app.api_key.clone()).await, "rate_limited").await;
    assert_problem(post(&app, &app.api_key).await, "rate_limited").await;

    // Another client is not affected.
    let other = app.other_client_key().await;
    assert_eq!(post(&app, &other).await.status(), 202);

    // The client's own, higher limit, set by the operator.
    let name: String = sqlx::query_scalar("SELECT name FROM clients WHERE id = $1")
        .bind(app.client_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    artefatos(&app, &["keys", "limits", &name, "--rate", "1000"]);
    assert!(
        poll_until(Duration::from_secs(5), || async {
            post(&app, &app.api_key).await.status() == 202
        })
        .await
    );
    for _ in 0..20 {
        assert_eq!(post(&app, &app.api_key).await.status(), 202);
    }
}

#[tokio::test]
async fn with_redis_down_each_replica_still_limits_the_rate() {
    let app = spawn_app_with(Options {
        proxy_redis: true,
        vars: limited("1", "2"),
        filesystem: true,
        ..Options::default()
    })
    .await;
    app.redis_proxy.as_ref().unwrap().cut();
    assert_eq!(post(&app, &app.api_key).await.status(), 202);
    assert_eq!(post(&app, &app.api_key).await.status(), 202);
    assert_problem(post(&app, &app.api_key).await, "rate_limited").await;
}

#[tokio::test]
async fn a_client_with_too_many_unfinished_jobs_gets_429_until_some_finish() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_MAX_UNFINISHED_JOBS", "2".into())],
        filesystem: true,
        ..Options::default()
    })
    .await;
    // No workers: the jobs stay queued.
    assert_eq!(post(&app, &app.api_key).await.status(), 202);
    assert_eq!(post(&app, &app.api_key).await.status(), 202);
    assert_problem(post(&app, &app.api_key).await, "too_many_jobs").await;
    assert_eq!(app.job_count().await, 2);
    let other = app.other_client_key().await;
    assert_eq!(post(&app, &other).await.status(), 202);

    sqlx::query("UPDATE jobs SET status = 'done', finished_at = now() WHERE client_id = $1")
        .bind(app.client_id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(
        poll_until(Duration::from_secs(5), || async {
            post(&app, &app.api_key).await.status() == 202
        })
        .await,
        "finished jobs free the cap"
    );
}

#[tokio::test]
async fn an_address_sending_bad_keys_gets_429_after_the_limit() {
    let app = spawn_app_with(Options {
        vars: vec![
            ("ARTEFATOS_AUTH_FAILURE_LIMIT", "3".into()),
            ("ARTEFATOS_AUTH_FAILURE_WINDOW", "2s".into()),
        ],
        filesystem: true,
        ..Options::default()
    })
    .await;
    let bad = format!("af_{}", "0".repeat(64));
    for _ in 0..3 {
        let path = format!("/status/{}", Uuid::new_v4());
        assert_eq!(app.get_as(&bad, &path).await.status(), 401);
    }
    let refused = app
        .get_as(&bad, &format!("/status/{}", Uuid::new_v4()))
        .await;
    assert_problem(refused, "rate_limited").await;
    // The address is blocked as a whole until its window ends.
    assert_eq!(post(&app, &app.api_key).await.status(), 429);
    assert!(
        poll_until(Duration::from_secs(10), || async {
            post(&app, &app.api_key).await.status() == 202
        })
        .await,
        "the block ends with its window"
    );
}

#[tokio::test]
async fn readiness_probes_run_at_most_once_a_second_however_often_it_is_called() {
    let app = spawn_app_with(Options {
        filesystem: true,
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let mut seen: Vec<DateTime<Utc>> = Vec::new();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let batch = futures::future::join_all((0..10).map(|_| async {
            let response = app
                .http
                .get(format!("{}/health/ready", app.address))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["checked_at"]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .unwrap()
        }))
        .await;
        calls += batch.len();
        seen.extend(batch);
    }
    seen.sort();
    seen.dedup();
    assert!(calls >= 50, "{calls} calls");
    assert!(
        seen.len() <= 4,
        "{} probe rounds for {calls} calls",
        seen.len()
    );
    for pair in seen.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap.num_milliseconds() >= 1000, "probes {gap} apart");
    }
}

#[tokio::test]
async fn a_readiness_probe_never_lifts_the_redis_breaker() {
    let app = spawn_app_with(Options {
        proxy_redis: true,
        filesystem: true,
        ..Options::default()
    })
    .await;
    let proxy = app.redis_proxy.as_ref().unwrap();
    proxy.cut();
    // A request meets the outage: the cache cools off (2 s) and serves from PostgreSQL.
    let response = app.get(&format!("/status/{}", Uuid::new_v4())).await;
    assert_eq!(response.status(), 404);
    proxy.restore();
    let ready: Value = app
        .http
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"]["redis"]["status"], "degraded",
        "the probe saw the breaker, it did not lift it: {ready}"
    );
}

#[tokio::test]
async fn behind_a_proxy_401s_are_counted_per_forwarded_address() {
    let app = spawn_app_with(Options {
        filesystem: true,
        vars: vec![
            ("ARTEFATOS_AUTH_FAILURE_LIMIT", "2".into()),
            ("ARTEFATOS_CLIENT_ADDRESS_HEADER", "X-Forwarded-For".into()),
        ],
        ..Options::default()
    })
    .await;
    let bad = format!("af_{}", "1".repeat(64));
    let from = |forwarded: &'static str| {
        app.http
            .get(format!("{}/status/{}", app.address, Uuid::new_v4()))
            .bearer_auth(&bad)
            .header("x-forwarded-for", forwarded)
            .send()
    };
    assert_eq!(from("10.0.0.1").await.unwrap().status(), 401);
    // Only the last entry counts: the earlier ones are the client's to forge.
    assert_eq!(from("10.0.0.9, 10.0.0.1").await.unwrap().status(), 401);
    assert_problem(from("10.0.0.1").await.unwrap(), "rate_limited").await;
    assert_eq!(from("10.0.0.1, 10.0.0.2").await.unwrap().status(), 401);
}
