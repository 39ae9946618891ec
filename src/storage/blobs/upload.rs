//! Uploading a file to S3: one PutObject for small files, a multipart upload for large ones.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::reader::{self, Chunks};
use super::s3::classify;
use super::{ArtifactMeta, BlobError, StoredArtifact};

const MIB: u64 = 1024 * 1024;
/// S3's smallest allowed part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part and largest single PutObject.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's limit on parts per upload; the part size grows to stay under it.
pub const MAX_PARTS: u64 = 10_000;

/// When an upload switches to multipart, how big each part is and how many
/// go up at once. Memory per upload is bounded by `concurrency + 2` parts (the
/// ones uploading, one read ahead, one being read), or by the threshold for a
/// single PutObject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipartLimits {
    /// Files larger than this are uploaded in parts.
    pub threshold: u64,
    /// Size of every part but the last.
    pub part_size: u64,
    /// Parts uploaded in parallel: one TCP stream rarely fills the link to S3.
    pub concurrency: usize,
}

impl Default for MultipartLimits {
    fn default() -> Self {
        Self {
            threshold: 8 * MIB,
            part_size: 8 * MIB,
            concurrency: 4,
        }
    }
}

impl MultipartLimits {
    /// Rejects limits S3 would refuse, before the first upload finds out.
    pub fn validate(&self) -> Result<(), BlobError> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(BlobError::Config(format!(
                "multipart part size {} is outside S3's 5 MiB..=5 GiB",
                self.part_size
            )));
        }
        if self.concurrency == 0 {
            return Err(BlobError::Config(
                "multipart concurrency must be at least 1".into(),
            ));
        }
        if self.threshold > MAX_PART_SIZE {
            return Err(BlobError::Config(format!(
                "multipart threshold {} exceeds S3's 5 GiB single-upload limit",
                self.threshold
            )));
        }
        Ok(())
    }
}

/// Reads `path` once, hashing it, and stores it under `key` (overwriting).
pub async fn put_file(
    client: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
    meta: &ArtifactMeta,
    limits: MultipartLimits,
) -> Result<StoredArtifact, BlobError> {
    let file = reader::open(path).await?;
    let len = file.len();
    if len <= limits.threshold {
        let chunks = file.into_chunks(as_chunk(limits.threshold.max(1))?);
        put_single(client, bucket, key, meta, chunks).await
    } else {
        let part_size = limits.part_size.max(len.div_ceil(MAX_PARTS));
        let chunks = file.into_chunks(as_chunk(part_size)?);
        put_multipart(client, bucket, key, meta, chunks, limits.concurrency).await
    }
}

fn as_chunk(size: u64) -> Result<usize, BlobError> {
    usize::try_from(size).map_err(|_| BlobError::Config(format!("part size {size} too large")))
}

async fn put_single(
    client: &Client,
    bucket: &str,
    key: &str,
    meta: &ArtifactMeta,
    mut chunks: Chunks,
) -> Result<StoredArtifact, BlobError> {
    let body = chunks.next().await.transpose()?.unwrap_or_else(Bytes::new);
    if chunks.next().await.is_some() {
        return Err(BlobError::Other(format!(
            "{key}: the file grew while it was being uploaded"
        )));
    }
    let (size, sha256) = chunks.finish().await?;
    put_object(client, bucket, key, meta, body).await?;
    Ok(StoredArtifact { size, sha256 })
}

/// Stores bytes already in memory (a small rendered artifact) with one
/// PutObject, hashing them on the way.
pub async fn put_bytes(
    client: &Client,
    bucket: &str,
    key: &str,
    meta: &ArtifactMeta,
    body: Bytes,
) -> Result<StoredArtifact, BlobError> {
    let stored = StoredArtifact::of(&body);
    put_object(client, bucket, key, meta, body).await?;
    Ok(stored)
}

async fn put_object(
    client: &Client,
    bucket: &str,
    key: &str,
    meta: &ArtifactMeta,
    body: Bytes,
) -> Result<(), BlobError> {
    let size = body.len();
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(&meta.content_type)
        .content_disposition(&meta.content_disposition)
        .content_length(size as i64)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|err| classify(&format!("put {key}"), err))?;
    Ok(())
}

async fn put_multipart(
    client: &Client,
    bucket: &str,
    key: &str,
    meta: &ArtifactMeta,
    chunks: Chunks,
    concurrency: usize,
) -> Result<StoredArtifact, BlobError> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type(&meta.content_type)
        .content_disposition(&meta.content_disposition)
        .send()
        .await
        .map_err(|err| classify(&format!("start multipart upload of {key}"), err))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| BlobError::Other(format!("{key}: multipart upload without an id")))?
        .to_owned();
    let target = Target {
        client,
        bucket,
        key,
        upload_id: &upload_id,
    };
    match upload_parts(&target, chunks, concurrency).await {
        Ok(stored) => Ok(stored),
        Err(err) => {
            // Parts of an unfinished upload are billed until aborted.
            let aborted = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(abort) = aborted {
                tracing::warn!(
                    key,
                    upload_id,
                    error = %classify("abort multipart upload", abort),
                    "multipart upload left behind; a bucket lifecycle rule should expire it"
                );
            }
            Err(err)
        }
    }
}

/// The multipart upload the parts belong to.
struct Target<'a> {
    client: &'a Client,
    bucket: &'a str,
    key: &'a str,
    upload_id: &'a str,
}

async fn upload_parts(
    target: &Target<'_>,
    mut chunks: Chunks,
    concurrency: usize,
) -> Result<StoredArtifact, BlobError> {
    let mut parts: Vec<CompletedPart> = chunks
        .stream()
        .enumerate()
        .map(|(index, chunk)| async move {
            let number =
                i32::try_from(index + 1).map_err(|_| BlobError::Other("too many parts".into()))?;
            upload_part(target, number, chunk?).await
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    parts.sort_by_key(|part| part.part_number());
    let (size, sha256) = chunks.finish().await?;
    let key = target.key;
    target
        .client
        .complete_multipart_upload()
        .bucket(target.bucket)
        .key(key)
        .upload_id(target.upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|err| classify(&format!("complete multipart upload of {key}"), err))?;
    Ok(StoredArtifact { size, sha256 })
}

async fn upload_part(
    target: &Target<'_>,
    number: i32,
    chunk: Bytes,
) -> Result<CompletedPart, BlobError> {
    let key = target.key;
    let uploaded = target
        .client
        .upload_part()
        .bucket(target.bucket)
        .key(key)
        .upload_id(target.upload_id)
        .part_number(number)
        .content_length(chunk.len() as i64)
        .body(ByteStream::from(chunk))
        .send()
        .await
        .map_err(|err| classify(&format!("upload part {number} of {key}"), err))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(uploaded.e_tag().map(str::to_owned))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_s3_would_refuse_are_rejected() {
        assert!(MultipartLimits::default().validate().is_ok());
        let tiny = MultipartLimits {
            part_size: MIB,
            ..MultipartLimits::default()
        };
        assert!(matches!(tiny.validate(), Err(BlobError::Config(_))));
        let huge = MultipartLimits {
            threshold: 6 * 1024 * MIB,
            ..MultipartLimits::default()
        };
        assert!(matches!(huge.validate(), Err(BlobError::Config(_))));
        let none_at_once = MultipartLimits {
            concurrency: 0,
            ..MultipartLimits::default()
        };
        assert!(matches!(none_at_once.validate(), Err(BlobError::Config(_))));
    }
}
