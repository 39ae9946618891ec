//! The HTTP front end: one endpoint per file, thin handlers, errors mapped to
//! problem+json in `error`. Stateless: any replica serves any request.

pub mod auth;
pub mod cancel;
pub mod download;
pub mod encoding;
pub mod error;
pub mod fingerprint;
pub mod generate;
pub mod health;
pub mod jobs;
pub mod limit;
pub mod metadata;
pub mod metrics;
pub mod openapi;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::sync::Semaphore;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::storage::blobs::Blobs;
use crate::storage::cache::Cache;
use crate::storage::jobs::create::JobStore;
use crate::storage::keys::KeyRing;
use crate::storage::outbox::Outbox;

/// What every handler may use. axum clones the state for every request, so
/// it is one `Arc`: one atomic increment per request instead of one per
/// store (the per-field clones were 7 % of a cached status read).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The stores and settings behind [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    pub jobs: JobStore,
    pub keys: KeyRing,
    pub cache: Cache,
    pub blobs: Blobs,
    pub outbox: Outbox,
    /// Slots for large request bodies (`ARTEFATOS_MAX_LARGE_BODIES_IN_FLIGHT`).
    pub large_bodies: Arc<Semaphore>,
    /// The actor tree of this process, for `/health/actors`.
    pub actors: Option<Arc<dyn health::ActorTree>>,
    /// The last readiness probes, served again for [`health::PROBE_CACHE`].
    pub probes: health::Probes,
    /// Per-client rate and job limits, and 401s per source address.
    pub limits: limit::Limiter,
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route(
            "/generate",
            post(generate::generate).layer(DefaultBodyLimit::max(body_limit)),
        )
        .route("/status/{job_id}", get(status::status))
        .route("/download/{job_id}", get(download::download))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{job_id}", delete(cancel::cancel))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::auth_failures,
        ))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/health/actors", get(health::actors))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline,
        ))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// `ARTEFATOS_REQUEST_TIMEOUT`: a request whose response head is not ready
/// in time gets 503 `request_timeout` (a streamed download's body is not
/// bounded by it). Dropping a `POST /generate` midway is safe: the job is
/// created once or not at all, and the client's retry with its key finds it.
async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::ApiError::Timeout(limit).into_response(),
    }
}

/// The span of every request, with its `x-request-id`, so a log line about
/// an error a client saw (with only a safe message) can be found by its id.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri().path(),
        request_id = %id,
    )
}
