//! The artifact store: one `Blobs` type over an S3 bucket or a local directory.
//!
//! Workers `put_file` a rendered artifact under a key that is deterministic per
//! job (a repeated attempt overwrites, never adds); the download path either
//! presigns a GET URL (S3) or streams the bytes through the service (`get`).
//! Both backends validate keys the same way and pass the same tests.

mod cloudfront;
mod error;
mod fs;
mod key;
mod reader;
mod s3;
mod upload;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::config::{CdnConfig, StorageConfig};

pub use cloudfront::{CloudFrontSigner, canned_policy, cloudfront_base64};
pub use error::BlobError;
pub use fs::FsBlobs;
pub use key::MAX_KEY_BYTES;
pub use s3::S3Blobs;
pub use upload::MultipartLimits;

/// Headers stored with an artifact and sent back on every download, so a
/// browser opening the presigned URL gets the right type and file name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    /// `Content-Type` served with the object, e.g. the XLSX or PDF media type.
    pub content_type: String,
    /// `Content-Disposition` served with the object (`attachment; filename="…"`),
    /// so a download saves under the client's file name rather than the key.
    pub content_disposition: String,
}

/// What was stored: recorded in the job row so a download can be verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArtifact {
    /// Bytes stored, as read from the file (not as reported by the store).
    pub size: u64,
    /// SHA-256 of the bytes stored, lower-case hex.
    pub sha256: String,
}

impl StoredArtifact {
    /// Size and SHA-256 of bytes held in memory.
    pub fn of(bytes: &[u8]) -> StoredArtifact {
        use sha2::{Digest, Sha256};
        StoredArtifact {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// A download URL that works without our credentials until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedUrl {
    /// Absolute URL on the configured endpoint, signature in the query string.
    pub url: String,
    /// When the signature stops being accepted; a cached URL must be dropped before.
    pub expires_at: DateTime<Utc>,
}

/// Chunk size of a streamed download (and of the filesystem backend's copy):
/// large enough to keep per-chunk overhead small, small enough to stay cheap.
const STREAM_CHUNK: usize = 64 * 1024;

/// The chunks of an object, read lazily so a download of any size passes
/// through the service without being held in memory.
pub type BodyStream = BoxStream<'static, std::io::Result<Bytes>>;

/// An object opened for reading.
pub struct BlobBody {
    /// Length in bytes when the store reports it (for `Content-Length`).
    pub size: Option<u64>,
    /// The stored `Content-Type`, to pass on to the client.
    pub content_type: Option<String>,
    /// The stored `Content-Disposition`, to pass on to the client.
    pub content_disposition: Option<String>,
    /// The bytes, in chunks; an error mid-stream means the store failed mid-download.
    pub stream: BodyStream,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("size", &self.size)
            .field("content_type", &self.content_type)
            .field("content_disposition", &self.content_disposition)
            .finish_non_exhaustive()
    }
}

/// The artifact store. An enum rather than a trait object so every call is a
/// plain `async fn`; cloning is cheap (clients and paths are shared).
#[derive(Clone, Debug)]
pub enum Blobs {
    /// Production: a bucket, downloads by presigned URL.
    S3(S3Blobs),
    /// Embedded default: a local directory, downloads streamed by the service.
    Filesystem(FsBlobs),
}

impl Blobs {
    /// Builds the backend the configuration names, with the default multipart limits.
    pub async fn from_config(config: &StorageConfig) -> Result<Self, BlobError> {
        Self::from_config_with(config, MultipartLimits::default()).await
    }

    /// Like `from_config`, with explicit multipart limits (tests use small
    /// parts to exercise multipart uploads with small files).
    pub async fn from_config_with(
        config: &StorageConfig,
        limits: MultipartLimits,
    ) -> Result<Self, BlobError> {
        Ok(match config {
            StorageConfig::S3(s3) => Blobs::S3(S3Blobs::connect(s3, limits).await?),
            StorageConfig::Filesystem { dir } => Blobs::Filesystem(FsBlobs::new(dir.clone())),
        })
    }

