//! Liveness, readiness and the actor tree.
//!
//! Ready means "PostgreSQL answers": the API accepts jobs without Redis,
//! RabbitMQ or storage, so those are reported as `degraded` in the body but
//! never make the replica unready — a broker outage must not pull every API
//! replica out of the load balancer at once.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// A snapshot of this process's actor tree; implemented by the worker runtime
/// and handed in by `app`, so this module never depends on the actors.
pub trait ActorTree: Send + Sync + 'static {
    fn snapshot(&self) -> Value;
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health/live`: the process serves requests.
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /health/ready`: 200 while PostgreSQL is reachable, 503 otherwise.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = probe(sqlx::query("SELECT 1").execute(state.jobs.pool())).await;
    let (redis, rabbitmq, storage) = tokio::join!(
        probe(state.cache.check()),
        probe(state.outbox.check()),
        probe(state.blobs.check()),
    );
    let ready = postgres.is_ok();
    let degraded = [&redis, &rabbitmq, &storage].iter().any(|r| r.is_err());
    let status = match (ready, degraded) {
        (false, _) => "unready",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!({ "status": "ok" }),
        Err(e) => json!({ "status": "degraded", "error": e }),
    };
    let body = json!({
        "status": status,
        "checks": {
            "postgres": match &postgres {
                Ok(()) => json!({ "status": "ok" }),
                Err(e) => json!({ "status": "down", "error": e }),
            },
            "redis": show(&redis),
            "rabbitmq": show(&rabbitmq),
            "storage": show(&storage),
        }
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// `GET /health/actors`: the live supervision tree of this process.
pub async fn actors(State(state): State<AppState>) -> Json<Value> {
    let tree = state.actors.as_ref().map(|tree| tree.snapshot());
    Json(json!({ "actors": tree }))
}

async fn probe<T, E: std::fmt::Display>(
    check: impl Future<Output = Result<T, E>>,
) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
