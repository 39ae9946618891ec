//! Coalescing: concurrent requests to one backend share a round trip.
//!
//! On a busy API the cost of a PostgreSQL insert or a Redis command is mostly
//! the round trip (two syscalls on each side, a wake-up, a commit), not the
//! work. A collector therefore takes whatever requests have gathered while the
//! previous round trips were in flight and sends them as one. Under light load
//! a batch is one request and costs one channel hop; under heavy load batches
//! grow by themselves, so no timer ever delays a request.
//!
//! A collector also keeps its connection between batches ([`Held`]): every
//! request of a batch waits for that batch, so a pool's per-checkout health
//! check would be one more round trip on everyone's path.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc};

/// Starts a collector on the current runtime and returns its inbox.
///
/// `run` gets each batch (at most `max_batch` items, in arrival order) and is
/// responsible for answering every item in it; at most `in_flight` batches
/// run at once. The collector stops when every sender is dropped.
pub fn spawn<T, F, Fut>(max_batch: usize, in_flight: usize, run: F) -> mpsc::Sender<T>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (inbox, rx) = mpsc::channel(max_batch * in_flight * 4);
    tokio::spawn(collect(rx, max_batch, in_flight, run));
    inbox
}

async fn collect<T, F, Fut>(mut rx: mpsc::Receiver<T>, max_batch: usize, in_flight: usize, run: F)
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    loop {
        // Wait for a free slot first, so requests pile up into a bigger batch
        // while every slot is busy.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let work = run(batch);
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// The connection a collector keeps from one batch to the next.
///
/// Pools check a connection each time it is checked out (sqlx pings
/// PostgreSQL, bb8 sends Redis a `PING`): a round trip that took up to 3 ms
/// at p99 under load, paid by every request of the batch. A collector instead
/// [`take_or`](Held::take_or)s the connection its last batch used and
/// [`keep`](Held::keep)s it again only if that batch succeeded on it, so a
/// connection that failed goes back through its pool and is checked there.
pub struct Held<C>(Mutex<Option<C>>);

impl<C> Held<C> {
    /// An empty slot: the first batch checks a connection out.
    pub fn new() -> Self {
        Held(Mutex::new(None))
    }

    /// The connection the last batch left, or a new one from `checkout`
    /// (the pool, with its health check) when there is none.
    pub async fn take_or<E>(&self, checkout: impl Future<Output = Result<C, E>>) -> Result<C, E> {
        let kept = self.0.lock().ok().and_then(|mut slot| slot.take());
        match kept {
            Some(conn) => Ok(conn),
            None => checkout.await,
        }
    }

    /// Keeps `conn` for the next batch; call it only after a batch succeeded.
    pub fn keep(&self, conn: C) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(conn);
        }
    }
}

impl<C> Default for Held<C> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Requests sent while a batch is in flight travel together in the next.
    #[tokio::test]
    async fn requests_waiting_behind_a_busy_slot_share_one_batch() {
        let (release, held) = oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let (sizes_tx, mut sizes) = mpsc::unbounded_channel();
        let inbox = spawn(64, 1, move |batch: Vec<oneshot::Sender<()>>| {
            let held = held.clone();
            let sizes_tx = sizes_tx.clone();
            async move {
                let _ = sizes_tx.send(batch.len());
                // The first batch blocks until the test releases it.
                if let Some(gate) = held.lock().await.take() {
                    let _ = gate.await;
                }
                for reply in batch {
                    let _ = reply.send(());
                }
            }
        });
        let (first, first_done) = oneshot::channel();
        inbox.send(first).await.unwrap();
        assert_eq!(sizes.recv().await, Some(1));
        let mut waiting = Vec::new();
        for _ in 0..10 {
            let (reply, done) = oneshot::channel();
            inbox.send(reply).await.unwrap();
            waiting.push(done);
        }
        release.send(()).unwrap();
        first_done.await.unwrap();
        assert_eq!(sizes.recv().await, Some(10));
        for done in waiting {
            done.await.unwrap();
        }
    }
}
