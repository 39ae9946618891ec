//! The HTTP front end: one endpoint per file, thin handlers, errors mapped to
//! problem+json in `error`. Stateless: any replica serves any request.

pub mod auth;
pub mod download;
pub mod error;
pub mod generate;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::auth_failures,
        ))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/health/actors", get(health::actors))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
