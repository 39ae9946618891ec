//! A renderer: runs one attempt at a time (see `attempt`) and reports how its
//! delivery must be settled to the pool that owns it.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::attempt;
use super::context::Ctx;
use super::pool::PoolMsg;
use super::ticket::Ticket;

pub(crate) enum RendererMsg {
    /// Run one attempt; the pool sends the next only after `Finished`.
    Run(Ticket),
}

pub(crate) struct Renderer;

pub(crate) struct RendererArgs {
    pub ctx: Ctx,
    pub pool: ActorRef<PoolMsg>,
    pub slot: usize,
}

impl Actor for Renderer {
    type Msg = RendererMsg;
    type State = RendererArgs;
    type Arguments = RendererArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RendererArgs,
    ) -> Result<RendererArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: RendererMsg,
        state: &mut RendererArgs,
    ) -> Result<(), ActorProcessingErr> {
        let RendererMsg::Run(ticket) = message;
        let settle = attempt::run(&state.ctx, &ticket).await;
        // The pool is this actor's supervisor; it outlives it.
        let _ = state.pool.cast(PoolMsg::Finished {
            slot: state.slot,
            ticket,
            settle,
        });
        Ok(())
    }
}
