//! The messages a job travels in between the consumer, its pool and a
//! renderer: which delivery it is, and how the consumer must settle it.

use std::time::Duration;

use uuid::Uuid;

use crate::render::Format;

/// One delivery of a job, as handed from the consumer to its renderer pool.
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
    /// Another worker holds a live lease: look again after this long.
    Defer(Duration),
}
