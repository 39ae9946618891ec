//! The filesystem backend: artifacts under a local directory, for a machine without S3.
//!
//! Layout: `DIR/objects/<key>` holds the bytes, `DIR/meta/<key>.json` the
//! content type and disposition. Both are written to a temporary file in the
//! target's own directory and renamed over the old one, so a reader sees the
//! old or the new artifact, never half of one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use tokio_util::io::ReaderStream;

use super::reader::HashingReader;
use super::{ArtifactMeta, BlobBody, BlobError, STREAM_CHUNK, StoredArtifact};

/// A directory of artifacts; clones share the path.
#[derive(Clone, Debug)]
pub struct FsBlobs {
    dir: Arc<PathBuf>,
}

impl FsBlobs {
    /// No I/O here: `ensure_dir` creates the layout, `check` probes it.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir: Arc::new(dir) }
    }

    /// The storage directory, as configured.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn objects(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// Where the bytes of `key` live; keys are validated by the caller, so this
    /// path never leaves the storage directory.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.objects().join(key)
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join("meta").join(format!("{key}.json"))
    }

    pub(super) async fn ensure_dir(&self) -> Result<(), BlobError> {
        tokio::fs::create_dir_all(self.objects()).await?;
        tokio::fs::create_dir_all(self.dir.join("meta")).await?;
        Ok(())
    }

    pub(super) async fn put_file(
        &self,
        key: &str,
        path: &Path,
        meta: &ArtifactMeta,
    ) -> Result<StoredArtifact, BlobError> {
        let (source, target, meta_path) =
            (path.to_owned(), self.object_path(key), self.meta_path(key));
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || put_blocking(&source, &target, &meta_path, &meta))
            .await
            .map_err(|err| BlobError::Other(format!("filesystem upload failed: {err}")))?
    }

    pub(super) async fn put_bytes(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        meta: &ArtifactMeta,
    ) -> Result<StoredArtifact, BlobError> {
        let (target, meta_path) = (self.object_path(key), self.meta_path(key));
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            write_meta(&meta_path, &meta)?;
            write_atomically(&target, |file| file.write_all(&bytes))?;
            Ok(StoredArtifact::of(&bytes))
        })
        .await
        .map_err(|err| BlobError::Other(format!("filesystem upload failed: {err}")))?
    }

    pub(super) async fn get(&self, key: &str) -> Result<BlobBody, BlobError> {
        let not_found = || BlobError::NotFound(format!("no artifact {key:?}"));
        let file = match tokio::fs::File::open(self.object_path(key)).await {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(err) => return Err(err.into()),
        };
        let stat = file.metadata().await?;
        // `a` is a directory when `a/b` is stored: no object by that name.
        if !stat.is_file() {
            return Err(not_found());
        }
        // The sidecar is advisory: without it the bytes are still served.
        let meta = match tokio::fs::read(self.meta_path(key)).await {
            Ok(bytes) => serde_json::from_slice::<ArtifactMeta>(&bytes).ok(),
            Err(_) => None,
        };
        let (content_type, content_disposition) = match meta {
            Some(meta) => (Some(meta.content_type), Some(meta.content_disposition)),
            None => (None, None),
        };
        Ok(BlobBody {
            size: Some(stat.len()),
            content_type,
            content_disposition,
            stream: ReaderStream::with_capacity(file, STREAM_CHUNK).boxed(),
        })
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), BlobError> {
        for path in [self.object_path(key), self.meta_path(key)] {
            match tokio::fs::remove_file(path).await {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    pub(super) async fn check(&self) -> Result<(), BlobError> {
        let objects = self.objects();
        match tokio::fs::metadata(&objects).await {
            Ok(stat) if stat.is_dir() => Ok(()),
            Ok(_) => Err(BlobError::Other(format!(
                "{} is not a directory",
                objects.display()
            ))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(format!(
                "storage directory {} is missing",
                objects.display()
            ))),
            Err(err) => Err(err.into()),
        }
    }
}

/// Copies `source` to `target` through a synced temporary file and a rename,
/// after writing the sidecar the same way; hashes the bytes on the way.
fn put_blocking(
    source: &Path,
    target: &Path,
    meta_path: &Path,
    meta: &ArtifactMeta,
) -> Result<StoredArtifact, BlobError> {
    let mut reader = HashingReader::open(source)?;
    write_meta(meta_path, meta)?;

    write_atomically(target, |file| {
        let mut buf = vec![0; STREAM_CHUNK];
        loop {
            let n = reader.fill(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            file.write_all(&buf[..n])?;
        }
    })?;
    let (size, sha256) = reader.finish();
    Ok(StoredArtifact { size, sha256 })
}

/// The sidecar with the content type and disposition, written before the
/// object so a reader never finds an object without its headers.
fn write_meta(meta_path: &Path, meta: &ArtifactMeta) -> Result<(), BlobError> {
    let meta_json = serde_json::to_vec(meta)
        .map_err(|err| BlobError::Other(format!("artifact metadata: {err}")))?;
    write_atomically(meta_path, |file| file.write_all(&meta_json))
}

/// Writes a temporary file next to `target`, syncs it, renames it over
/// `target` and syncs the directory, so the new content survives a crash once
/// this returns.
fn write_atomically(
    target: &Path,
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> Result<(), BlobError> {
    let parent = target
        .parent()
        .ok_or_else(|| BlobError::Other(format!("{} has no parent", target.display())))?;
    std::fs::create_dir_all(parent)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".put-")
        .tempfile_in(parent)?;
    write(temp.as_file_mut())?;
    temp.as_file().sync_all()?;
    temp.persist(target)
        .map_err(|err| BlobError::Io(err.error))?;
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}
