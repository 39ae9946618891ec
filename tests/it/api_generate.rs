//! `POST /generate`: one job per (client, idempotency key), always, and a
//! specific problem for every bad request.

use std::collections::HashSet;

use artefatos::render::Format;
use artefatos::storage::queue::{Topology, connect, queue_depth};
use serde_json::{Value, json};

use crate::support::{Options, TestApp, generate_body, poll_until, spawn_app, spawn_app_with};

/// Messages waiting in the app's work queue for `format`.
pub async fn work_queue_depth(app: &TestApp, format: Format) -> u32 {
    let topology = Topology::new(&app.config);
    let connection = connect("amqp://guest:guest@127.0.0.1:5672/%2f")
        .await
        .expect("amqp");
    let channel = connection.create_channel().await.expect("channel");
    // Declaring is idempotent and spares a race with the app's first publish.
    topology.declare(&channel).await.expect("declare");
    let depth = queue_depth(&channel, &topology.work_queue(format))
        .await
        .expect("depth");
    let _ = connection.close(200, "bye".into()).await;
    depth
}

pub async fn problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "expected {status} {code}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "problems are RFC 9457 documents"
    );
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    body
}

/// The job ids of the accepted (202) answers to racing requests with one
/// key; every other answer must be a 409 `request_in_progress`.
async fn accepted_job_ids(responses: Vec<reqwest::Response>) -> HashSet<String> {
    let mut ids = HashSet::new();
    for response in responses {
        match response.status().as_u16() {
            202 => {
                let body: Value = response.json().await.unwrap();
                ids.insert(body["job_id"].as_str().unwrap().to_string());
            }
            409 => {
                assert!(response.headers().contains_key("retry-after"));
                problem(response, 409, "request_in_progress").await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    ids
}

#[tokio::test]
async fn a_new_key_creates_a_queued_job_and_one_message() {
    let app = spawn_app().await;
    let response = app.generate(&generate_body("xlsx", "k-1")).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(response.headers().get("idempotent-replayed").is_none());
    let body: Value = response.json().await.unwrap();
    let id = body["job_id"].as_str().unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["format"], "xlsx");
    assert_eq!(body["filename"], "Vendas Q3.xlsx");
    assert_eq!(location, format!("/status/{id}"));
    assert_eq!(body["links"]["download"], format!("/download/{id}"));
    assert_eq!(app.job_count().await, 1);
    assert!(
        poll_until(std::time::Duration::from_secs(10), || async {
            work_queue_depth(&app, Format::Xlsx).await == 1
        })
        .await,
        "the job reaches its work queue once"
    );
}

#[tokio::test]
async fn the_same_request_again_replays_the_same_job() {
    let app = spawn_app().await;
    let first: Value = app
        .generate(&generate_body("pdf", "k"))
        .await
        .json()
        .await
        .unwrap();
    let again = app.generate(&generate_body("pdf", "k")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job_id"], first["job_id"]);
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn a_reordered_but_equal_request_is_the_same_request() {
    let app = spawn_app().await;
    let body = generate_body("pdf", "k");
    let first: Value = app.generate(&body).await.json().await.unwrap();
    // Same JSON, other key order and whitespace: still the same request.
    let text = format!(
        "{{ \"document\": {},  \"filename\": \"Vendas Q3\", \"idempotency_key\": \"k\", \"format\": \"pdf\" }}",
        body["document"]
    );
    let again = app
        .http
        .post(format!("{}/generate", app.address))
        .bearer_auth(&app.api_key)
        .header("content-type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job_id"], first["job_id"]);
}

#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let app = spawn_app().await;
    assert_eq!(
        app.generate(&generate_body("xlsx", "k")).await.status(),
        202
    );
    let response = app.generate(&generate_body("pdf", "k")).await;
    problem(response, 422, "idempotency_key_reused").await;
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn sixty_four_concurrent_posts_with_one_key_make_one_job_and_one_message() {
    let app = spawn_app().await;
    let body = generate_body("xlsx", "race");
    let responses = futures::future::join_all((0..64).map(|_| app.generate(&body))).await;
    let ids = accepted_job_ids(responses).await;
    assert_eq!(ids.len(), 1, "every accepted request names the same job");
    assert_eq!(app.job_count().await, 1);
    assert!(
        poll_until(std::time::Duration::from_secs(10), || async {
            work_queue_depth(&app, Format::Xlsx).await == 1
        })
        .await
    );
    // The relay must not add a second message later (it only takes rows
    // still unpublished after its grace period).
    assert!(
        poll_until(std::time::Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, bool>("SELECT published_at IS NOT NULL FROM jobs")
                .fetch_one(&app.pool)
                .await
                .unwrap()
        })
        .await,
        "the confirm is recorded"
    );
    assert_eq!(work_queue_depth(&app, Format::Xlsx).await, 1);
}

/// Documents over 64 KiB are inserted on their own, beside the group commit:
/// still one job per key, and the small requests around them unaffected.
#[tokio::test]
async fn large_documents_beside_the_group_commit_still_make_one_job_per_key() {
    let app = spawn_app().await;
    let mut big = generate_body("xlsx", "big");
    let row = big["document"]["sheets"][0]["rows"][0].clone();
    let mut rows = Vec::new();
    for i in 0..100 {
        let mut row = row.clone();
        row[1] = json!(format!("{i:04} {}", "x".repeat(1000)));
        rows.push(row);
    }
    big["document"]["sheets"][0]["rows"] = json!(rows);
    assert!(big.to_string().len() > 64 * 1024);

    let bigs = (0..8).map(|_| app.generate(&big));
    let smalls: Vec<Value> = (0..16)
        .map(|i| generate_body("xlsx", &format!("small-{i}")))
        .collect();
    let (bigs, smalls) = futures::future::join(
        futures::future::join_all(bigs),
        futures::future::join_all(smalls.iter().map(|body| app.generate(body))),
    )
    .await;
    let big_ids = accepted_job_ids(bigs).await;
    assert_eq!(
        big_ids.len(),
        1,
        "every accepted request names the same job"
    );
    for response in smalls {
        assert_eq!(response.status(), 202);
    }
    assert_eq!(app.job_count().await, 17);
    let stored: i32 = sqlx::query_scalar(
        "SELECT octet_length(payload::text) FROM jobs WHERE idempotency_key = 'big'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        stored > 64 * 1024,
        "the document is stored whole: {stored} bytes"
    );
}

#[tokio::test]
async fn keys_belong_to_their_client() {
    let app = spawn_app().await;
    let other = app.other_client_key().await;
    let mine: Value = app
        .generate(&generate_body("pdf", "shared"))
        .await
        .json()
        .await
        .unwrap();
    let theirs = app
        .generate_as(&other, &generate_body("pdf", "shared"))
        .await;
    assert_eq!(theirs.status(), 202);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(mine["job_id"], theirs["job_id"]);
    assert_eq!(app.job_count().await, 2);
}

#[tokio::test]
async fn the_key_may_come_as_a_header_but_must_agree_with_the_body() {
    let app = spawn_app().await;
    let mut body = generate_body("pdf", "unused");
    body.as_object_mut().unwrap().remove("idempotency_key");
    let send = |key: Option<&'static str>, body: Value| {
        let mut request = app
            .http
            .post(format!("{}/generate", app.address))
            .bearer_auth(&app.api_key)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    assert_eq!(
        send(Some("from-header"), body.clone())
            .await
            .unwrap()
            .status(),
        202
    );
    let replay = send(Some("from-header"), body.clone()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    problem(
        send(None, body.clone()).await.unwrap(),
        400,
        "idempotency_key_required",
    )
    .await;
    problem(
        send(Some("a"), generate_body("pdf", "b")).await.unwrap(),
        400,
        "idempotency_key_mismatch",
    )
    .await;
    let long = "x".repeat(300);
    problem(
        app.generate(&generate_body("pdf", &long)).await,
        400,
        "invalid_idempotency_key",
    )
    .await;
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn bad_requests_get_specific_problems_and_write_nothing() {
    let app = spawn_app().await;
    problem(
        app.generate(&generate_body("docx", "k1")).await,
        422,
        "unsupported_format",
    )
    .await;

    let mut wrong_type = generate_body("xlsx", "k2");
    wrong_type["document"]["sheets"][0]["rows"][0][2] = json!("abc");
    let body = problem(app.generate(&wrong_type).await, 422, "invalid_document").await;
    assert_eq!(body["errors"][0]["path"], "sheets[0].rows[0][2]", "{body}");

    let mut no_document = generate_body("xlsx", "k3");
    no_document.as_object_mut().unwrap().remove("document");
    problem(app.generate(&no_document).await, 400, "invalid_request").await;

    let mut unknown_field = generate_body("xlsx", "k4");
    unknown_field["colour"] = json!("blue");
    problem(app.generate(&unknown_field).await, 400, "invalid_json").await;

    let not_json = app
        .http
        .post(format!("{}/generate", app.address))
        .bearer_auth(&app.api_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(not_json, 400, "invalid_json").await;
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn limits_are_configurable_and_enforced() {
    let app = spawn_app_with(Options {
        vars: vec![
            ("ARTEFATOS_MAX_BODY_BYTES", "4096".into()),
            ("ARTEFATOS_MAX_ROWS", "2".into()),
            ("ARTEFATOS_MAX_COLUMNS", "5".into()),
            ("ARTEFATOS_MAX_CELL_CHARS", "20".into()),
        ],
        filesystem: true,
        ..Options::default()
    })
    .await;
    let mut big = generate_body("xlsx", "big");
    big["document"]["sheets"][0]["rows"][0][1] = json!("x".repeat(8000));
    problem(app.generate(&big).await, 413, "payload_too_large").await;

    let mut rows = generate_body("xlsx", "rows");
    let row = rows["document"]["sheets"][0]["rows"][0].clone();
    rows["document"]["sheets"][0]["rows"]
        .as_array_mut()
        .unwrap()
        .push(row);
    let body = problem(app.generate(&rows).await, 422, "invalid_document").await;
    assert!(body["detail"].as_str().unwrap().contains("rows"), "{body}");

    let mut columns = generate_body("xlsx", "columns");
    columns["document"]["sheets"][0]["columns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"title": "Extra", "type": "text"}));
    for row in columns["document"]["sheets"][0]["rows"]
        .as_array_mut()
        .unwrap()
    {
        row.as_array_mut().unwrap().push(json!("x"));
    }
    let body = problem(app.generate(&columns).await, 422, "invalid_document").await;
    assert!(
        body["detail"].as_str().unwrap().contains("column"),
        "{body}"
    );

    let mut cell = generate_body("xlsx", "cell");
    cell["document"]["sheets"][0]["rows"][0][1] = json!("y".repeat(21));
    let body = problem(app.generate(&cell).await, 422, "invalid_document").await;
    assert_eq!(body["errors"][0]["path"], "sheets[0].rows[0][1]", "{body}");

    assert_eq!(
        app.generate(&generate_body("xlsx", "ok")).await.status(),
        202
    );
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn every_job_endpoint_requires_a_valid_key() {
    let app = spawn_app().await;
    let created: Value = app
        .generate(&generate_body("pdf", "k"))
        .await
        .json()
        .await
        .unwrap();
    let id = created["job_id"].as_str().unwrap();
    let anonymous = app
        .http
        .post(format!("{}/generate", app.address))
        .json(&generate_body("pdf", "k2"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    problem(anonymous, 401, "unauthorized").await;
    problem(
        app.get_as("af_wrong", &format!("/status/{id}")).await,
        401,
        "unauthorized",
    )
    .await;
    problem(
        app.get_as("", &format!("/download/{id}")).await,
        401,
        "unauthorized",
    )
    .await;

    let revoked = app.other_client_key().await;
    artefatos::storage::keys::revoke(&app.pool, &revoked[..11])
        .await
        .unwrap();
    problem(
        app.generate_as(&revoked, &generate_body("pdf", "k3")).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(app.job_count().await, 1);
}

/// The cached look-up is refreshed in the background while a key is busy;
/// that must never stretch how long a revoked key keeps working.
#[tokio::test]
async fn a_key_in_steady_use_stops_working_within_the_auth_cache_ttl_of_its_revocation() {
    use artefatos::storage::keys::AUTH_CACHE_TTL;
    use std::time::{Duration, Instant};

    let app = spawn_app().await;
    let key = app.other_client_key().await;
    let unknown = format!("/status/{}", uuid::Uuid::now_v7());
    assert_eq!(app.get_as(&key, &unknown).await.status(), 404);
    artefatos::storage::keys::revoke(&app.pool, &key[..11])
        .await
        .unwrap();
    let revoked_at = Instant::now();
    // Keep using it, as a busy client would, until it is refused.
    let refused = poll_until(AUTH_CACHE_TTL + Duration::from_secs(2), || async {
        app.get_as(&key, &unknown).await.status() == 401
    })
    .await;
    assert!(refused, "a revoked key kept working");
    assert!(
        revoked_at.elapsed() <= AUTH_CACHE_TTL + Duration::from_millis(500),
        "refused only {:?} after revocation",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn a_key_held_by_a_request_in_flight_answers_409_with_retry_after() {
    use artefatos::http::fingerprint::fingerprint;
    use artefatos::storage::cache::{Cache, Reservation};

    let app = spawn_app().await;
    let body = generate_body("pdf", "in-flight");
    // Another API replica has taken the key and not committed yet.
    let document: Box<serde_json::value::RawValue> =
        serde_json::from_str(&body["document"].to_string()).unwrap();
    let fp = hex::encode(fingerprint(Format::Pdf, "Vendas Q3.pdf", &document));
    let client_id = app.client_id;
    let cache = Cache::from_config(&app.config).unwrap();
    assert_eq!(
        cache
            .reserve_key(client_id, "in-flight", &fp)
            .await
            .unwrap(),
        Reservation::Reserved
    );

    let response = app.generate(&body).await;
    assert_eq!(response.headers()["retry-after"], "1");
    problem(response, 409, "request_in_progress").await;
    // Another body under the held key is a reuse, in flight or not.
    problem(
        app.generate(&generate_body("xlsx", "in-flight")).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.job_count().await, 0);

    // The holder gave up (crashed, failed): the key is free again.
    cache.release_key(client_id, "in-flight").await.unwrap();
    assert_eq!(app.generate(&body).await.status(), 202);
    assert_eq!(app.job_count().await, 1);
}
