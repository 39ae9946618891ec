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
use super::consumer::{Consumer, ConsumerArgs};
use super::context::Ctx;
use super::depth::DepthPoller;
use super::health::ActorState;
use super::janitor::Janitor;
use super::pool::{Pool, PoolArgs};
use super::protocol::{ConsumerMsg, RootMsg};
use super::relay::Relay;
use super::restart::{RestartBudget, ended};
use super::uploader::Uploader;

/// Spawns `actor` linked to `supervisor`; the error as text for the health board.
async fn spawn<A: Actor>(
    actor: A,
    args: A::Arguments,
    supervisor: ActorCell,
) -> Result<ActorRef<A::Msg>, String> {
    Actor::spawn_linked(None, actor, args, supervisor)
        .await
        .map(|(actor, _)| actor)
        .map_err(|e| e.to_string())
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
        let peers = &self.ctx.peers;
        let spawned: Result<ActorCell, String> = match child {
            Child::Consumer(format) => spawn(Consumer, ConsumerArgs { ctx, format }, sup)
                .await
                .map(|a| {
                    peers.set_consumer(format, a.clone());
                    a.get_cell()
                }),
            Child::Pool(format) => spawn(Pool, PoolArgs { ctx, format }, sup).await.map(|a| {
                peers.set_pool(format, a.clone());
                // A restarted pool: re-send what the old one may have lost.
                if let Some(consumer) = peers.consumer(format) {
                    let _ = consumer.cast(ConsumerMsg::RedispatchAll);
                }
                a.get_cell()
            }),
            Child::Uploader => spawn(Uploader, ctx, sup).await.map(|a| {
                peers.set_uploader(a.clone());
                a.get_cell()
            }),
            Child::CacheWriter => spawn(CacheWriter, ctx, sup).await.map(|a| {
                peers.set_cache_writer(a.clone());
                a.get_cell()
            }),
            Child::Relay => spawn(Relay, ctx, sup).await.map(|a| a.get_cell()),
            Child::Janitor => spawn(Janitor, ctx, sup).await.map(|a| a.get_cell()),
            Child::QueueDepth => spawn(DepthPoller, ctx, sup).await.map(|a| a.get_cell()),
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
}
