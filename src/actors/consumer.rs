//! A queue consumer per format: owns its RabbitMQ connection and channel,
//! holds every delivery until its attempt is settled, and rebuilds the
//! connection when it is lost.
//!
//! Deliveries received on a lost connection cannot be acked on the new one:
//! they are forgotten (the broker has already requeued them) and any late
//! settlement for them is ignored, by connection `epoch`.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::{Acker, BasicProperties, Channel, Connection};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::render::Format;
use crate::storage::jobs::lifecycle;
use crate::storage::queue::{self, QueueError};

use super::context::Ctx;
use super::health::ActorState;
use super::protocol::{ConsumerMsg, PoolMsg, Settle, Ticket};
use super::restart::backoff;

/// The first wait before reconnecting to the broker, doubling up to the max.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Consumer;

pub(crate) struct ConsumerArgs {
    pub ctx: Ctx,
    pub format: Format,
}

struct Link {
    /// Taken by `drop` to close it.
    connection: Option<Connection>,
    channel: Channel,
    reader: JoinHandle<()>,
}

impl Drop for Link {
    /// Runs on every way out, a panic included: stop reading and close the
    /// connection, so the broker requeues every delivery still unacked on it
    /// at once instead of when the socket times out.
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(connection) = self.connection.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let channel = self.channel.clone();
            runtime.spawn(async move {
                // Channel first, then connection: closing both at once makes
                // lapin log a spurious connection error.
                let _ = channel.close(200, "consumer stopped".into()).await;
                let _ = connection.close(200, "consumer stopped".into()).await;
            });
        }
    }
}

struct Held {
    ticket: Ticket,
    acker: Acker,
    properties: BasicProperties,
    /// Waiting for another worker's lease, not in the pool.
    deferred: bool,
}

pub(crate) struct ConsumerState {
    ctx: Ctx,
    format: Format,
    epoch: u64,
    link: Option<Link>,
    held: HashMap<u64, Held>,
    failures: u32,
    draining: bool,
}

impl ConsumerState {
    fn name(&self) -> String {
        format!("consumer.{}", self.format)
    }

    fn consumer_tag(&self) -> String {
        format!("{}.{}", self.ctx.worker_id, self.format)
    }

    fn publish_in_flight(&self) {
        self.ctx.health.set_in_flight(&self.name(), self.held.len());
    }

    async fn connect(&mut self, myself: &ActorRef<ConsumerMsg>) -> Result<(), QueueError> {
        let connection = queue::connect(&self.ctx.config.amqp_url).await?;
        let prefetch = u16::try_from(self.ctx.config.worker.concurrency).unwrap_or(u16::MAX);
        let (channel, mut stream) = queue::consume(
            &connection,
            &self.ctx.topology,
            self.format,
            prefetch,
            &self.consumer_tag(),
        )
        .await?;
        self.epoch += 1;
        let epoch = self.epoch;
        let me = myself.clone();
        let reader = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let message = match item {
                    Ok(delivery) => ConsumerMsg::Delivery(epoch, Box::new(delivery)),
                    Err(err) => ConsumerMsg::Lost(epoch, err.to_string()),
                };
                if me.cast(message).is_err() {
                    return;
                }
            }
            let _ = me.cast(ConsumerMsg::Lost(epoch, "consumer cancelled".into()));
        });
        self.link = Some(Link {
            connection: Some(connection),
            channel,
            reader,
        });
        Ok(())
    }

    fn drop_link(&mut self) {
        // Closes the connection (see `Link::drop`).
        self.link = None;
        self.held.clear();
        self.publish_in_flight();
    }

    fn dispatch(&self, myself: &ActorRef<ConsumerMsg>, ticket: Ticket) {
        match self.ctx.peers.pool(self.format) {
            Some(pool) if pool.cast(PoolMsg::Run(ticket.clone())).is_ok() => {}
            // The pool is being restarted: try again shortly.
            _ => {
                let (epoch, tag) = (ticket.epoch, ticket.tag);
                myself.send_after(Duration::from_millis(500), move || {
                    ConsumerMsg::Redispatch { epoch, tag }
                });
            }
        }
    }

    async fn receive(&mut self, myself: &ActorRef<ConsumerMsg>, delivery: Delivery) {
        let work_queue = self.ctx.topology.work_queue(self.format);
        let job_id = match queue::job_id_of(&delivery.data) {
            Ok(id) => id,
            Err(err) => {
                // Not a job: let the retry chain carry it to the DLQ for a human.
                error!(error = %err, "malformed message");
                let _ = delivery.acker.nack(no_requeue()).await;
                return;
            }
        };
        let ticket = Ticket {
            job_id,
            format: self.format,
            attempt: queue::attempt(&delivery.properties, &work_queue),
            tag: delivery.delivery_tag,
            epoch: self.epoch,
        };
        self.held.insert(
            delivery.delivery_tag,
            Held {
                ticket: ticket.clone(),
                acker: delivery.acker,
                properties: delivery.properties,
                deferred: false,
            },
        );
        self.publish_in_flight();
        self.dispatch(myself, ticket);
    }

    async fn settle(&mut self, myself: &ActorRef<ConsumerMsg>, tag: u64, settle: Settle) {
        if let Settle::Defer(wait) = settle {
            if self.draining {
                // Nothing is being done for it here: give it back at once.
                self.requeue(tag).await;
            } else if let Some(held) = self.held.get_mut(&tag) {
                held.deferred = true;
                let epoch = self.epoch;
                myself.send_after(wait, move || ConsumerMsg::Redispatch { epoch, tag });
            }
            return;
        }
        let Some(held) = self.held.remove(&tag) else {
            return;
        };
        self.publish_in_flight();
        let job_id = held.ticket.job_id;
        let result = match settle {
            Settle::Ack | Settle::Defer(_) => held.acker.ack(BasicAckOptions::default()).await,
            Settle::Retry => held.acker.nack(no_requeue()).await,
            Settle::DeadLetter(reason) => {
                if let Some(link) = &self.link
                    && let Err(err) = queue::publish_dlq_record(
                        &link.channel,
                        &self.ctx.topology,
                        job_id,
                        &reason,
                        &held.properties,
                    )
                    .await
                {
                    // The job row says `failed` with its error either way.
                    error!(%job_id, error = %err, "DLQ record not written");
                }
                held.acker.ack(BasicAckOptions::default()).await
            }
        };
        if let Err(err) = result {
            warn!(%job_id, error = %err, "delivery not settled; the broker will redeliver it");
        }
    }

    /// Gives one delivery back to the broker (nack with requeue).
    async fn requeue(&mut self, tag: u64) {
        if let Some(held) = self.held.remove(&tag) {
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(err) = held.acker.nack(requeue).await {
                let job_id = held.ticket.job_id;
                warn!(%job_id, error = %err, "requeue failed; the broker requeues on close");
            }
            self.publish_in_flight();
        }
    }

    async fn requeue_all(&mut self) -> usize {
        let held: Vec<Held> = self.held.drain().map(|(_, h)| h).collect();
        let count = held.len();
        for held in held {
            let job_id = held.ticket.job_id;
            let _ = lifecycle::release_lease(&self.ctx.db, job_id, &self.ctx.worker_id).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(err) = held.acker.nack(requeue).await {
                warn!(%job_id, error = %err, "requeue failed; the broker requeues on close");
            }
        }
        self.publish_in_flight();
        count
    }
}

