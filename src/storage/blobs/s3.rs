//! The S3 backend: client set-up with prompt failure, and every operation but the upload.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::io::ReaderStream;

use super::cloudfront::CloudFrontSigner;
use super::upload::{self, MultipartLimits};
use super::{ArtifactMeta, BlobBody, BlobError, PresignedUrl, STREAM_CHUNK, StoredArtifact};
use crate::config::S3Config;

/// An unreachable endpoint must fail in seconds (the worker retries the job
/// through its retry queues), not hang on the OS's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request, including an 8 MiB part upload; generous for a LAN or a region.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per operation inside the SDK; short backoffs keep an outage's
/// answer prompt, since the job-level retry queues provide the long waits.
const MAX_ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A bucket reached through aws-sdk-s3; clones share one client and connection pool.
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: Client,
    /// The client presigned URLs are made with: `client` itself, or one for
    /// the public endpoint (`ARTEFATOS_PUBLIC_S3_ENDPOINT`) with the same
    /// credentials, so a URL names the host clients can reach while the
    /// service keeps talking to its internal endpoint. Presigning makes no
    /// request, so this client never connects anywhere.
    presigner: Client,
    /// CloudFront signs the download URLs instead, when configured.
    cdn: Option<Arc<CloudFrontSigner>>,
    bucket: Arc<str>,
    region: Arc<str>,
    limits: MultipartLimits,
}

impl S3Blobs {
    /// Builds the client: static credentials when both are configured, else the
    /// default provider chain (IRSA, instance profile, shared config); a custom
    /// endpoint implies path-style addressing (S3-compatible servers).
    pub async fn connect(config: &S3Config, limits: MultipartLimits) -> Result<Self, BlobError> {
        limits.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(INITIAL_BACKOFF)
                    .with_max_backoff(MAX_BACKOFF),
            )
            // S3-compatible servers may reject the SDK's newer default checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "artefatos-config",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(BlobError::Config(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".into(),
                ));
            }
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(config.endpoint.is_some())
            .build();
        let client = Client::from_conf(s3_config);
        let presigner = match &config.public_endpoint {
            Some(public) => Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk_config)
                    .endpoint_url(public)
                    .force_path_style(true)
                    .build(),
            ),
            None => client.clone(),
        };
        Ok(Self {
            client,
            presigner,
            cdn: None,
            bucket: config.bucket.as_str().into(),
            region: config.region.as_str().into(),
            limits,
        })
    }

    /// Download URLs from CloudFront (`ARTEFATOS_DOWNLOAD_BASE_URL`) instead
    /// of presigned S3 ones.
    pub(super) fn set_cdn(&mut self, signer: CloudFrontSigner) {
        self.cdn = Some(Arc::new(signer));
    }

    /// The underlying client, for callers that need an operation this type
    /// does not wrap (tests inspecting the bucket, listing).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket every operation addresses.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub(super) async fn ensure_bucket(&self) -> Result<(), BlobError> {
        match self.check().await {
            Err(BlobError::NotFound(_)) => {}
            other => return other,
        }
        let mut create = self.client.create_bucket().bucket(&*self.bucket);
        // us-east-1 is the one region that must not be named as a constraint.
        if &*self.region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(&*self.region))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(()),
            // Another process created it between our probe and our request:
            // fine if we can reach it now.
            Err(err)
                if err.as_service_error().is_some_and(|e| {
                    e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
                }) =>
            {
                self.check().await
            }
            Err(err) => Err(classify("create bucket", err)),
        }
    }

    pub(super) async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        meta: &ArtifactMeta,
    ) -> Result<StoredArtifact, BlobError> {
        upload::put_file(&self.client, &self.bucket, key, path, meta, self.limits).await
    }

    pub(super) async fn put_bytes(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        meta: &ArtifactMeta,
    ) -> Result<StoredArtifact, BlobError> {
        upload::put_bytes(&self.client, &self.bucket, key, meta, bytes).await
    }

    pub(super) async fn presign_get(
        &self,
        key: &str,
        ttl: Duration,
        content_disposition: &str,
    ) -> Result<PresignedUrl, BlobError> {
        // SigV4 dates have whole seconds: the URL dies at the truncated start
        // plus the TTL, so `expires_at` must not be computed from a later instant.
        let start = whole_seconds(SystemTime::now());
        if let Some(cdn) = &self.cdn {
            return cdn.sign(key, start, ttl);
        }
        let presigning = PresigningConfig::builder()
            .start_time(start)
            .expires_in(ttl)
            .build()
            .map_err(|err| BlobError::Config(format!("presign TTL {ttl:?}: {err}")))?;
        let request = self
            .presigner
            .get_object()
            .bucket(&*self.bucket)
            .key(key)
            .response_content_disposition(content_disposition)
            .presigned(presigning)
            .await
            .map_err(|err| classify("presign get", err))?;
        let expires_at = DateTime::<Utc>::from(start + ttl);
        Ok(PresignedUrl {
            url: request.uri().to_string(),
            expires_at,
        })
    }

    pub(super) async fn get(&self, key: &str) -> Result<BlobBody, BlobError> {
        let object = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| classify(&format!("get {key}"), err))?;
        Ok(BlobBody {
            size: object.content_length().and_then(|n| u64::try_from(n).ok()),
            content_type: object.content_type().map(str::to_owned),
            content_disposition: object.content_disposition().map(str::to_owned),
            stream: ReaderStream::with_capacity(object.body.into_async_read(), STREAM_CHUNK)
                .boxed(),
        })
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let deleted = self
            .client
            .delete_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await;
        match deleted.map_err(|err| classify(&format!("delete {key}"), err)) {
            Ok(_) | Err(BlobError::NotFound(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    pub(super) async fn check(&self) -> Result<(), BlobError> {
        self.client
            .head_bucket()
            .bucket(&*self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| classify(&format!("bucket {}", self.bucket), err))
    }
}

fn whole_seconds(time: SystemTime) -> SystemTime {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

/// Sorts an SDK error into the store's categories: no answer or a server-side
/// failure is `Unavailable` (transient), a 404 is `NotFound`, the rest `Other`.
pub(super) fn classify<E>(what: &str, err: SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = format!("{what}: {}", DisplayErrorContext(&err));
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            BlobError::Unavailable(detail)
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match err.code() {
                Some("NoSuchKey" | "NotFound") => BlobError::NotFound(detail),
                // A missing bucket is a deployment fault, not a missing artifact.
                Some("NoSuchBucket") => BlobError::Other(detail),
                Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
                    BlobError::Unavailable(detail)
                }
                _ if status == 404 => BlobError::NotFound(detail),
                _ if status >= 500 || status == 429 || status == 408 => {
                    BlobError::Unavailable(detail)
                }
                _ => BlobError::Other(detail),
            }
        }
        _ => BlobError::Other(detail),
    }
}
