//! Job control: `DELETE /jobs/{id}` (cancellation), `metadata` and
//! `GET /jobs` (the job list) against the real API,
//! PostgreSQL, RabbitMQ, Redis and S3, with and without a worker.

use std::time::Duration;

use artefatos::render::Format;
use artefatos::storage::blobs::{BlobError, Blobs};
use artefatos::storage::queue::Topology;
use reqwest::Response;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, generate_body, poll_until, spawn_app};
use crate::worker_support::{big_body, depth, post_job, start_worker};

const DEADLINE: Duration = Duration::from_secs(30);

async fn cancel_as(app: &TestApp, key: &str, job_id: &str) -> Response {
    app.http
        .delete(format!("{}/jobs/{job_id}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .expect("DELETE /jobs")
}

async fn cancel(app: &TestApp, job_id: &str) -> (u16, Value) {
    let response = cancel_as(app, &app.api_key, job_id).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

async fn db_status(app: &TestApp, job_id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
        .bind(job_id)
        .fetch_one(&app.pool)
        .await
        .expect("job row")
}

/// The job's artifact key and whether it still holds its document.
async fn stored(app: &TestApp, job_id: &str) -> (Option<String>, bool) {
    sqlx::query_as("SELECT artifact_key, payload IS NOT NULL FROM jobs WHERE id = $1::uuid")
        .bind(job_id)
        .fetch_one(&app.pool)
        .await
        .expect("job row")
}

#[tokio::test]
async fn a_queued_job_is_canceled_at_once_and_its_message_is_acked_harmlessly() {
    let app = spawn_app().await;
    let job = post_job(&app, "xlsx", None).await;

    let (code, body) = cancel(&app, &job).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "canceled");
    assert!(body["finished_at"].is_string(), "{body}");
    assert_eq!(app.status(&job).await["status"], "canceled");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"artefatos_jobs_finished_total{format="xlsx",outcome="canceled"}"#),
        "counted as finished, outcome canceled"
    );

    // Repeating the cancel changes nothing and answers the same.
    let (code, again) = cancel(&app, &job).await;
    assert_eq!(code, 200);
    assert_eq!(again["status"], "canceled");
    assert_eq!(again["finished_at"], body["finished_at"]);

    let download = app.get(&format!("/download/{job}")).await;
    assert_eq!(download.status(), 409);
    let problem: Value = download.json().await.unwrap();
    assert_eq!(problem["code"], "job_canceled");

    // Another client's job and an unknown id look the same: 404.
    let other = app.other_client_key().await;
    let response = cancel_as(&app, &other, &job).await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "not_found");
    let (code, _) = cancel(&app, &Uuid::new_v4().to_string()).await;
    assert_eq!(code, 404);
    let (code, _) = cancel(&app, "not-a-uuid").await;
    assert_eq!(code, 404);

    // The relay still publishes the job's message: a worker skips and acks it.
    let queue = Topology::new(&app.config).work_queue(Format::Xlsx);
    let _worker = start_worker(&app.config).await;
    let next = post_job(&app, "xlsx", None).await;
    app.wait_for_status(&next, "done", DEADLINE).await;
    assert!(
        poll_until(DEADLINE, || async { depth(&app.config, &queue).await == 0 }).await,
        "every message was settled"
    );
    let status = app.status(&job).await;
    assert_eq!(status["status"], "canceled");
    assert_eq!(status["attempts"], 0, "never rendered: {status}");
    assert_eq!(
        stored(&app, &job).await,
        (None, false),
        "nothing stored, document dropped"
    );
}

#[tokio::test]
async fn a_done_job_cannot_be_canceled() {
    let app = spawn_app().await;
    let _worker = start_worker(&app.config).await;
    let job = post_job(&app, "pdf", None).await;
    app.wait_for_status(&job, "done", DEADLINE).await;

    let (code, problem) = cancel(&app, &job).await;
    assert_eq!(code, 409, "{problem}");
    assert_eq!(problem["code"], "job_final");
    assert_eq!(problem["status"], 409);
    assert_eq!(problem["job_status"], "done");
    assert_eq!(app.status(&job).await["status"], "done");
    assert_eq!(
        app.get(&format!("/download/{job}?mode=stream"))
            .await
            .status(),
        200,
        "the artifact is untouched"
    );
}

