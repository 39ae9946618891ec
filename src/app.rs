//! Wiring: builds every store from the configuration, then serves HTTP and
//! runs the actor tree of the chosen role until a shutdown signal.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::actors::{self, ActorError, Role, WorkerDeps, WorkerHandle};
use crate::config::Config;
use crate::http::limit::Limiter;
use crate::http::{self, AppState, Shared};
use crate::storage::blobs::Blobs;
use crate::storage::cache::Cache;
use crate::storage::jobs::create::JobStore;
use crate::storage::keys::KeyRing;
use crate::storage::outbox::Outbox;
use crate::storage::queue::Publisher;
use crate::storage::{blobs, cache, db};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Database(#[from] db::DbError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error(transparent)]
    Blobs(#[from] blobs::BlobError),
    #[error("listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    #[error(transparent)]
    Actors(#[from] ActorError),
    #[error("the actor tree stopped: an actor exceeded its restart intensity")]
    TreeFailed,
}

/// What `GET /health/actors` serves; the HTTP layer sees only this trait.
impl http::health::ActorTree for WorkerHandle {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(self.health()).unwrap_or(serde_json::Value::Null)
    }
}

/// A built service, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    state: Shared,
    tree: Option<Arc<WorkerHandle>>,
}

impl Application {
    /// Creates the database if missing, migrates it, connects every store
    /// (Redis, RabbitMQ and storage lazily: the API starts while they are
    /// down) and binds the listener.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        // Before the first request, so no measurement is lost.
        crate::metrics::recorder();
        db::ensure_database(&config.database_url).await?;
        let pool = db::connect(&config.database_url, config.db_pool_size).await?;
        db::migrate(&pool).await?;

        let cache = Cache::from_config(&config)?;
        let blobs = Blobs::from_config(&config.storage)
            .await?
            .with_cdn(config.cdn.as_ref())?;
        if let Err(e) = blobs.ensure_bucket().await {
            tracing::warn!(error = %e, "artifact storage unavailable at start; continuing degraded");
        }
        let outbox = Outbox::new(pool.clone(), Publisher::lazy(&config));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| AppError::Listen(config.listen, e))?;

        let limits = Limiter::new(
            config.client_limits,
            config.client_address_header(),
            pool.clone(),
            cache.clone(),
        );
        let state = Shared {
            large_bodies: Arc::new(tokio::sync::Semaphore::new(
                config.max_large_bodies_in_flight,
            )),
            config: Arc::new(config),
            jobs: JobStore::new(pool.clone()),
            keys: KeyRing::new(pool),
            cache,
            blobs,
            outbox,
            actors: None,
            probes: Default::default(),
            limits,
        };
        Ok(Application {
            listener,
            state,
            tree: None,
        })
    }

    /// The bound port (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state, for wiring the actor tree to the same stores.
    pub fn state(&self) -> &Shared {
        &self.state
    }

    /// Starts the actor tree of `role` on the same stores (`api`: the outbox
    /// relay; `worker`: consumers, renderers, uploader, janitor too; `all`: both).
    pub async fn start_actors(mut self, role: Role) -> Result<Self, AppError> {
        let deps = WorkerDeps {
            config: (*self.state.config).clone(),
            pool: self.state.jobs.pool().clone(),
            cache: self.state.cache.clone(),
            blobs: self.state.blobs.clone(),
            outbox: self.state.outbox.clone(),
        };
        let tree = Arc::new(actors::start(role, deps).await?);
        self.state.actors = Some(tree.clone());
        self.tree = Some(tree);
        Ok(self)
    }

    /// Serves until `shutdown` resolves (or the actor tree gives up past its
    /// restart intensity); then drains open connections for at most half of
    /// `ARTEFATOS_SHUTDOWN_GRACE` (a slow or idle client cannot hold the
    /// process) and stops the tree (in-flight jobs get the grace). A tree
    /// that gave up is an error, so the process exits non-zero and its
    /// orchestrator restarts it.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let config = self.state.config.clone();
        let router = http::router(AppState::new(self.state));
        let watched = self.tree.clone();
        let stop = async move {
            match watched {
                Some(tree) => tokio::select! {
                    _ = shutdown => {}
                    _ = tree.stopped() => tracing::error!("the actor tree gave up; stopping"),
                },
                None => shutdown.await,
            }
        };
        serve_http(self.listener, router, &config, stop).await;
        if let Some(tree) = self.tree {
            let failed = tree.failed();
            tree.shutdown().await;
            if failed {
                return Err(AppError::TreeFailed);
            }
        }
        Ok(())
    }
}

/// The HTTP server: what `axum::serve` does, plus a header-read timeout
/// (`ARTEFATOS_HEADER_READ_TIMEOUT`: a client that trickles its header,
/// slowloris, is disconnected) and a bounded drain once `stop` resolves.
/// Each request carries the peer's [`ConnectInfo`](axum::extract::ConnectInfo).
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    config: &Config,
    stop: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Closes the connections still open when the drain's time is up.
    let (close, closed) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the same back-off
                    // as axum::serve, rather than a busy loop.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let mut closed = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(error = %e, "http connection ended with an error");
                },
                _ = closed.wait_for(|closed| *closed) => {}
            }
        });
    }
    drop(listener);
    let drain = config.worker.shutdown_grace / 2;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "http connections still open after the drain; closing them"
        );
        let _ = close.send(true);
    }
}
