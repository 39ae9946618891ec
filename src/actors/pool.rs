//! A pool per format: starts an attempt for every delivery the consumer hands
//! it, and owns the renderers those attempts share.
//!
//! The attempts (`attempt.rs`) are tasks, as many as the consumer's prefetch:
//! they spend their time waiting on PostgreSQL, S3 and the broker, which
//! costs nothing. The renderers are actors, one per core by default: the only
//! stage that needs a CPU. A render request waits here for a free renderer;
//! big documents (above `ARTEFATOS_BIG_DOCUMENT_BYTES`) may hold all but one
//! renderer, so small jobs of the same format keep finishing while a 100k-row
//! PDF renders.
//!
//! A renderer that dies (a panic) is restarted after its own backoff; the
//! attempt whose document it held sees its reply port dropped, records a
//! failed attempt and has the delivery retried by the broker.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::AbortHandle;
use tracing::{error, warn};

use crate::metrics::{ACTOR_RESTARTS, JOBS_IN_FLIGHT};
use crate::render::Format;
use crate::storage::jobs::lifecycle;

use super::attempt;
use super::context::Ctx;
use super::health::ActorState;
use super::protocol::{ConsumerMsg, PoolMsg, RenderJob, RendererMsg, Settle, Ticket};
use super::renderer::{Renderer, RendererArgs};
use super::restart::{RestartBudget, ended};

pub(crate) struct Pool;

pub(crate) struct PoolArgs {
    pub ctx: Ctx,
    pub format: Format,
}

pub(crate) struct PoolState {
    ctx: Ctx,
    format: Format,
    slots: Vec<Slot>,
    /// Render requests waiting for a renderer, small and big apart.
    small: VecDeque<RenderJob>,
    big: VecDeque<RenderJob>,
    /// Attempts running, by delivery (epoch, tag).
    attempts: HashMap<(u64, u64), Running>,
    /// Renderer restarts, counted for the pool as a whole: renderers that
    /// keep dying, whichever they are, mean the pool itself is unwell.
    budget: RestartBudget,
}

struct Slot {
    actor: Option<ActorRef<RendererMsg>>,
    /// Rendering: `Some(big)`, whether the document is big.
    busy: Option<bool>,
    /// Failed spawns in a row, for the backoff before the next.
    failures: u32,
}

struct Running {
    ticket: Ticket,
    task: AbortHandle,
}

fn renderer_name(format: Format, slot: usize) -> String {
    format!("renderer.{format}.{slot}")
}

impl PoolState {
    fn name(&self) -> String {
        format!("pool.{}", self.format)
    }

    /// Most renderers big documents may hold at once: all but one.
    fn big_limit(&self) -> usize {
        self.slots.len().saturating_sub(1).max(1)
    }

    fn publish_in_flight(&self) {
        let in_flight = self.attempts.len();
        self.ctx.health.set_in_flight(&self.name(), in_flight);
        // Ready messages alone hide work being rendered: KEDA scales on both.
        gauge!(JOBS_IN_FLIGHT, "format" => self.format.as_str()).set(in_flight as f64);
    }

    /// Hands waiting render requests to idle renderers: big ones first while
    /// they are under their limit, so a steady stream of small jobs cannot
    /// starve them, and small ones on every renderer left.
    fn dispatch(&mut self) {
        loop {
            let busy_big = self.slots.iter().filter(|s| s.busy == Some(true)).count();
            let take_big = !self.big.is_empty() && busy_big < self.big_limit();
            if !take_big && self.small.is_empty() {
                return;
            }
            let Some(slot) = self
                .slots
                .iter()
                .position(|s| s.busy.is_none() && s.actor.is_some())
            else {
                return;
            };
            let queue = if take_big {
                &mut self.big
            } else {
                &mut self.small
            };
            let Some(job) = queue.pop_front() else {
                return;
            };
            let big = job.big;
            let Some(actor) = &self.slots[slot].actor else {
                return;
            };
            match actor.cast(RendererMsg::Render(job)) {
                Ok(()) => self.slots[slot].busy = Some(big),
                // The renderer is stopping: its supervision event frees the
                // slot; the request's reply port went with the message, so
                // its attempt sees the failure.
                Err(_) => self.slots[slot].actor = None,
            }
        }
    }

