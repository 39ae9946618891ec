//! The artifact store seen from its callers: both backends pass the same tests,
//! and the S3 backend's presigned URLs and outage behaviour are checked against a real server.

use std::time::{Duration, Instant};

use artefatos::config::StorageConfig;
use artefatos::storage::blobs::{
    ArtifactMeta, BlobBody, BlobError, Blobs, MultipartLimits, StoredArtifact,
};
use futures::TryStreamExt;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempDir};

use crate::support::s3::S3Server;

const MIB: usize = 1024 * 1024;

/// S3's smallest part, so a file of a few MiB goes through a multipart upload;
/// two parts at once, so parts can complete out of order.
const TEST_LIMITS: MultipartLimits = MultipartLimits {
    threshold: 5 * MIB as u64,
    part_size: 5 * MIB as u64,
    concurrency: 2,
};

async fn s3_blobs() -> (S3Server, Blobs) {
    let server = S3Server::start().await;
    let blobs = Blobs::from_config_with(&server.config(), TEST_LIMITS)
        .await
        .expect("S3 backend");
    blobs.ensure_bucket().await.expect("create bucket");
    (server, blobs)
}

async fn fs_blobs() -> (TempDir, Blobs) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StorageConfig::Filesystem {
        dir: dir.path().join("artifacts"),
    };
    let blobs = Blobs::from_config_with(&config, TEST_LIMITS)
        .await
        .expect("filesystem backend");
    blobs.ensure_bucket().await.expect("create directory");
    (dir, blobs)
}

/// Runs each named behaviour once per backend, as `NAME::s3` and `NAME::filesystem`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn s3() {
                let (_server, blobs) = super::s3_blobs().await;
                super::$name(blobs).await;
            }

            #[tokio::test]
            async fn filesystem() {
                let (_dir, blobs) = super::fs_blobs().await;
                super::$name(blobs).await;
            }
        }
    )*};
}

on_both_backends!(
    put_then_get_returns_the_same_bytes,
    an_empty_file_round_trips,
    putting_the_same_key_twice_keeps_one_object_with_the_new_bytes,
    concurrent_puts_of_one_key_leave_one_whole_object,
    a_missing_source_file_is_a_permanent_error,
    a_file_above_the_multipart_threshold_round_trips,
    a_deleted_key_reads_as_not_found,
    a_missing_key_reads_as_not_found,
    keys_that_could_escape_the_store_are_rejected,
    ensure_bucket_is_idempotent_and_check_passes,
);

fn meta(content_type: &str, filename: &str) -> ArtifactMeta {
    ArtifactMeta {
        content_type: content_type.into(),
        content_disposition: format!("attachment; filename=\"{filename}\""),
    }
}

fn xlsx_meta() -> ArtifactMeta {
    meta(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "report.xlsx",
    )
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn file_with(bytes: &[u8]) -> NamedTempFile {
    let file = NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), bytes).expect("write temp file");
    file
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn put(blobs: &Blobs, key: &str, bytes: &[u8], meta: &ArtifactMeta) -> StoredArtifact {
    let file = file_with(bytes);
    blobs
        .put_file(key, file.path(), meta)
        .await
        .unwrap_or_else(|err| panic!("put {key}: {err}"))
}

async fn read_all(body: BlobBody) -> Vec<u8> {
    body.stream
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .expect("read body")
}

/// Objects in the bucket or files under the storage directory (temporary
/// files included, so a leftover from an overwrite would be counted).
async fn object_count(blobs: &Blobs) -> usize {
    match blobs {
        Blobs::S3(s3) => {
            let listed = s3
                .client()
                .list_objects_v2()
                .bucket(s3.bucket())
                .send()
                .await
                .expect("list objects");
            listed.contents().len()
        }
        Blobs::Filesystem(fs) => {
            let mut count = 0;
            let mut dirs = vec![fs.dir().join("objects")];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(dir).expect("read dir") {
                    let entry = entry.expect("dir entry");
                    if entry.file_type().expect("file type").is_dir() {
                        dirs.push(entry.path());
                    } else {
                        count += 1;
                    }
                }
            }
            count
        }
    }
}

