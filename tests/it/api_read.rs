//! `GET /status` and `GET /download`: what a client sees of its jobs, and
//! nothing of anybody else's.

use std::time::Duration;

use artefatos::storage::blobs::{ArtifactMeta, Blobs};
use artefatos::storage::cache::Cache;
use artefatos::storage::jobs::artifact_key;
use artefatos::storage::jobs::{self, JobStatus};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{Options, TestApp, generate_body, spawn_app, spawn_app_with};

/// Arranges a finished job the way a worker would leave it: the artifact
/// stored under the job's key and the row marked `done`.
pub async fn finish_job(app: &TestApp, job_id: &str, bytes: &[u8]) {
    let id: uuid::Uuid = job_id.parse().unwrap();
    let format: String = sqlx::query_scalar("SELECT format FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let key = artifact_key(id, format.parse().unwrap());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let blobs = Blobs::from_config(&app.config.storage).await.unwrap();
    let meta = ArtifactMeta {
        content_type: "application/pdf".into(),
        content_disposition: "attachment".into(),
    };
    let stored = blobs.put_file(&key, file.path(), &meta).await.unwrap();
    sqlx::query(
        "UPDATE jobs SET status = 'done', artifact_key = $2, artifact_size = $3,
                artifact_sha256 = $4, started_at = now(), finished_at = now(), attempts = 1
         WHERE id = $1",
    )
    .bind(id)
    .bind(&key)
    .bind(stored.size as i64)
    .bind(&stored.sha256)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn create(app: &TestApp, format: &str, key: &str) -> String {
    let response = app.generate(&generate_body(format, key)).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_string()
}

async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["code"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn status_shows_the_job_to_its_owner_only() {
    let app = spawn_app().await;
    let id = create(&app, "pdf", "k").await;
    let status = app.status(&id).await;
    assert_eq!(status["job_id"], id.as_str());
    assert_eq!(status["status"], "queued");
    assert_eq!(status["format"], "pdf");
    assert_eq!(status["attempts"], 0);
    assert!(status["created_at"].is_string());
    assert!(status["started_at"].is_null());
    assert_eq!(status["links"]["status"], format!("/status/{id}"));

    let other = app.other_client_key().await;
    let foreign = app.get_as(&other, &format!("/status/{id}")).await;
    let unknown = app.get(&format!("/status/{}", uuid::Uuid::new_v4())).await;
    let malformed = app.get("/status/not-a-uuid").await;
    for response in [foreign, unknown, malformed] {
        assert_eq!(code_of(response).await, (404, "not_found".into()));
    }
    let foreign_download = app.get_as(&other, &format!("/download/{id}")).await;
    assert_eq!(code_of(foreign_download).await, (404, "not_found".into()));
}

#[tokio::test]
async fn status_is_read_from_the_cache_first_and_repopulated_from_postgres() {
    let app = spawn_app().await;
    let id = create(&app, "xlsx", "k").await;
    // Change the row behind the cache's back: the cached status still answers.
    sqlx::query("UPDATE jobs SET attempts = 7 WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.status(&id).await["attempts"], 0, "served from Redis");

    // Drop the cached entry: PostgreSQL answers, and the cache is filled again.
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}:status:{id}", app.config.namespace);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        app.status(&id).await["attempts"],
        7,
        "served from PostgreSQL"
    );
    let cached: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(cached.is_some_and(|c| c.contains("\"attempts\":7")));
}

#[tokio::test]
async fn an_older_status_never_replaces_a_newer_one_in_the_cache() {
    let app = spawn_app().await;
    let id = create(&app, "pdf", "k").await;
    finish_job(&app, &id, b"%PDF-1.7").await;
    let job_id: uuid::Uuid = id.parse().unwrap();
    let done = jobs::lifecycle::view(&app.pool, job_id)
        .await
        .unwrap()
        .unwrap();
    let mut queued = done.clone();
    queued.status = JobStatus::Queued;
    let cache = Cache::from_config(&app.config).unwrap();
    // A fast worker writes `done` through before the API that created the job
    // caches its `queued` (the job is published first): `queued` must not win.
    cache.put_status(&done).await.unwrap();
    cache
        .complete_key(app.client_id, "k", job_id, "fp", Some(&queued))
        .await
        .unwrap();
    assert_eq!(app.status(&id).await["status"], "done");
    // Nor may a read-through that read PostgreSQL before the transition.
    cache.fill_status(&queued).await.unwrap();
    assert_eq!(app.status(&id).await["status"], "done");
    // A transition still overwrites (a DLQ replay moves `failed` back to `queued`).
    cache.put_status(&queued).await.unwrap();
    assert_eq!(app.status(&id).await["status"], "queued");
}

#[tokio::test]
async fn download_answers_by_job_state() {
    let app = spawn_app().await;
    let queued = create(&app, "pdf", "queued").await;
    assert_eq!(
        code_of(app.get(&format!("/download/{queued}")).await).await,
        (409, "not_ready".into())
    );

    let failed = create(&app, "pdf", "failed").await;
    sqlx::query(
        "UPDATE jobs SET status = 'failed', error = 'boom', error_code = 'render_error',
                finished_at = now() WHERE id = $1::uuid",
    )
    .bind(&failed)
    .execute(&app.pool)
    .await
    .unwrap();
    let response = app.get(&format!("/download/{failed}")).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "job_failed");
    assert!(body["detail"].as_str().unwrap().contains("boom"));

    let expired = create(&app, "pdf", "expired").await;
    finish_job(&app, &expired, b"%PDF-1.7 old").await;
    sqlx::query("UPDATE jobs SET artifact_deleted_at = now() WHERE id = $1::uuid")
        .bind(&expired)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        code_of(app.get(&format!("/download/{expired}")).await).await,
        (410, "gone".into())
    );
}

