//! Liveness, readiness and the actor tree.
//!
//! Ready means "PostgreSQL answers": the API accepts jobs without Redis,
//! RabbitMQ or storage, so those are reported as `degraded` in the body but
//! never make the replica unready — a broker outage must not pull every API
//! replica out of the load balancer at once.

use std::time::{Duration, Instant};

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

/// How long a readiness answer is served again without probing: whoever
/// calls `/health/ready`, and however often, the dependencies see at most one
/// probe per replica per second.
pub const PROBE_CACHE: Duration = Duration::from_secs(1);

/// The last readiness answer of this process. Its lock is held while a probe
/// runs, so concurrent callers wait for that probe instead of starting theirs.
#[derive(Default)]
pub struct Probes {
    last: tokio::sync::Mutex<Option<(Instant, StatusCode, Value)>>,
}

/// `GET /health/ready`: 200 while PostgreSQL is reachable, 503 otherwise.
/// The body's `checked_at` tells when the probes it reports ran.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut last = state.probes.last.lock().await;
    if let Some((at, code, body)) = last.as_ref()
        && at.elapsed() < PROBE_CACHE
    {
        return (*code, Json(body.clone()));
    }
    let (code, body) = probe_all(&state).await;
    *last = Some((Instant::now(), code, body.clone()));
    (code, Json(body))
}

/// One probe of every dependency.
async fn probe_all(state: &AppState) -> (StatusCode, Value) {
    let checked_at = chrono::Utc::now();
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
        "checked_at": checked_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
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
    (code, body)
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
