//! A renderer: the pipeline's CPU stage. Renders one document at a time on a
//! blocking thread and answers the attempt that asked; everything around the
//! render (claim, upload, commit) happens elsewhere, so a renderer is busy
//! only while a core is.

use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use uuid::Uuid;

use crate::render::{self, Format, Limits, RenderError};

use super::fault;
use super::protocol::{PoolMsg, RenderJob, Rendered, RendererMsg};

pub(crate) struct Renderer;

pub(crate) struct RendererArgs {
    pub limits: Limits,
    /// A render still running after this fails for good (`TimedOut`), which
    /// frees the renderer: the parser checks the clock between rows.
    pub timeout: Duration,
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
        let RendererMsg::Render(job) = message;
        // A panic here (the test fault hook, or one re-raised from the render
        // thread) kills this actor: the reply port is dropped with the
        // message, so the attempt sees its renderer crash.
        fault::maybe_panic(&job.payload, fault::RENDERER);
        let RenderJob {
            job_id,
            format,
            payload,
            big,
            reply,
        } = job;
        let settings = (state.limits, state.timeout);
        let result = render_blocking(settings, job_id, format, payload, big).await;
        let _ = reply.send(result);
        // The pool is this actor's supervisor; it outlives it.
        let _ = state.pool.cast(PoolMsg::Idle(state.slot));
        Ok(())
    }
}

/// Renders on a blocking thread so no actor's mailbox or runtime worker
/// stalls; a panic inside the renderer is re-raised here, in the actor.
async fn render_blocking(
    (limits, timeout): (Limits, Duration),
    job_id: Uuid,
    format: Format,
    payload: String,
    big: bool,
) -> Result<Rendered, RenderError> {
    let joined = tokio::task::spawn_blocking(move || {
        if !big {
            let (_, bytes) =
                render::render_to_memory(format, payload.as_bytes(), &limits, Some(timeout))?;
            return Ok(Rendered::Memory(Bytes::from(bytes)));
        }
        let dir = tempfile::Builder::new().prefix("artefatos-").tempdir()?;
        let path = dir.path().join(format!("{job_id}.{format}"));
        render::render_slice(format, payload.as_bytes(), &limits, &path, Some(timeout))?;
        Ok(Rendered::File { dir, path })
    })
    .await;
    match joined {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(RenderError::Internal("render task cancelled")),
    }
}
