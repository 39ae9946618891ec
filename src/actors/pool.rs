//! A renderer pool per format: owns `concurrency` renderer actors, queues
//! tickets while all are busy, and restarts a renderer that dies — settling
//! the job it held as a failed attempt, so the broker retries it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{error, warn};

use crate::metrics::{ACTOR_RESTARTS, JOBS_IN_FLIGHT};
use crate::render::Format;

use super::attempt;
use super::consumer::ConsumerMsg;
use super::context::Ctx;
use super::health::ActorState;
use super::renderer::{Renderer, RendererArgs, RendererMsg};
use super::supervisor::{RestartBudget, ended};
use super::ticket::{Settle, Ticket};

pub(crate) enum PoolMsg {
    /// A delivery to render (from the consumer).
    Run(Ticket),
    /// A renderer finished an attempt (from the renderer).
    Finished {
        slot: usize,
        ticket: Ticket,
        settle: Settle,
    },
    /// Start the renderer of a slot again after its backoff.
    Respawn(usize),
}

pub(crate) struct Pool;

pub(crate) struct PoolArgs {
    pub ctx: Ctx,
    pub format: Format,
}

pub(crate) struct PoolState {
    ctx: Ctx,
    format: Format,
    slots: Vec<Slot>,
    waiting: VecDeque<Ticket>,
    budget: RestartBudget,
}

struct Slot {
    actor: Option<ActorRef<RendererMsg>>,
    busy: Option<Ticket>,
}

fn renderer_name(format: Format, slot: usize) -> String {
    format!("renderer.{format}.{slot}")
}

impl PoolState {
    fn name(&self) -> String {
        format!("pool.{}", self.format)
    }

    fn publish_in_flight(&self) {
        let busy = self.slots.iter().filter(|s| s.busy.is_some()).count();
        let in_flight = busy + self.waiting.len();
        self.ctx.health.set_in_flight(&self.name(), in_flight);
        // Ready messages alone hide work being rendered: KEDA scales on both.
        gauge!(JOBS_IN_FLIGHT, "format" => self.format.as_str()).set(in_flight as f64);
    }

    fn dispatch(&mut self) {
        for slot in self.slots.iter_mut() {
            if self.waiting.is_empty() {
                break;
            }
            if slot.busy.is_none()
                && let Some(actor) = &slot.actor
                && let Some(ticket) = self.waiting.pop_front()
            {
                match actor.cast(RendererMsg::Run(ticket.clone())) {
                    Ok(()) => slot.busy = Some(ticket),
                    Err(_) => self.waiting.push_front(ticket),
                }
            }
        }
        self.publish_in_flight();
    }

    fn settle(&self, ticket: Ticket, settle: Settle) {
        match self.ctx.peers.consumer(self.format) {
            Some(consumer) => {
                let _ = consumer.cast(ConsumerMsg::Settle {
                    epoch: ticket.epoch,
                    tag: ticket.tag,
                    settle,
                });
            }
            // No consumer: its channel is gone and the broker redelivers.
            None => warn!(job_id = %ticket.job_id, "no consumer to settle with"),
        }
    }

    async fn spawn(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        let name = renderer_name(self.format, slot);
        let args = RendererArgs {
            ctx: self.ctx.clone(),
            pool: myself.clone(),
            slot,
        };
        match Actor::spawn_linked(None, Renderer, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.slots[slot].actor = Some(actor);
                self.ctx.health.set_state(&name, ActorState::Running);
            }
            Err(err) => {
                self.ctx.health.failure(&name, &err.to_string(), false);
                myself.send_after(Duration::from_secs(1), move || PoolMsg::Respawn(slot));
            }
        }
    }
}

impl Actor for Pool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let size = args.ctx.config.worker.concurrency.max(1);
        let mut state = PoolState {
            ctx: args.ctx,
            format: args.format,
            slots: (0..size)
                .map(|_| Slot {
                    actor: None,
                    busy: None,
                })
                .collect(),
            waiting: VecDeque::new(),
            budget: RestartBudget::default(),
        };
        for slot in 0..size {
            state.spawn(&myself, slot).await;
        }
        state.ctx.peers.set_pool(state.format, myself.clone());
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children(None);
        // Unsettled tickets: the consumer requeues their deliveries at shutdown,
        // or the broker does when the consumer's channel closes.
        state.waiting.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PoolMsg::Run(ticket) => {
                state.waiting.push_back(ticket);
            }
            PoolMsg::Finished {
                slot,
                ticket,
                settle,
            } => {
                if let Some(s) = state.slots.get_mut(slot) {
                    s.busy = None;
                }
                state.settle(ticket, settle);
            }
            PoolMsg::Respawn(slot) => {
                if state.slots[slot].actor.is_none() && !state.ctx.shutting_down() {
                    state.spawn(&myself, slot).await;
                }
            }
        }
        state.dispatch();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = ended(event) else {
            return Ok(());
        };
        let Some(slot) = state.slots.iter().position(|s| {
            s.actor
                .as_ref()
                .is_some_and(|a| a.get_id() == cell.get_id())
        }) else {
            return Ok(());
        };
        let name = renderer_name(state.format, slot);
        state.slots[slot].actor = None;
        if state.ctx.shutting_down() {
            state.ctx.health.set_state(&name, ActorState::Stopped);
            return Ok(());
        }
        error!(actor = %name, %reason, "renderer died; restarting it");
        counter!(ACTOR_RESTARTS, "actor" => format!("renderer.{}", state.format)).increment(1);
        state.ctx.health.failure(&name, &reason, true);
        state.ctx.health.set_state(&name, ActorState::Restarting);

        // The job it held: a failed attempt, retried by the broker.
        if let Some(ticket) = state.slots[slot].busy.take() {
            let text = format!("renderer crashed: {reason}");
            if let Err(err) =
                attempt::failed_attempt(&state.ctx, &ticket, &text, "worker_crashed").await
            {
                warn!(job_id = %ticket.job_id, error = %err, "could not record the crash");
            }
            state.settle(ticket, Settle::Retry);
        }

        match state.budget.next_backoff(Instant::now()) {
            Some(backoff) => {
                myself.send_after(backoff, move || PoolMsg::Respawn(slot));
                Ok(())
            }
            None => {
                // Escalate: the root restarts the whole pool. Every ticket this
                // pool holds goes back to the consumer to be dispatched again.
                state.ctx.health.set_state(&name, ActorState::Failed);
                myself.stop_children(None);
                let held: Vec<Ticket> = state
                    .slots
                    .iter_mut()
                    .filter_map(|s| s.busy.take())
                    .chain(state.waiting.drain(..))
                    .collect();
                for ticket in held {
                    state.settle(ticket, Settle::Defer(Duration::from_secs(1)));
                }
                Err(format!("renderers of {} restarted too often", state.format).into())
            }
        }
    }
}
