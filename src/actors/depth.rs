//! The queue-depth poller: reads the ready count of every work queue and of
//! the DLQ from the broker (passive declare) into the gauges KEDA scales on.

use std::time::Duration;

use lapin::{Channel, Connection};
use metrics::gauge;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;

use crate::metrics::{DLQ_DEPTH, QUEUE_DEPTH};
use crate::render::Format;
use crate::storage::queue::{self, QueueError};

use super::context::Ctx;
use super::protocol::DepthMsg;

const PERIOD: Duration = Duration::from_secs(5);

pub(crate) struct DepthPoller;

pub(crate) struct DepthState {
    ctx: Ctx,
    link: Option<(Connection, Channel)>,
}

impl DepthState {
    async fn poll(&mut self) -> Result<(), QueueError> {
        if self
            .link
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            let connection = queue::connect(&self.ctx.config.amqp_url).await?;
            let channel = connection.create_channel().await?;
            self.link = Some((connection, channel));
        }
        let Some((_, channel)) = &self.link else {
            return Ok(());
        };
        let topology = &self.ctx.topology;
        for format in Format::ALL {
            let name = topology.work_queue(format);
            let depth = queue::queue_depth(channel, &name).await?;
            gauge!(QUEUE_DEPTH, "queue" => name, "format" => format.as_str()).set(f64::from(depth));
        }
        let depth = queue::queue_depth(channel, &topology.dlq()).await?;
        gauge!(DLQ_DEPTH).set(f64::from(depth));
        Ok(())
    }
}

impl Actor for DepthPoller {
    type Msg = DepthMsg;
    type State = DepthState;
    type Arguments = Ctx;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Ctx,
    ) -> Result<DepthState, ActorProcessingErr> {
        myself.send_interval(PERIOD, || DepthMsg::Poll);
        Ok(DepthState { ctx, link: None })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _message: DepthMsg,
        state: &mut DepthState,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(err) = state.poll().await {
            // A missing queue closes the channel; rebuild on the next poll.
            debug!(error = %err, "queue depth not read");
            state.link = None;
        }
        Ok(())
    }
}