#[tokio::test]
async fn a_done_job_redirects_to_a_presigned_url_that_serves_its_bytes() {
    let app = spawn_app().await;
    let id = create(&app, "pdf", "k").await;
    let bytes = b"%PDF-1.7 the artifact".to_vec();
    finish_job(&app, &id, &bytes).await;

    let response = app.get(&format!("/download/{id}")).await;
    assert_eq!(response.status(), 302);
    let url = response.headers()["location"].to_str().unwrap().to_string();
    assert!(url.starts_with(app.s3.as_ref().unwrap().endpoint().as_str()));

    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    let disposition = fetched.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(disposition.contains("Vendas Q3.pdf"), "{disposition}");
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // The status shows the artifact's checksum, and it matches.
    let status = app.status(&id).await;
    assert_eq!(
        status["artifact"]["sha256"],
        hex::encode(Sha256::digest(&bytes))
    );

    // A tampered signature is refused by the storage server.
    let signature_at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = url.clone();
    let flipped = if &url[signature_at..signature_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    tampered.replace_range(signature_at..signature_at + 1, flipped);
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);

    // JSON on request, and the same (cached) URL again.
    let json = app.download_json(&id).await;
    assert_eq!(json["url"], url.as_str());
    let expires: chrono::DateTime<chrono::Utc> =
        json["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::minutes(13) && ttl <= chrono::Duration::minutes(15),
        "{ttl}"
    );

    // ?mode=stream sends the bytes through the service.
    let streamed = app.get(&format!("/download/{id}?mode=stream")).await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()["content-type"], "application/pdf");
    assert_eq!(streamed.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn the_filesystem_backend_streams_downloads() {
    let app = spawn_app_with(Options {
        filesystem: true,
        ..Options::default()
    })
    .await;
    let id = create(&app, "pdf", "k").await;
    finish_job(&app, &id, b"%PDF-1.7 local").await;
    let response = app.get(&format!("/download/{id}")).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"Vendas Q3.pdf\"")
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"%PDF-1.7 local");
}

#[tokio::test]
async fn presigned_urls_expire() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_PRESIGN_TTL", "1s".into())],
        ..Options::default()
    })
    .await;
    let id = create(&app, "pdf", "k").await;
    finish_job(&app, &id, b"%PDF-1.7").await;
    let response = app.get(&format!("/download/{id}")).await;
    let url = response.headers()["location"].to_str().unwrap().to_string();
    let expired = crate::support::poll_until(Duration::from_secs(10), || async {
        reqwest::get(&url).await.unwrap().status() == 403
    })
    .await;
    assert!(expired, "the URL stops working once its TTL has passed");
}
