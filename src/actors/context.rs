//! What every actor of one tree shares: configuration, storage handles, the
//! health board and the addresses of the peers it talks to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ractor::ActorRef;
use sqlx::PgPool;

use crate::Config;
use crate::render::Format;
use crate::storage::blobs::Blobs;
use crate::storage::cache::Cache;
use crate::storage::jobs::JobView;
use crate::storage::jobs::commits::{ClaimTerms, JobCommits};
use crate::storage::outbox::Outbox;
use crate::storage::queue::Topology;

use super::health::HealthBoard;
use super::protocol::{CacheMsg, ConsumerMsg, PoolMsg, UploaderMsg};

/// Shared by every actor of a tree; cheap to clone.
pub(crate) type Ctx = Arc<Shared>;

pub(crate) struct Shared {
    pub config: Config,
    /// PostgreSQL.
    pub db: PgPool,
    /// Group commits of this tree's claims and `done` transitions.
    pub commits: JobCommits,
    pub cache: Cache,
    pub blobs: Blobs,
    pub outbox: Outbox,
    pub topology: Topology,
    /// Lease owner of this process's jobs: unique per tree.
    pub worker_id: String,
    pub health: HealthBoard,
    pub peers: Peers,
    shutting_down: AtomicBool,
}

impl Shared {
    /// Starts the group-commit collectors: call it on the runtime.
    pub fn new(
        config: Config,
        db: PgPool,
        cache: Cache,
        blobs: Blobs,
        outbox: Outbox,
        worker_id: String,
    ) -> Self {
        let commits = JobCommits::new(
            db.clone(),
            ClaimTerms {
                owner: worker_id.clone(),
                lease: config.worker.lease,
                job_ttl: config.worker.job_ttl,
                inline_payload_bytes: config.worker.big_document_bytes,
            },
        );
        Shared {
            topology: Topology::new(&config),
            config,
            db,
            commits,
            cache,
            blobs,
            outbox,
            worker_id,
            health: HealthBoard::default(),
            peers: Peers::default(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Set once by shutdown: supervisors stop restarting what ends.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Hands a status transition to the cache writer; never waits, and a
    /// missing writer only costs cache freshness.
    pub fn cache_status(&self, view: JobView) {
        if let Some(writer) = self.peers.cache_writer() {
            let _ = writer.cast(CacheMsg::Put(Box::new(view)));
        }
    }
}

/// Current addresses of the actors others send to. A supervisor rewrites an
/// entry when it restarts that actor, so senders always reach the live one.
#[derive(Default)]
pub(crate) struct Peers {
    consumers: RwLock<HashMap<Format, ActorRef<ConsumerMsg>>>,
    pools: RwLock<HashMap<Format, ActorRef<PoolMsg>>>,
    uploader: RwLock<Option<ActorRef<UploaderMsg>>>,
    cache_writer: RwLock<Option<ActorRef<CacheMsg>>>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Peers {
    pub fn consumer(&self, format: Format) -> Option<ActorRef<ConsumerMsg>> {
        read(&self.consumers).get(&format).cloned()
    }
    pub fn consumers(&self) -> Vec<ActorRef<ConsumerMsg>> {
        read(&self.consumers).into_values().collect()
    }
    pub fn set_consumer(&self, format: Format, actor: ActorRef<ConsumerMsg>) {
        let mut map = read(&self.consumers);
        map.insert(format, actor);
        write(&self.consumers, map);
    }
    pub fn pool(&self, format: Format) -> Option<ActorRef<PoolMsg>> {
        read(&self.pools).get(&format).cloned()
    }
    pub fn set_pool(&self, format: Format, actor: ActorRef<PoolMsg>) {
        let mut map = read(&self.pools);
        map.insert(format, actor);
        write(&self.pools, map);
    }
    pub fn uploader(&self) -> Option<ActorRef<UploaderMsg>> {
        read(&self.uploader)
    }
    pub fn set_uploader(&self, actor: ActorRef<UploaderMsg>) {
        write(&self.uploader, Some(actor));
    }
    pub fn cache_writer(&self) -> Option<ActorRef<CacheMsg>> {
        read(&self.cache_writer)
    }
    pub fn set_cache_writer(&self, actor: ActorRef<CacheMsg>) {
        write(&self.cache_writer, Some(actor));
    }
}
