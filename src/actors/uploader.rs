//! The uploader: the pipeline's I/O stage for artifacts. Stores each
//! rendered artifact in the artifact store (S3 or the local directory) with
//! its content type and disposition: small ones straight from memory, big
//! ones from their file (multipart on S3).
//!
//! Each upload runs as its own task and answers its caller directly, so any
//! number run at once and one slow upload never holds the mailbox; the actor
//! counts them for health. If the actor dies, the tasks already started run
//! on and answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::context::Ctx;
use super::fault;
use super::protocol::{Rendered, UploaderMsg};

pub(crate) struct Uploader;

pub(crate) struct UploaderState {
    ctx: Ctx,
    in_flight: Arc<AtomicUsize>,
}

impl Actor for Uploader {
    type Msg = UploaderMsg;
    type State = UploaderState;
    type Arguments = Ctx;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Ctx,
    ) -> Result<UploaderState, ActorProcessingErr> {
        Ok(UploaderState {
            ctx,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: UploaderMsg,
        state: &mut UploaderState,
    ) -> Result<(), ActorProcessingErr> {
        let UploaderMsg::Put {
            key,
            artifact,
            meta,
            reply,
        } = message;
        fault::maybe_panic(&meta.content_disposition, fault::UPLOADER);
        let ctx = state.ctx.clone();
        let in_flight = state.in_flight.clone();
        ctx.health
            .set_in_flight("uploader", in_flight.fetch_add(1, Ordering::SeqCst) + 1);
        tokio::spawn(async move {
            let result = match artifact {
                Rendered::Memory(bytes) => ctx.blobs.put_bytes(&key, bytes, &meta).await,
                // `dir` lives until the upload is over, then removes the file.
                Rendered::File { dir, path } => {
                    let result = ctx.blobs.put_file(&key, &path, &meta).await;
                    drop(dir);
                    result
                }
            };
            let left = in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
            ctx.health.set_in_flight("uploader", left);
            // The caller may have given up (timeout); nothing to do then.
            let _ = reply.send(result);
        });
        Ok(())
    }
}