    /// Makes download URLs CloudFront signed URLs (`ARTEFATOS_DOWNLOAD_BASE_URL`);
    /// the key is loaded and checked now. Only the S3 backend has an origin
    /// a distribution can serve.
    pub fn with_cdn(mut self, cdn: Option<&CdnConfig>) -> Result<Self, BlobError> {
        let Some(cdn) = cdn else {
            return Ok(self);
        };
        match &mut self {
            Blobs::S3(s3) => s3.set_cdn(CloudFrontSigner::new(cdn)?),
            Blobs::Filesystem(_) => {
                return Err(BlobError::Config(
                    "ARTEFATOS_DOWNLOAD_BASE_URL needs the S3 backend".into(),
                ));
            }
        }
        Ok(self)
    }

    /// Creates the bucket or directory if it is missing; safe to call on every start.
    pub async fn ensure_bucket(&self) -> Result<(), BlobError> {
        match self {
            Blobs::S3(s3) => s3.ensure_bucket().await,
            Blobs::Filesystem(fs) => fs.ensure_dir().await,
        }
    }

    /// Stores the file at `path` under `key`, replacing any object already there,
    /// and returns its size and SHA-256 (computed while the file is read once).
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        meta: &ArtifactMeta,
    ) -> Result<StoredArtifact, BlobError> {
        key::validate(key)?;
        match self {
            Blobs::S3(s3) => s3.put_file(key, path, meta).await,
            Blobs::Filesystem(fs) => fs.put_file(key, path, meta).await,
        }
    }

    /// Stores `bytes` (a small artifact rendered in memory) under `key`,
    /// replacing any object there; no temporary file on the way.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        meta: &ArtifactMeta,
    ) -> Result<StoredArtifact, BlobError> {
        key::validate(key)?;
        match self {
            Blobs::S3(s3) => s3.put_bytes(key, bytes, meta).await,
            Blobs::Filesystem(fs) => fs.put_bytes(key, bytes, meta).await,
        }
    }

    /// A GET URL valid for `ttl` that makes the browser save the object with
    /// `content_disposition`; `None` when the backend has nothing to presign
    /// (filesystem), in which case the service streams the object with `get`.
    pub async fn presign_get(
        &self,
        key: &str,
        ttl: Duration,
        content_disposition: &str,
    ) -> Result<Option<PresignedUrl>, BlobError> {
        key::validate(key)?;
        match self {
            Blobs::S3(s3) => s3
                .presign_get(key, ttl, content_disposition)
                .await
                .map(Some),
            Blobs::Filesystem(_) => Ok(None),
        }
    }

    /// Opens the object for streaming; `NotFound` when there is none.
    pub async fn get(&self, key: &str) -> Result<BlobBody, BlobError> {
        key::validate(key)?;
        match self {
            Blobs::S3(s3) => s3.get(key).await,
            Blobs::Filesystem(fs) => fs.get(key).await,
        }
    }

    /// Removes the object; removing one that is already gone succeeds, so the
    /// janitor can repeat itself after a crash.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        key::validate(key)?;
        match self {
            Blobs::S3(s3) => s3.delete(key).await,
            Blobs::Filesystem(fs) => fs.delete(key).await,
        }
    }

    /// Cheap readiness probe for `/health/ready`: the bucket or directory is reachable.
    pub async fn check(&self) -> Result<(), BlobError> {
        match self {
            Blobs::S3(s3) => s3.check().await,
            Blobs::Filesystem(fs) => fs.check().await,
        }
    }
}

/// `attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266).
/// Shared by the uploader (stored with the object) and the download path
/// (presigned URL override, streamed downloads), so both name the file alike.
pub fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .filter(|c| !matches!(c, '"' | '\\'))
        .collect();
    let mut encoded = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_carry_both_names() {
        assert_eq!(
            content_disposition("Vendas São.xlsx"),
            "attachment; filename=\"Vendas S_o.xlsx\"; filename*=UTF-8''Vendas%20S%C3%A3o.xlsx"
        );
    }
}
