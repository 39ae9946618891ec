//! The root supervisor: starts the tree for a role, restarts any child that
//! dies with exponential backoff, and gives up on a child (escalating by
//! stopping itself) once it dies too often.
//!
//! ractor's default `handle_supervisor_evt` would stop the root as soon as one
//! child ends; this one restarts instead.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics::counter;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{error, info};

use crate::metrics::ACTOR_RESTARTS;
use crate::render::Format;

use super::Role;
use super::cache_writer::CacheWriter;
use super::consumer::{Consumer, ConsumerArgs, ConsumerMsg};
use super::context::Ctx;
use super::depth::DepthPoller;
use super::health::ActorState;
use super::janitor::Janitor;
use super::pool::{Pool, PoolArgs};
use super::relay::Relay;
use super::uploader::Uploader;

/// Restarts allowed within [`RestartBudget::WINDOW`] before giving up.
const MAX_RESTARTS: usize = 10;

/// Counts recent restarts of one child and spaces them out.
#[derive(Debug, Default)]
pub(crate) struct RestartBudget {
    recent: Vec<Instant>,
}

impl RestartBudget {
    const WINDOW: Duration = Duration::from_secs(60);

    /// The wait before the next restart (100 ms doubling up to 10 s), or `None`
    /// when the child died more than [`MAX_RESTARTS`] times within the window.
    pub fn next_backoff(&mut self, now: Instant) -> Option<Duration> {
        self.recent
            .retain(|at| now.duration_since(*at) < Self::WINDOW);
        self.recent.push(now);
        if self.recent.len() > MAX_RESTARTS {
            return None;
        }
        let exponent = u32::try_from(self.recent.len() - 1)
            .unwrap_or(u32::MAX)
            .min(7);
        Some((Duration::from_millis(100) * 2u32.pow(exponent)).min(Duration::from_secs(10)))
    }
}

/// The child that ended and why, for a supervision event that says one did.
pub(crate) fn ended(event: SupervisionEvent) -> Option<(ActorCell, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, err.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, reason) => {
            Some((cell, reason.unwrap_or_else(|| "stopped".into())))
        }
        _ => None,
    }
}

/// A child of the root, by what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Child {
    Consumer(Format),
    Pool(Format),
    Uploader,
    CacheWriter,
    Relay,
    Janitor,
    QueueDepth,
}

impl Child {
    pub fn name(self) -> String {
        match self {
            Child::Consumer(f) => format!("consumer.{f}"),
            Child::Pool(f) => format!("pool.{f}"),
            Child::Uploader => "uploader".into(),
            Child::CacheWriter => "cache_writer".into(),
            Child::Relay => "relay".into(),
            Child::Janitor => "janitor".into(),
            Child::QueueDepth => "queue_depth".into(),
        }
    }

    /// The children a role runs, in start order (peers before their users).
    pub fn for_role(role: Role, formats: &[Format]) -> Vec<Child> {
        let mut children = Vec::new();
        if matches!(role, Role::Worker | Role::All) {
            children.push(Child::CacheWriter);
            children.push(Child::Uploader);
            children.extend(formats.iter().map(|f| Child::Pool(*f)));
            children.extend(formats.iter().map(|f| Child::Consumer(*f)));
            children.push(Child::Janitor);
            children.push(Child::QueueDepth);
        }
        children.push(Child::Relay);
        children
    }
}

pub(crate) enum RootMsg {
    /// Start a child again once its backoff has passed.
    Restart(Child),
}

pub(crate) struct Root;

pub(crate) struct RootArgs {
    pub ctx: Ctx,
    pub children: Vec<Child>,
}

pub(crate) struct RootState {
    ctx: Ctx,
    running: HashMap<ActorId, Child>,
    budgets: HashMap<Child, RestartBudget>,
}