async fn put_then_get_returns_the_same_bytes(blobs: Blobs) {
    let bytes = random_bytes(300 * 1024 + 7);
    let meta = xlsx_meta();

    let stored = put(&blobs, "xlsx/job-1.xlsx", &bytes, &meta).await;
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&bytes));

    let body = blobs.get("xlsx/job-1.xlsx").await.expect("get");
    assert_eq!(body.size, Some(bytes.len() as u64));
    assert_eq!(
        body.content_type.as_deref(),
        Some(meta.content_type.as_str())
    );
    assert_eq!(
        body.content_disposition.as_deref(),
        Some(meta.content_disposition.as_str())
    );
    assert_eq!(read_all(body).await, bytes);
}

async fn an_empty_file_round_trips(blobs: Blobs) {
    let stored = put(
        &blobs,
        "pdf/empty.pdf",
        b"",
        &meta("application/pdf", "e.pdf"),
    )
    .await;
    assert_eq!(stored.size, 0);
    assert_eq!(stored.sha256, sha256_hex(b""));
    let body = blobs.get("pdf/empty.pdf").await.expect("get");
    assert_eq!(body.size, Some(0));
    assert!(read_all(body).await.is_empty());
}

async fn putting_the_same_key_twice_keeps_one_object_with_the_new_bytes(blobs: Blobs) {
    let first = random_bytes(200 * 1024);
    let second = random_bytes(50 * 1024);
    put(
        &blobs,
        "pdf/job-2.pdf",
        &first,
        &meta("application/pdf", "a.pdf"),
    )
    .await;
    let stored = put(
        &blobs,
        "pdf/job-2.pdf",
        &second,
        &meta("text/plain", "b.txt"),
    )
    .await;
    assert_eq!(stored.sha256, sha256_hex(&second));

    let body = blobs.get("pdf/job-2.pdf").await.expect("get");
    assert_eq!(body.content_type.as_deref(), Some("text/plain"));
    assert_eq!(body.size, Some(second.len() as u64));
    assert_eq!(read_all(body).await, second);
    assert_eq!(object_count(&blobs).await, 1);
}

async fn concurrent_puts_of_one_key_leave_one_whole_object(blobs: Blobs) {
    // A redelivered job may upload while its first delivery still does.
    let contents: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(64 * 1024 + i)).collect();
    let files: Vec<NamedTempFile> = contents.iter().map(|bytes| file_with(bytes)).collect();
    let meta = xlsx_meta();
    let puts = files
        .iter()
        .map(|file| blobs.put_file("xlsx/raced.xlsx", file.path(), &meta));
    let stored = futures::future::try_join_all(puts)
        .await
        .expect("every put");

    let read = read_all(blobs.get("xlsx/raced.xlsx").await.expect("get")).await;
    let digest = sha256_hex(&read);
    assert!(
        stored.iter().any(|s| s.sha256 == digest),
        "stored bytes match none of the uploads"
    );
    assert_eq!(object_count(&blobs).await, 1);
}

async fn a_missing_source_file_is_a_permanent_error(blobs: Blobs) {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = blobs
        .put_file(
            "xlsx/none.xlsx",
            &dir.path().join("missing.xlsx"),
            &xlsx_meta(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Io(_)), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(object_count(&blobs).await, 0);
}

async fn a_file_above_the_multipart_threshold_round_trips(blobs: Blobs) {
    // Three parts of TEST_LIMITS: 5 MiB, 5 MiB and a short last one.
    let bytes = random_bytes(10 * MIB + 12_345);
    let stored = put(&blobs, "xlsx/large.xlsx", &bytes, &xlsx_meta()).await;
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&bytes));

    if let Blobs::S3(s3) = &blobs {
        // A multipart object's ETag is "<md5 of part md5s>-<part count>".
        let head = s3
            .client()
            .head_object()
            .bucket(s3.bucket())
            .key("xlsx/large.xlsx")
            .send()
            .await
            .expect("head object");
        let etag = head
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        assert!(etag.ends_with("-3"), "not a 3-part upload: ETag {etag}");
    }

    let body = blobs.get("xlsx/large.xlsx").await.expect("get");
    assert_eq!(body.size, Some(bytes.len() as u64));
    assert_eq!(body.content_type, Some(xlsx_meta().content_type));
    assert_eq!(
        body.content_disposition,
        Some(xlsx_meta().content_disposition)
    );
    let read = read_all(body).await;
    assert_eq!(read.len(), bytes.len());
    assert_eq!(sha256_hex(&read), stored.sha256);
}

