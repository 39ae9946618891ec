//! Every message the worker's actors send each other, in one place, so the
//! way a job travels reads in one file:
//!
//! ```text
//! consumer ──Run(Ticket)──▶ pool ──spawns──▶ attempt (task)
//!                                              │ claim (group commit)
//!                           pool ◀──Render─────┤
//!   renderer ◀──Render──────┘  └──reply────────▶ │
//!                                              │ ──Put──▶ uploader ──reply──▶ │
//!                                              │ done (group commit)
//! consumer ◀──Settle── pool ◀──Finished────────┘
//! ```

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use lapin::message::Delivery;
use ractor::RpcReplyPort;
use uuid::Uuid;

use crate::render::{Format, RenderError};
use crate::storage::blobs::{ArtifactMeta, BlobError, StoredArtifact};
use crate::storage::jobs::JobView;

use super::supervisor::Child;

/// One delivery of a job, as handed from the consumer to its pool.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub job_id: Uuid,
    pub format: Format,
    /// From the work queue's `x-death` count: 1 for the first delivery.
    pub attempt: u32,
    /// The delivery tag on the consumer's channel of connection `epoch`;
    /// a ticket of an older epoch can no longer be acked.
    pub tag: u64,
    pub epoch: u64,
}

/// What the consumer does with a delivery once its attempt is over.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Settle {
    /// Done, or nothing to do (duplicate of a finished job): ack.
    Ack,
    /// A failed attempt: `nack` without requeue, the broker routes it to the
    /// next retry queue (or to the DLQ after the last attempt).
    Retry,
    /// Can never succeed (permanent error, expired): put a DLQ record with
    /// this reason, then ack.
    DeadLetter(String),
    /// Another worker holds a live lease, or PostgreSQL is unreachable: look
    /// again after this long.
    Defer(Duration),
}

/// To `consumer.F`.
pub(crate) enum ConsumerMsg {
    /// (Re)connect and start consuming.
    Connect,
    /// A message from the broker, on the connection of that epoch.
    Delivery(u64, Box<Delivery>),
    /// The connection of that epoch ended.
    Lost(u64, String),
    /// The attempt of a delivery is over (from the pool).
    Settle {
        epoch: u64,
        tag: u64,
        settle: Settle,
    },
    /// A deferred delivery's wait is over: hand it to the pool again.
    Redispatch { epoch: u64, tag: u64 },
    /// The pool was restarted: tickets sent to the old one may be lost, so
    /// hand every held delivery to the new one (duplicates are harmless).
    RedispatchAll,
    /// Shutdown, step 1: stop receiving; held deliveries continue.
    StopConsuming(RpcReplyPort<()>),
    /// Shutdown, step 2: requeue whatever is still held; answers how many.
    RequeueAll(RpcReplyPort<usize>),
}

/// To `pool.F`.
pub(crate) enum PoolMsg {
    /// A delivery to work on (from the consumer): the pool starts its attempt.
    Run(Ticket),
    /// An attempt asks for a renderer (from the attempt task).
    Render(RenderJob),
    /// A renderer is free again (from the renderer).
    Idle(usize),
    /// An attempt is over (from the attempt task).
    Finished { ticket: Ticket, settle: Settle },
    /// Start the renderer of a slot again after its backoff.
    Respawn(usize),
}

/// A document to render, and where to send the result.
pub(crate) struct RenderJob {
    pub job_id: Uuid,
    pub format: Format,
    pub payload: String,
    /// Above the big-document threshold: rendered to a temporary file (not
    /// memory), and counted against the renderers big jobs may hold.
    pub big: bool,
    pub reply: RpcReplyPort<Result<Rendered, RenderError>>,
}

/// A rendered artifact on its way to the uploader.
#[derive(Debug)]
pub(crate) enum Rendered {
    /// A small document's bytes: uploaded straight from memory.
    Memory(Bytes),
    /// A big document's file; the directory is removed when this is dropped.
    File {
        dir: tempfile::TempDir,
        path: PathBuf,
    },
}

/// To `renderer.F.i`.
pub(crate) enum RendererMsg {
    /// Render one document; the pool sends the next only after `Idle`.
    Render(RenderJob),
}

/// To `uploader`.
pub(crate) enum UploaderMsg {
    /// Store the artifact under `key`, replacing any object there.
    Put {
        key: String,
        artifact: Rendered,
        meta: ArtifactMeta,
        reply: RpcReplyPort<Result<StoredArtifact, BlobError>>,
    },
}

/// To `cache_writer`.
pub(crate) enum CacheMsg {
    /// A status transition to write through to Redis.
    Put(Box<JobView>),
    /// A batch of writes is over (from the writer's own task).
    Written { views: Vec<JobView>, ok: bool },
    /// Write again what an outage kept back.
    Retry,
}

/// To `root`.
pub(crate) enum RootMsg {
    /// Start a child again once its backoff has passed.
    Restart(Child),
}

/// To `relay`.
pub(crate) enum RelayMsg {
    /// Publish what the outbox holds (every second).
    Sweep,
}

/// To `janitor`.
pub(crate) enum JanitorMsg {
    /// Delete what is past its retention (every retention/10, 1 s to 1 min).
    Sweep,
}

/// To `queue_depth`.
pub(crate) enum DepthMsg {
    /// Read the queue depths (every 5 s).
    Poll,
}