#[tokio::test]
async fn a_processing_job_stops_at_its_checkpoint_and_stores_nothing() {
    let app = spawn_app().await;
    let _worker = start_worker(&app.config).await;
    let job = post_job(&app, "xlsx", Some(big_body(150_000))).await;
    assert!(
        poll_until(DEADLINE, || async {
            db_status(&app, &job).await == "processing"
        })
        .await,
        "the worker took the job"
    );

    let (code, body) = cancel(&app, &job).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "processing");
    assert_eq!(body["cancel_requested"], true);
    // A repeat while the worker has not stopped yet answers the same.
    let (code, _) = cancel(&app, &job).await;
    assert!(code == 202 || code == 200, "harmless repeat: {code}");

    let status = app.wait_for_status(&job, "canceled", DEADLINE).await;
    assert!(status.get("artifact").is_none(), "{status}");
    assert_eq!(
        stored(&app, &job).await,
        (None, false),
        "nothing stored, document dropped"
    );
    let blobs = Blobs::from_config(&app.config.storage).await.unwrap();
    match blobs.get(&format!("jobs/{job}.xlsx")).await {
        Err(BlobError::NotFound(_)) => {}
        Ok(_) => panic!("a canceled job's artifact was stored"),
        Err(other) => panic!("unexpected storage error {other}"),
    }
    let (code, _) = cancel(&app, &job).await;
    assert_eq!(code, 200, "canceled for good");
    let download = app.get(&format!("/download/{job}")).await;
    assert_eq!(download.status(), 409);
}

#[tokio::test]
async fn metadata_is_stored_shown_and_part_of_the_request() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let mut body = generate_body("xlsx", &key);
    body["metadata"] = json!({"order": "A-17", "user": "42"});
    let response = app.generate(&body).await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["metadata"], json!({"order": "A-17", "user": "42"}));
    let job = created["job_id"].as_str().unwrap().to_string();
    assert_eq!(
        app.status(&job).await["metadata"],
        json!({"order": "A-17", "user": "42"})
    );

    // The same metadata in another order is the same request: a replay.
    body["metadata"] = json!({"user": "42", "order": "A-17"});
    let replay = app.generate(&body).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(
        replay.json::<Value>().await.unwrap()["job_id"],
        job.as_str()
    );
    // Other metadata under the same key is another request.
    for other in [json!({"order": "A-18", "user": "42"}), Value::Null] {
        body["metadata"] = other;
        let reused = app.generate(&body).await;
        assert_eq!(reused.status(), 422);
        assert_eq!(
            reused.json::<Value>().await.unwrap()["code"],
            "idempotency_key_reused"
        );
    }

    // A job without metadata shows none.
    let plain = post_job(&app, "pdf", None).await;
    assert!(app.status(&plain).await.get("metadata").is_none());
}

#[tokio::test]
async fn metadata_beyond_its_limits_is_refused_and_creates_nothing() {
    let app = spawn_app().await;
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (Value::Object(many), "at most 20"),
        (json!({"k": "x".repeat(4096)}), "at most 4096 are allowed"),
        (json!({"n": 1}), "must be a string"),
        (json!(["a"]), "must be an object"),
    ];
    for (metadata, says) in cases {
        let mut body = generate_body("xlsx", &Uuid::new_v4().to_string());
        body["metadata"] = metadata;
        let response = app.generate(&body).await;
        assert_eq!(response.status(), 400);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{detail:?} should say {says:?}");
    }
    assert_eq!(app.job_count().await, 0);
}