    fn settle(&self, ticket: &Ticket, settle: Settle) {
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

    fn start_attempt(&mut self, myself: &ActorRef<PoolMsg>, ticket: Ticket) {
        let key = (ticket.epoch, ticket.tag);
        // A delivery handed over twice (after a pool restart) runs once.
        if self.attempts.contains_key(&key) {
            return;
        }
        let (ctx, pool) = (self.ctx.clone(), myself.clone());
        let for_task = ticket.clone();
        let task = tokio::spawn(async move {
            let settle = attempt::run(&ctx, &pool, &for_task).await;
            let _ = pool.cast(PoolMsg::Finished {
                ticket: for_task,
                settle,
            });
        });
        self.attempts.insert(
            key,
            Running {
                ticket,
                task: task.abort_handle(),
            },
        );
    }

    async fn spawn(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        let name = renderer_name(self.format, slot);
        let args = RendererArgs {
            limits: self.ctx.config.limits,
            timeout: self.ctx.config.worker.render_timeout,
            pool: myself.clone(),
            slot,
        };
        match Actor::spawn_linked(None, Renderer, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.slots[slot].actor = Some(actor);
                self.slots[slot].failures = 0;
                self.ctx.health.set_state(&name, ActorState::Running);
            }
            Err(err) => {
                self.ctx.health.failure(&name, &err.to_string(), false);
                self.slots[slot].failures += 1;
                let wait = super::restart::backoff(
                    self.slots[slot].failures,
                    Duration::from_millis(100),
                    Duration::from_secs(10),
                );
                myself.send_after(wait, move || PoolMsg::Respawn(slot));
            }
        }
    }

    /// Gives up: every attempt stops, its lease is given back and its
    /// delivery is handed back as `Defer`; the consumer sends them all again
    /// once the root has restarted the pool.
    fn abandon_attempts(&mut self) {
        let owner = self.ctx.worker_id.clone();
        let mut jobs = Vec::new();
        let attempts: Vec<Running> = self.attempts.drain().map(|(_, r)| r).collect();
        for running in attempts {
            running.task.abort();
            jobs.push(running.ticket.job_id);
            self.settle(&running.ticket, Settle::Defer(Duration::from_secs(1)));
        }
        let db = self.ctx.db.clone();
        tokio::spawn(async move {
            for job_id in jobs {
                let _ = lifecycle::release_lease(&db, job_id, &owner).await;
            }
        });
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
        let size = args.ctx.config.worker.renderers.max(1);
        let mut state = PoolState {
            ctx: args.ctx,
            format: args.format,
            slots: (0..size)
                .map(|_| Slot {
                    actor: None,
                    busy: None,
                    failures: 0,
                })
                .collect(),
            small: VecDeque::new(),
            big: VecDeque::new(),
            attempts: HashMap::new(),
            budget: RestartBudget::default(),
        };
        for slot in 0..size {
            state.spawn(&myself, slot).await;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children(None);
        // Unsettled deliveries: the consumer requeues them at shutdown, or
        // the broker does when the consumer's channel closes.
        for (_, running) in state.attempts.drain() {
            running.task.abort();
        }
        state.small.clear();
        state.big.clear();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PoolMsg::Run(ticket) => state.start_attempt(&myself, ticket),
            PoolMsg::Render(job) => {
                if job.big {
                    state.big.push_back(job);
                } else {
                    state.small.push_back(job);
                }
            }
            PoolMsg::Idle(slot) => {
                if let Some(s) = state.slots.get_mut(slot) {
                    s.busy = None;
                }
            }
            PoolMsg::Finished { ticket, settle } => {
                state.attempts.remove(&(ticket.epoch, ticket.tag));
                state.settle(&ticket, settle);
            }
            PoolMsg::Respawn(slot) => {
                if state.slots[slot].actor.is_none() && !state.ctx.shutting_down() {
                    state.spawn(&myself, slot).await;
                }
            }
        }
        state.dispatch();
        state.publish_in_flight();
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
        // The attempt it rendered for learns it from its dropped reply port.
        state.slots[slot].busy = None;
        if state.ctx.shutting_down() {
            state.ctx.health.set_state(&name, ActorState::Stopped);
            return Ok(());
        }
        error!(actor = %name, %reason, "renderer died; restarting it");
        counter!(ACTOR_RESTARTS, "actor" => format!("renderer.{}", state.format)).increment(1);
        state.ctx.health.failure(&name, &reason, true);
        state.ctx.health.set_state(&name, ActorState::Restarting);

        match state.budget.next_backoff(Instant::now()) {
            Some(backoff) => {
                myself.send_after(backoff, move || PoolMsg::Respawn(slot));
                state.dispatch();
                Ok(())
            }
            None => {
                // Escalate: the root restarts the whole pool with fresh
                // renderers, and the consumer hands every delivery over again.
                state.ctx.health.set_state(&name, ActorState::Failed);
                myself.stop_children(None);
                state.abandon_attempts();
                Err(format!("renderer {name} restarted too often").into())
            }
        }
    }
}