impl RootState {
    async fn start(&mut self, myself: &ActorRef<RootMsg>, child: Child) {
        let ctx = self.ctx.clone();
        let sup = myself.get_cell();
        let spawned: Result<ActorCell, String> = match child {
            Child::Consumer(format) => {
                let args = ConsumerArgs { ctx, format };
                Actor::spawn_linked(None, Consumer, args, sup)
                    .await
                    .map(|(a, _)| {
                        self.ctx.peers.set_consumer(format, a.clone());
                        a.get_cell()
                    })
                    .map_err(|e| e.to_string())
            }
            Child::Pool(format) => {
                let args = PoolArgs { ctx, format };
                Actor::spawn_linked(None, Pool, args, sup)
                    .await
                    .map(|(a, _)| {
                        // A restarted pool: re-send what the old one may have lost.
                        if let Some(consumer) = self.ctx.peers.consumer(format) {
                            let _ = consumer.cast(ConsumerMsg::RedispatchAll);
                        }
                        a.get_cell()
                    })
                    .map_err(|e| e.to_string())
            }
            Child::Uploader => Actor::spawn_linked(None, Uploader, ctx, sup)
                .await
                .map(|(a, _)| {
                    self.ctx.peers.set_uploader(a.clone());
                    a.get_cell()
                })
                .map_err(|e| e.to_string()),
            Child::CacheWriter => Actor::spawn_linked(None, CacheWriter, ctx, sup)
                .await
                .map(|(a, _)| {
                    self.ctx.peers.set_cache_writer(a.clone());
                    a.get_cell()
                })
                .map_err(|e| e.to_string()),
            Child::Relay => Actor::spawn_linked(None, Relay, ctx, sup)
                .await
                .map(|(a, _)| a.get_cell())
                .map_err(|e| e.to_string()),
            Child::Janitor => Actor::spawn_linked(None, Janitor, ctx, sup)
                .await
                .map(|(a, _)| a.get_cell())
                .map_err(|e| e.to_string()),
            Child::QueueDepth => Actor::spawn_linked(None, DepthPoller, ctx, sup)
                .await
                .map(|(a, _)| a.get_cell())
                .map_err(|e| e.to_string()),
        };
        let name = child.name();
        match spawned {
            Ok(cell) => {
                self.running.insert(cell.get_id(), child);
                // Actors that wait for a dependency set a finer state themselves.
                if self.ctx.health.get(&name).map(|h| h.state) != Some(ActorState::Connecting) {
                    self.ctx.health.set_state(&name, ActorState::Running);
                }
            }
            Err(reason) => self.failed(myself, child, &reason),
        }
    }

    /// Schedules a restart with backoff, or gives up on the whole tree.
    fn failed(&mut self, myself: &ActorRef<RootMsg>, child: Child, reason: &str) {
        let name = child.name();
        error!(actor = %name, %reason, "actor died");
        counter!(ACTOR_RESTARTS, "actor" => name.clone()).increment(1);
        self.ctx.health.failure(&name, reason, true);
        match self
            .budgets
            .entry(child)
            .or_default()
            .next_backoff(Instant::now())
        {
            Some(backoff) => {
                self.ctx.health.set_state(&name, ActorState::Restarting);
                myself.send_after(backoff, move || RootMsg::Restart(child));
            }
            None => {
                self.ctx.health.set_state(&name, ActorState::Failed);
                error!(actor = %name, "restart intensity exceeded; stopping the actor tree");
                myself.stop(Some(format!("{name} restarted too often")));
            }
        }
    }
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut state = RootState {
            ctx: args.ctx,
            running: HashMap::new(),
            budgets: HashMap::new(),
        };
        for child in args.children {
            state.start(&myself, child).await;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.begin_shutdown();
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let RootMsg::Restart(child) = message;
        if !state.ctx.shutting_down() {
            info!(actor = %child.name(), "restarting");
            state.start(&myself, child).await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = ended(event) else {
            return Ok(());
        };
        let Some(child) = state.running.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.ctx.shutting_down() {
            state
                .ctx
                .health
                .set_state(&child.name(), ActorState::Stopped);
        } else {
            state.failed(&myself, child, &reason);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_role_runs_only_the_relay() {
        assert_eq!(Child::for_role(Role::Api, &Format::ALL), vec![Child::Relay]);
        let worker = Child::for_role(Role::Worker, &[Format::Pdf]);
        assert!(worker.contains(&Child::Consumer(Format::Pdf)));
        assert!(!worker.contains(&Child::Consumer(Format::Xlsx)));
        assert!(worker.contains(&Child::Relay));
        // A pool starts before the consumer that feeds it.
        let pool = worker.iter().position(|c| *c == Child::Pool(Format::Pdf));
        let consumer = worker
            .iter()
            .position(|c| *c == Child::Consumer(Format::Pdf));
        assert!(pool < consumer);
    }

    #[test]
    fn backoff_doubles_then_the_budget_runs_out() {
        let mut budget = RestartBudget::default();
        let now = Instant::now();
        assert_eq!(budget.next_backoff(now), Some(Duration::from_millis(100)));
        assert_eq!(budget.next_backoff(now), Some(Duration::from_millis(200)));
        for _ in 2..MAX_RESTARTS {
            assert!(budget.next_backoff(now).is_some());
        }
        assert_eq!(budget.next_backoff(now), None);
        // Restarts older than the window no longer count.
        let mut budget = RestartBudget::default();
        budget.next_backoff(now);
        let later = now + RestartBudget::WINDOW + Duration::from_secs(1);
        assert_eq!(budget.next_backoff(later), Some(Duration::from_millis(100)));
    }
}
