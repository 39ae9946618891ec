//! The outbox relay: every second, publishes committed jobs RabbitMQ has not
//! confirmed yet (API crashed after commit, broker down at POST time). Runs in
//! every role, so an API-only deployment still drains its outbox.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, warn};

use super::context::Ctx;
use super::health::ActorState;
use super::protocol::RelayMsg;

const PERIOD: Duration = Duration::from_secs(1);

pub(crate) struct Relay;

impl Actor for Relay {
    type Msg = RelayMsg;
    type State = Ctx;
    type Arguments = Ctx;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Ctx,
    ) -> Result<Ctx, ActorProcessingErr> {
        myself.send_interval(PERIOD, || RelayMsg::Sweep);
        Ok(ctx)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _message: RelayMsg,
        ctx: &mut Ctx,
    ) -> Result<(), ActorProcessingErr> {
        match ctx.outbox.sweep().await {
            Ok(0) => ctx.health.set_state("relay", ActorState::Running),
            Ok(n) => {
                debug!(published = n, "outbox relay published jobs");
                ctx.health.set_state("relay", ActorState::Running);
            }
            Err(err) => {
                // Broker or database down: the next sweep tries again.
                warn!(error = %err, "outbox sweep failed");
                ctx.health.failure("relay", &err.to_string(), false);
                ctx.health.set_state("relay", ActorState::Connecting);
            }
        }
        Ok(())
    }
}