fn no_requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: false,
        ..Default::default()
    }
}

impl Actor for Consumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<ConsumerState, ActorProcessingErr> {
        let state = ConsumerState {
            ctx: args.ctx,
            format: args.format,
            epoch: 0,
            link: None,
            held: HashMap::new(),
            failures: 0,
            draining: false,
        };
        state
            .ctx
            .health
            .set_state(&state.name(), ActorState::Connecting);
        myself.cast(ConsumerMsg::Connect)?;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        state.drop_link();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ConsumerMsg,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerMsg::Connect => {
                if state.draining || state.link.is_some() {
                    return Ok(());
                }
                match state.connect(&myself).await {
                    Ok(()) => {
                        info!(format = %state.format, "consuming");
                        state.failures = 0;
                        state
                            .ctx
                            .health
                            .set_state(&state.name(), ActorState::Running);
                    }
                    Err(err) => {
                        state.failures += 1;
                        let backoff = backoff(state.failures, RECONNECT_FIRST, RECONNECT_MAX);
                        warn!(format = %state.format, error = %err, ?backoff, "cannot consume");
                        state
                            .ctx
                            .health
                            .failure(&state.name(), &err.to_string(), false);
                        state
                            .ctx
                            .health
                            .set_state(&state.name(), ActorState::Connecting);
                        myself.send_after(backoff, || ConsumerMsg::Connect);
                    }
                }
            }
            ConsumerMsg::Delivery(epoch, delivery) => {
                if epoch == state.epoch && !state.draining {
                    state.receive(&myself, *delivery).await;
                } else if epoch == state.epoch {
                    // Arrived after the cancel: give it straight back.
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    let _ = delivery.acker.nack(requeue).await;
                }
            }
            ConsumerMsg::Lost(epoch, reason) => {
                if epoch == state.epoch && !state.draining {
                    warn!(format = %state.format, %reason, "broker connection lost; reconnecting");
                    state.ctx.health.failure(&state.name(), &reason, false);
                    state
                        .ctx
                        .health
                        .set_state(&state.name(), ActorState::Connecting);
                    state.drop_link();
                    myself.send_after(RECONNECT_FIRST, || ConsumerMsg::Connect);
                }
            }
            ConsumerMsg::Settle { epoch, tag, settle } => {
                if epoch == state.epoch {
                    state.settle(&myself, tag, settle).await;
                }
            }
            ConsumerMsg::Redispatch { epoch, tag } => {
                if epoch != state.epoch {
                    return Ok(());
                }
                if state.draining {
                    state.requeue(tag).await;
                } else if let Some(held) = state.held.get_mut(&tag) {
                    held.deferred = false;
                    let ticket = held.ticket.clone();
                    state.dispatch(&myself, ticket);
                }
            }
            ConsumerMsg::RedispatchAll => {
                if !state.draining {
                    for held in state.held.values() {
                        state.dispatch(&myself, held.ticket.clone());
                    }
                }
            }
            ConsumerMsg::StopConsuming(reply) => {
                state.draining = true;
                if let Some(link) = &state.link {
                    let tag = state.consumer_tag();
                    let _ = link
                        .channel
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                }
                // Deliveries waiting on another worker's lease are not work in
                // progress: they go back now, not after the grace period.
                let deferred: Vec<u64> = state
                    .held
                    .iter()
                    .filter(|(_, h)| h.deferred)
                    .map(|(tag, _)| *tag)
                    .collect();
                for tag in deferred {
                    state.requeue(tag).await;
                }
                let _ = reply.send(());
            }
            ConsumerMsg::RequeueAll(reply) => {
                let count = state.requeue_all().await;
                let _ = reply.send(count);
            }
        }
        Ok(())
    }
}
