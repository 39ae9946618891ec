//! Jobs end to end through the worker tree: POST → `done` → download through
//! the presigned URL → bytes that open as the expected XLSX / PDF; and every
//! failure ends in `done` or in `failed` plus one DLQ message.

use std::io::Cursor;
use std::time::Duration;

use artefatos::actors::ActorState;
use lapin::options::BasicGetOptions;
use serde_json::Value;

use crate::support::{Options, spawn_app, spawn_app_with};
use crate::worker_support::{body_titled, dlq, post_job, start_worker, wait_for_dlq};

const DEADLINE: Duration = Duration::from_secs(30);

async fn download(app: &crate::support::TestApp, job_id: &str) -> Vec<u8> {
    let response = app.get(&format!("/download/{job_id}")).await;
    assert_eq!(
        response.status(),
        302,
        "download redirects to the presigned URL"
    );
    let url = response.headers()["location"].to_str().unwrap().to_string();
    let bytes = reqwest::get(&url).await.unwrap();
    assert_eq!(bytes.status(), 200);
    let header = |name: &str| {
        bytes
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let format: artefatos::render::Format = url
        .split('?')
        .next()
        .and_then(|path| path.rsplit('.').next())
        .and_then(|ext| ext.parse().ok())
        .expect("the key ends with the format");
    assert_eq!(header("content-type"), format.content_type());
    assert!(
        header("content-disposition").contains("Vendas Q3"),
        "the browser saves it under the job's file name: {}",
        header("content-disposition")
    );
    bytes.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn an_xlsx_job_is_rendered_stored_and_downloadable() {
    let app = spawn_app().await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "xlsx", None).await;
    let status = app.wait_for_status(&job, "done", DEADLINE).await;
    assert_eq!(status["attempts"], 1);

    let bytes = download(&app, &job).await;
    use calamine::Reader;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let length = bytes.len() as i64;
    let mut book = calamine::open_workbook_auto_from_rs(Cursor::new(bytes)).expect("opens as XLSX");
    let sheet = book.worksheet_range("Vendas").expect("sheet Vendas");
    let cells: Vec<String> = sheet
        .rows()
        .nth(1)
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert!(
        cells.contains(&"Açaí Ltda".to_string()),
        "row 1 holds the data: {cells:?}"
    );

    let (size, sha): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT artifact_size, artifact_sha256 FROM jobs WHERE id = $1::uuid")
            .bind(&job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(size, Some(length), "the row records the stored size");
    assert_eq!(
        sha,
        Some(digest),
        "the row records the stored bytes' SHA-256"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_pdf_job_is_rendered_stored_and_downloadable() {
    let app = spawn_app().await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "pdf", None).await;
    app.wait_for_status(&job, "done", DEADLINE).await;
    let bytes = download(&app, &job).await;
    let pdf = lopdf::Document::load_mem(&bytes).expect("opens as PDF");
    assert!(!pdf.get_pages().is_empty());
    worker.shutdown().await;
}

#[tokio::test]
async fn a_renderer_panic_restarts_the_actor_and_the_job_is_retried_to_done() {
    let app = spawn_app().await;
    let worker = start_worker(&app.config).await;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let body = body_titled("xlsx", &format!("fault:panic-once:{token}"));
    let job = post_job(&app, "xlsx", Some(body)).await;
    let status = app.wait_for_status(&job, "done", DEADLINE).await;
    assert_eq!(
        status["attempts"], 2,
        "the crashed attempt counts: {status}"
    );

    let health = worker.health();
    let restarted: u32 = health
        .actors
        .iter()
        .filter(|a| a.name.starts_with("renderer.xlsx."))
        .map(|a| a.restarts)
        .sum();
    assert_eq!(restarted, 1, "one renderer restarted: {health:?}");
    assert!(
        health
            .actors
            .iter()
            .filter(|a| a.name.starts_with("renderer.xlsx."))
            .all(|a| a.state == ActorState::Running),
        "{health:?}"
    );
    let crashed = health
        .actors
        .iter()
        .find(|a| a.restarts == 1)
        .and_then(|a| a.last_failure.clone())
        .unwrap_or_default();
    assert!(crashed.contains("injected renderer fault"), "{crashed}");
    worker.shutdown().await;
}

#[tokio::test]
async fn storage_down_for_every_attempt_fails_the_job_after_four_and_dead_letters_it() {
    let mut app = spawn_app().await;
    app.s3.as_mut().expect("s3 server").stop().await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "pdf", None).await;
    let status = app.wait_for_status(&job, "failed", DEADLINE).await;
    assert_eq!(status["attempts"], 4, "{status}");
    assert_eq!(status["error"]["code"], "storage_failed", "{status}");
    assert!(
        wait_for_dlq(&app.config, 1, DEADLINE).await,
        "one DLQ message"
    );

    let connection = artefatos::storage::queue::connect(&app.config.amqp_url)
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(dlq(&app.config).as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the DLQ message");
    assert_eq!(
        artefatos::storage::queue::job_id_of(&message.delivery.data)
            .unwrap()
            .to_string(),
        job
    );
    let deaths = artefatos::storage::queue::deaths(&message.delivery.properties);
    let work = artefatos::storage::queue::Topology::new(&app.config)
        .work_queue(artefatos::render::Format::Pdf);
    assert_eq!(
        deaths
            .iter()
            .find(|d| d.queue == work && d.reason == "rejected")
            .map(|d| d.count),
        Some(4),
        "x-death history: {deaths:?}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn storage_back_before_the_last_attempt_ends_done() {
    let mut app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_RETRY_DELAYS", "300ms,600ms,3s".into())],
        ..Default::default()
    })
    .await;
    app.s3.as_mut().expect("s3 server").stop().await;
    let worker = start_worker(&app.config).await;
    let job = post_job(&app, "xlsx", None).await;
    // Wait until two attempts have failed, then bring storage back.
    let pool = app.pool.clone();
    let job_id = job.clone();
    assert!(
        crate::support::poll_until(DEADLINE, || {
            let pool = pool.clone();
            let job_id = job_id.clone();
            async move {
                let attempts: i32 = sqlx::query_scalar(
                    "SELECT attempts FROM jobs WHERE id = $1::uuid AND error IS NOT NULL",
                )
                .bind(&job_id)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .unwrap_or(0);
                attempts >= 2
            }
        })
        .await
    );
    app.s3.as_mut().unwrap().restart().await;
    let status: Value = app.wait_for_status(&job, "done", DEADLINE).await;
    let attempts = status["attempts"].as_i64().unwrap();
    assert!(
        (2..=4).contains(&attempts),
        "failed at least once, then done: {status}"
    );
    assert_eq!(
        crate::worker_support::depth(&app.config, &dlq(&app.config)).await,
        0
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn renderers_crashing_past_the_restart_limit_get_a_fresh_pool_and_no_job_is_stranded() {
    let app = spawn_app().await;
    let worker = start_worker(&app.config).await;
    // Eleven renderer crashes within a minute exceed the pool's budget of ten.
    let mut jobs = Vec::new();
    for _ in 0..11 {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let body = body_titled("xlsx", &format!("fault:panic-once:{token}"));
        jobs.push(post_job(&app, "xlsx", Some(body)).await);
    }
    for job in &jobs {
        app.wait_for_status(job, "done", Duration::from_secs(60))
            .await;
    }
    let health = worker.health();
    let pool = health
        .actors
        .iter()
        .find(|a| a.name == "pool.xlsx")
        .expect("pool line");
    assert_eq!(
        pool.restarts, 1,
        "the root restarted the pool once: {health:?}"
    );
    assert_eq!(pool.state, ActorState::Running);
    worker.shutdown().await;
}
