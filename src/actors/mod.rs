//! The worker runtime: a ractor supervision tree that consumes job ids from
//! RabbitMQ, renders on blocking threads, uploads, commits and retries through
//! the broker. `supervision.md` at the top level draws the tree.
//!
//! The same tree runs in every role: `api` runs only the outbox relay,
//! `worker` everything but the HTTP server, `all` both in one process.

mod attempt;
mod cache_writer;
mod consumer;
mod context;
mod depth;
mod fault;
mod health;
mod janitor;
mod pool;
mod protocol;
mod relay;
mod renderer;
mod restart;
mod supervisor;
mod uploader;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use crate::Config;
use crate::storage::blobs::Blobs;
use crate::storage::cache::Cache;
use crate::storage::outbox::Outbox;

pub use health::{ActorHealth, ActorState, ActorTreeHealth};

use context::{Ctx, Shared};
use protocol::{ConsumerMsg, RootMsg};
use supervisor::{Child, Root, RootArgs};

/// Everything the tree needs from the process that starts it.
pub struct WorkerDeps {
    pub config: Config,
    pub pool: sqlx::PgPool,
    pub cache: Cache,
    pub blobs: Blobs,
    pub outbox: Outbox,
}

/// Which actors a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The outbox relay only: an API replica publishes what it committed.
    Api,
    /// Consumers, renderer pools, uploader, cache writer, relay, janitor and
    /// the queue-depth poller.
    Worker,
    /// Both, in one process (the quick start).
    All,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::All => "all",
        }
    }
}

/// Why the tree could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("the actor tree failed to start: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

/// The running tree: its health for `/health/actors`, and its shutdown.
pub struct WorkerHandle {
    ctx: Ctx,
    role: Role,
    root: ActorRef<RootMsg>,
    join: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Set by `shutdown`: tells a requested stop from a failed tree.
    stop_requested: AtomicBool,
}

/// Starts the tree for `role`. Returns once every child has been spawned;
/// consumers connect in the background, so a broker that is down delays
/// consumption, never the start.
pub async fn start(role: Role, deps: WorkerDeps) -> Result<WorkerHandle, ActorError> {
    let worker_id = format!(
        "{}-{}-{}",
        role.as_str(),
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let formats = deps.config.worker.formats.clone();
    let ctx: Ctx = Arc::new(Shared::new(
        deps.config,
        deps.pool,
        deps.cache,
        deps.blobs,
        deps.outbox,
        worker_id,
    ));
    let args = RootArgs {
        ctx: ctx.clone(),
        children: Child::for_role(role, &formats),
    };
    let (root, join) = Actor::spawn(None, Root, args).await?;
    ctx.health.set_state("root", ActorState::Running);
    info!(worker_id = %ctx.worker_id, role = role.as_str(), "actor tree started");
    Ok(WorkerHandle {
        ctx,
        role,
        root,
        join: std::sync::Mutex::new(Some(join)),
        stop_requested: AtomicBool::new(false),
    })
}

impl WorkerHandle {
    /// The live tree: each actor's name, state, restarts, last failure and
    /// jobs in flight.
    pub fn health(&self) -> ActorTreeHealth {
        let mut actors = self.ctx.health.snapshot();
        if let Some(root) = actors.iter_mut().find(|a| a.name == "root")
            && !matches!(self.root.get_status(), ractor::ActorStatus::Running)
        {
            root.state = if self.stop_requested.load(Ordering::SeqCst) {
                ActorState::Stopped
            } else {
                ActorState::Failed
            };
        }
        ActorTreeHealth {
            worker_id: self.ctx.worker_id.clone(),
            role: self.role.as_str(),
            actors,
        }
    }

    /// Resolves when the tree has stopped on its own: a child exceeded its
    /// restart intensity and the root gave up. The binary selects on this
    /// next to its shutdown signal and exits non-zero, so the orchestrator
    /// restarts the process. Resolves after `shutdown` too.
    pub async fn stopped(&self) {
        let _ = self.root.get_cell().wait(None).await;
    }

    /// True when the tree stopped without `shutdown` having been called.
    pub fn failed(&self) -> bool {
        !self.stop_requested.load(Ordering::SeqCst)
            && !matches!(self.root.get_status(), ractor::ActorStatus::Running)
    }

    /// The lease owner name this process writes into the jobs it claims.
    pub fn worker_id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// Graceful stop: stop consuming, let held jobs finish for up to
    /// `shutdown_grace`, requeue what is left (nack with requeue, lease given
    /// back), then stop every actor. Idempotent.
    pub async fn shutdown(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
        let grace = self.ctx.config.worker.shutdown_grace;
        let consumers = self.ctx.peers.consumers();
        for consumer in &consumers {
            let _ = consumer
                .call(ConsumerMsg::StopConsuming, Some(Duration::from_secs(5)))
                .await;
        }
        let deadline = Instant::now() + grace;
        while self.ctx.health.consumer_jobs() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut requeued = 0;
        for consumer in &consumers {
            if let Ok(CallResult::Success(n)) = consumer
                .call(ConsumerMsg::RequeueAll, Some(Duration::from_secs(5)))
                .await
            {
                requeued += n;
            }
        }
        if requeued > 0 {
            warn!(requeued, "jobs requeued at shutdown after the grace period");
        }
        self.ctx.begin_shutdown();
        self.root.stop(Some("shutdown".into()));
        let join = self.join.lock().ok().and_then(|mut j| j.take());
        if let Some(join) = join {
            let _ = tokio::time::timeout(Duration::from_secs(15), join).await;
        }
        self.ctx.health.set_state("root", ActorState::Stopped);
        info!("actor tree stopped");
    }
}
