//! Reads a local file once, in bounded chunks, computing its SHA-256 on the way.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::BlobError;

/// A file being read front to back while its digest is computed, so the
/// checksum recorded for an artifact costs no second pass over the file.
/// Blocking: use it on a blocking thread (`spawn_blocking`, `into_chunks`).
pub struct HashingReader {
    file: File,
    len: u64,
    read: u64,
    hasher: Sha256,
}

impl HashingReader {
    /// Opens `path` and records its length at this moment.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            read: 0,
            hasher: Sha256::new(),
        })
    }

    /// The file's length when it was opened: decides single or multipart upload.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Fills `buf` as far as the file allows; returns the number of bytes read,
    /// less than `buf.len()` only at the end of the file.
    pub fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.hasher.update(&buf[..filled]);
        self.read += filled as u64;
        Ok(filled)
    }

    /// The next chunk of at most `max` bytes, or `None` at the end of the file.
    pub fn next_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        let mut buf = vec![0; max];
        let n = self.fill(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(Bytes::from(buf)))
    }

    /// Bytes read and their SHA-256 (lower-case hex).
    pub fn finish(self) -> (u64, String) {
        (self.read, hex::encode(self.hasher.finalize()))
    }

    /// Moves the reader to a blocking thread that reads the next chunk while
    /// the current one is uploaded; at most one chunk waits, so memory stays
    /// bounded by about three chunks whatever the file size.
    pub fn into_chunks(mut self, chunk: usize) -> Chunks {
        let (tx, rx) = mpsc::channel(1);
        let reader = tokio::task::spawn_blocking(move || {
            loop {
                match self.next_chunk(chunk) {
                    Ok(Some(bytes)) => {
                        if tx.blocking_send(Ok(bytes)).is_err() {
                            return None; // the upload gave up
                        }
                    }
                    Ok(None) => return Some(self.finish()),
                    Err(err) => {
                        let _ = tx.blocking_send(Err(err));
                        return None;
                    }
                }
            }
        });
        Chunks { rx, reader }
    }
}

/// The chunks of a file read on a blocking thread; see [`HashingReader::into_chunks`].
pub struct Chunks {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    reader: JoinHandle<Option<(u64, String)>>,
}

impl Chunks {
    /// The next chunk, `None` once the whole file has been read.
    pub async fn next(&mut self) -> Option<io::Result<Bytes>> {
        self.rx.recv().await
    }

    /// The remaining chunks as a stream (for uploading several at once).
    pub fn stream(&mut self) -> impl futures::Stream<Item = io::Result<Bytes>> + '_ {
        futures::stream::poll_fn(move |cx| self.rx.poll_recv(cx))
    }

    /// Size and SHA-256 of everything read; call after `next` returned `None`.
    pub async fn finish(mut self) -> Result<(u64, String), BlobError> {
        self.rx.close();
        match self.reader.await {
            Ok(Some(done)) => Ok(done),
            Ok(None) => Err(BlobError::Other(
                "file reader stopped before the end of the file".into(),
            )),
            Err(err) => Err(BlobError::Other(format!("file reader failed: {err}"))),
        }
    }
}

/// Opens a file on a blocking thread (opening can block on a slow disk).
pub async fn open(path: &Path) -> Result<HashingReader, BlobError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || HashingReader::open(&path))
        .await
        .map_err(|err| BlobError::Other(format!("file reader failed: {err}")))?
        .map_err(BlobError::Io)
}