async fn a_deleted_key_reads_as_not_found(blobs: Blobs) {
    put(&blobs, "xlsx/job-3.xlsx", b"bytes", &xlsx_meta()).await;
    blobs.delete("xlsx/job-3.xlsx").await.expect("delete");

    let err = blobs.get("xlsx/job-3.xlsx").await.unwrap_err();
    assert!(matches!(err, BlobError::NotFound(_)), "{err:?}");
    assert_eq!(object_count(&blobs).await, 0);
    // The janitor may repeat a delete after a crash.
    blobs.delete("xlsx/job-3.xlsx").await.expect("delete again");
}

async fn a_missing_key_reads_as_not_found(blobs: Blobs) {
    let err = blobs.get("xlsx/never-stored.xlsx").await.unwrap_err();
    assert!(matches!(err, BlobError::NotFound(_)), "{err:?}");
    assert!(!err.is_transient());
}

async fn keys_that_could_escape_the_store_are_rejected(blobs: Blobs) {
    let file = file_with(b"x");
    for key in ["../outside", "/absolute", "a//b", ""] {
        let err = blobs
            .put_file(key, file.path(), &xlsx_meta())
            .await
            .unwrap_err();
        assert!(
            matches!(err, BlobError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
        assert!(!err.is_transient());
    }
    let err = blobs.get("a/../b").await.unwrap_err();
    assert!(matches!(err, BlobError::InvalidKey { .. }), "{err:?}");
    assert_eq!(object_count(&blobs).await, 0);
}

async fn ensure_bucket_is_idempotent_and_check_passes(blobs: Blobs) {
    put(&blobs, "k", b"kept", &xlsx_meta()).await;
    blobs.ensure_bucket().await.expect("second ensure_bucket");
    blobs.check().await.expect("check");
    let body = blobs.get("k").await.expect("object survives ensure_bucket");
    assert_eq!(read_all(body).await, b"kept");
}

#[tokio::test]
async fn filesystem_check_reports_a_missing_directory_and_presigns_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StorageConfig::Filesystem {
        dir: dir.path().join("not-yet"),
    };
    let blobs = Blobs::from_config(&config)
        .await
        .expect("filesystem backend");
    let err = blobs.check().await.unwrap_err();
    assert!(matches!(err, BlobError::NotFound(_)), "{err:?}");

    blobs.ensure_bucket().await.expect("create directory");
    blobs.check().await.expect("check");
    let url = blobs
        .presign_get("k", Duration::from_secs(60), "attachment")
        .await
        .expect("presign");
    assert!(url.is_none());
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn presigned_url_downloads_the_bytes_with_the_disposition() {
    let (_server, blobs) = s3_blobs().await;
    let bytes = random_bytes(64 * 1024);
    let meta = xlsx_meta();
    put(&blobs, "xlsx/job-4.xlsx", &bytes, &meta).await;

    let before = chrono::Utc::now();
    let ttl = Duration::from_secs(300);
    let presigned = blobs
        .presign_get("xlsx/job-4.xlsx", ttl, &meta.content_disposition)
        .await
        .expect("presign")
        .expect("S3 presigns");
    assert!(presigned.expires_at > before + chrono::Duration::seconds(299));
    assert!(presigned.expires_at <= chrono::Utc::now() + chrono::Duration::seconds(300));
    // Real S3 answers with this override; s3s-fs serves the stored header.
    let url = url::Url::parse(&presigned.url).expect("URL");
    let override_ = url
        .query_pairs()
        .find(|(name, _)| name == "response-content-disposition")
        .map(|(_, value)| value.into_owned());
    assert_eq!(
        override_.as_deref(),
        Some(meta.content_disposition.as_str())
    );

    let response = http().get(&presigned.url).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    let disposition = response
        .headers()
        .get("content-disposition")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    assert_eq!(
        disposition.as_deref(),
        Some(meta.content_disposition.as_str())
    );
    assert_eq!(response.bytes().await.expect("body"), bytes);
}

#[tokio::test]
async fn a_tampered_presigned_url_is_refused() {
    let (_server, blobs) = s3_blobs().await;
    put(&blobs, "xlsx/job-5.xlsx", b"secret", &xlsx_meta()).await;
    let presigned = blobs
        .presign_get("xlsx/job-5.xlsx", Duration::from_secs(300), "attachment")
        .await
        .expect("presign")
        .expect("S3 presigns");

    let mut url = url::Url::parse(&presigned.url).expect("URL");
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(name, value)| {
            let value = if name == "X-Amz-Signature" {
                flip_last_hex_digit(&value)
            } else {
                value.into_owned()
            };
            (name.into_owned(), value)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    assert_ne!(url.as_str(), presigned.url);

    let tampered = http().get(url.as_str()).send().await.expect("GET");
    assert_eq!(tampered.status(), 403);
    let genuine = http().get(&presigned.url).send().await.expect("GET");
    assert_eq!(genuine.status(), 200);
}

fn flip_last_hex_digit(signature: &str) -> String {
    let mut chars: Vec<char> = signature.chars().collect();
    let last = chars.last_mut().expect("non-empty signature");
    *last = if *last == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn a_presigned_url_stops_working_once_expired() {
    let (_server, blobs) = s3_blobs().await;
    put(
        &blobs,
        "pdf/job-6.pdf",
        b"short-lived",
        &meta("application/pdf", "s.pdf"),
    )
    .await;
    let presigned = blobs
        .presign_get("pdf/job-6.pdf", Duration::from_secs(2), "attachment")
        .await
        .expect("presign")
        .expect("S3 presigns");
    let first = http().get(&presigned.url).send().await.expect("GET");
    assert_eq!(first.status(), 200, "fresh URL refused");

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let status = http()
            .get(&presigned.url)
            .send()
            .await
            .expect("GET")
            .status();
        if status != 200 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 403, "expired URL still served");
    assert!(chrono::Utc::now() >= presigned.expires_at);
}

#[tokio::test]
async fn put_fails_promptly_and_transiently_while_s3_is_down_then_recovers() {
    let (mut server, blobs) = s3_blobs().await;
    put(&blobs, "xlsx/before.xlsx", b"before", &xlsx_meta()).await;
    let file = file_with(&random_bytes(1024));

    server.stop().await;
    let started = Instant::now();
    let err = blobs
        .put_file("xlsx/during.xlsx", file.path(), &xlsx_meta())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(took < Duration::from_secs(10), "failure took {took:?}");
    let err = blobs.check().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    server.restart().await;
    blobs.check().await.expect("check after restart");
    put(
        &blobs,
        "xlsx/during.xlsx",
        &std::fs::read(file.path()).expect("read"),
        &xlsx_meta(),
    )
    .await;
    let body = blobs
        .get("xlsx/before.xlsx")
        .await
        .expect("object kept across restart");
    assert_eq!(read_all(body).await, b"before");
}

#[tokio::test]
async fn half_configured_static_credentials_are_a_clear_error() {
    let config = StorageConfig::S3(artefatos::config::S3Config {
        endpoint: Some("http://127.0.0.1:9".into()),
        public_endpoint: None,
        bucket: "b".into(),
        region: "us-east-1".into(),
        access_key_id: Some("key".into()),
        secret_access_key: None,
    });
    let err = Blobs::from_config(&config).await.unwrap_err();
    assert!(matches!(err, BlobError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}

#[tokio::test]
async fn a_presign_ttl_beyond_seven_days_is_refused() {
    let (_server, blobs) = s3_blobs().await;
    let err = blobs
        .presign_get("k", Duration::from_secs(8 * 24 * 3600), "attachment")
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn the_storage_env_of_a_test_server_configures_the_same_store() {
    let server = S3Server::start().await;
    let config = server.config();
    let vars = crate::support::s3::storage_env(&config)
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    let parsed = artefatos::Config::from_vars(&vars).expect("config from env");
    assert_eq!(parsed.storage, config);
}
