//! The uploader: stores rendered files in the artifact store (S3 multipart or
//! the local directory) with their content type and disposition.
//!
//! Each upload runs as its own task and answers its caller directly, so one
//! slow upload never holds the mailbox; the actor counts them for health.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::storage::blobs::{ArtifactMeta, BlobError, StoredArtifact};

use super::context::Ctx;

pub(crate) enum UploaderMsg {
    /// Store the file at `path` under `key`, replacing any object there.
    Put {
        key: String,
        path: PathBuf,
        meta: ArtifactMeta,
        reply: RpcReplyPort<Result<StoredArtifact, BlobError>>,
    },
}

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
            path,
            meta,
            reply,
        } = message;
        let blobs = state.ctx.blobs.clone();
        let ctx = state.ctx.clone();
        let in_flight = state.in_flight.clone();
        ctx.health
            .set_in_flight("uploader", in_flight.fetch_add(1, Ordering::SeqCst) + 1);
        tokio::spawn(async move {
            let result = blobs.put_file(&key, &path, &meta).await;
            let left = in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
            ctx.health.set_in_flight("uploader", left);
            // The caller may have given up (timeout); nothing to do then.
            let _ = reply.send(result);
        });
        Ok(())
    }
}