/// Every page of `GET /jobs?{query}`, following `next_cursor`, as job ids.
async fn list_all(app: &TestApp, query: &str, mut between: impl AsyncFnMut()) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/jobs?{query}&cursor={c}"),
            None => format!("/jobs?{query}"),
        };
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        let page: Value = response.json().await.unwrap();
        for job in page["jobs"].as_array().unwrap() {
            ids.push(job["job_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
        between().await;
    }
}

#[tokio::test]
async fn the_job_list_pages_newest_first_without_skipping_while_jobs_arrive() {
    let app = spawn_app().await;
    let mut posted = Vec::new();
    for _ in 0..7 {
        posted.push(post_job(&app, "xlsx", None).await);
    }
    // Another client's job is never listed.
    let other = app.other_client_key().await;
    let theirs = app
        .generate_as(&other, &generate_body("pdf", &Uuid::new_v4().to_string()))
        .await;
    assert_eq!(theirs.status(), 202);

    // Pages of 3 while a new job arrives before each next page: the walk
    // sees exactly the jobs that existed when it began, newest first.
    let mut arrived = Vec::new();
    let walked = list_all(&app, "limit=3", async || {
        arrived.push(post_job(&app, "pdf", None).await);
    })
    .await;
    let newest_first: Vec<String> = posted.iter().rev().cloned().collect();
    assert_eq!(walked, newest_first);
    assert_eq!(arrived.len(), 2, "three pages of 3, 3 and 1");

    // The first page shows the newest job as GET /status does.
    let page: Value = app.get("/jobs").await.json().await.unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 9);
    assert_eq!(page["next_cursor"], Value::Null);
    let newest = arrived.last().unwrap();
    assert_eq!(page["jobs"][0], app.status(newest).await);

    // The status filter.
    let (code, _) = cancel(&app, &posted[2]).await;
    assert_eq!(code, 200);
    let canceled = list_all(&app, "status=canceled&limit=1", async || {}).await;
    assert_eq!(canceled, vec![posted[2].clone()]);
    let queued = list_all(&app, "status=queued&limit=200", async || {}).await;
    assert_eq!(queued.len(), 8);
    assert!(!queued.contains(&posted[2]));
    assert!(list_all(&app, "status=done", async || {}).await.is_empty());

    // The index serves the walk.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM jobs WHERE client_id = gen_random_uuid() \
         AND (created_at, id) < (now(), gen_random_uuid()) \
         ORDER BY created_at DESC, id DESC LIMIT 3",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert!(plan.join("\n").contains("jobs_by_client"), "{plan:?}");
}

#[tokio::test]
async fn bad_list_parameters_are_refused_clearly() {
    let app = spawn_app().await;
    for query in [
        "limit=0",
        "limit=201",
        "limit=ten",
        "status=finished",
        "cursor=not-ours",
        "cursor=zz",
    ] {
        let response = app.get(&format!("/jobs?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request", "{query}");
    }
    let response = app.get("/jobs?limit=200").await;
    assert_eq!(response.status(), 200);
    let unauthenticated = app
        .http
        .get(format!("{}/jobs", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn a_marked_job_is_never_claimed_or_done_and_only_its_holder_or_a_dead_lease_cancels_it() {
    use artefatos::storage::jobs::JobStatus;
    use artefatos::storage::jobs::control::{self, Cancel};
    use artefatos::storage::jobs::lifecycle::{self, Claim};

    use crate::worker_lifecycle::{artifact, database, insert_job};

    const LEASE: Duration = Duration::from_secs(30);
    let pool = database().await;
    let job = insert_job(&pool).await;
    let client: Uuid = sqlx::query_scalar("SELECT client_id FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(matches!(
        lifecycle::claim(&pool, job, "w1", LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert_eq!(
        control::cancel(&pool, job, Uuid::new_v4()).await.unwrap(),
        Cancel::Missing,
        "another client cannot cancel it"
    );
    let Cancel::Requested(view) = control::cancel(&pool, job, client).await.unwrap() else {
        panic!("a held job is only marked");
    };
    assert!(view.cancel_requested);
    assert!(control::cancel_requested(&pool, job).await.unwrap());

    // The holder's `done` is refused; another worker cannot finish the cancel.
    assert_eq!(
        lifecycle::mark_done(&pool, job, "w1", &artifact(job))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        control::finish_cancel(&pool, job, "w2").await.unwrap(),
        None
    );

    // Its worker dies: the lease runs out, a redelivery does not claim the
    // job but finishes its cancel.
    sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(
        lifecycle::claim(&pool, job, "w2", LEASE).await.unwrap(),
        Claim::Leased { .. }
    ));
    let canceled = control::finish_cancel(&pool, job, "w2")
        .await
        .unwrap()
        .expect("a dead lease's cancel is finished by anyone");
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert!(matches!(
        lifecycle::claim(&pool, job, "w2", LEASE).await.unwrap(),
        Claim::Finished(_)
    ));
    assert!(matches!(
        control::cancel(&pool, job, client).await.unwrap(),
        Cancel::AlreadyCanceled(_)
    ));
}
