//! The one error type of the artifact store, sorted by what a caller should do next.

use std::io;

/// Why a storage operation failed; `is_transient` tells a worker whether another
/// attempt may succeed, so an outage is retried and a bad request is not.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The object (or, for a health probe, the bucket) does not exist; the
    /// download path answers 404/410 with it.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store could not be reached or answered with a server-side error
    /// (connection refused, timeout, 5xx, throttling): worth another attempt.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The key cannot name an object in both backends (empty, too long, `..`, …).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A limit or setting of the store itself is unusable (part size, presign TTL).
    #[error("invalid storage setting: {0}")]
    Config(String),
    /// Local file I/O: reading the rendered file, or the filesystem backend.
    #[error("storage I/O: {0}")]
    Io(#[from] io::Error),
    /// Anything else the store refused (access denied, missing bucket, bad request):
    /// repeating the same request will not change the answer.
    #[error("storage error: {0}")]
    Other(String),
}

impl BlobError {
    /// True when the same call may succeed later without anything changing on
    /// our side, so a worker retries the job instead of failing it at once.
    pub fn is_transient(&self) -> bool {
        match self {
            BlobError::Unavailable(_) => true,
            BlobError::Io(err) => !matches!(
                err.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::InvalidData
            ),
            BlobError::NotFound(_)
            | BlobError::InvalidKey { .. }
            | BlobError::Config(_)
            | BlobError::Other(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outages_and_passing_io_faults_are_transient() {
        assert!(BlobError::Unavailable("refused".into()).is_transient());
        assert!(BlobError::Io(io::Error::from(io::ErrorKind::StorageFull)).is_transient());
        assert!(!BlobError::Io(io::Error::from(io::ErrorKind::NotFound)).is_transient());
        assert!(!BlobError::NotFound("k".into()).is_transient());
        assert!(!BlobError::Other("denied".into()).is_transient());
    }
}
