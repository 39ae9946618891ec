//! Compressed request bodies (issue 14): `Content-Encoding: gzip` on
//! `POST /generate`, its two limits, bombs, unknown codings, and the
//! large-body slots applied to the inflated size.

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::api_generate::problem;
use crate::support::{Options, TestApp, generate_body, sample_document, spawn_app_with};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// `bytes` compressed by the `zstd` command (one frame, with its checksum).
fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd_with(bytes, &[])
}

/// `zstd` with extra arguments.
fn zstd_with(bytes: &[u8], args: &[&str]) -> Vec<u8> {
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("zstd (apt-get install -y zstd)");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("zstd output");
    writer.join().unwrap().expect("zstd input");
    assert!(output.status.success());
    output.stdout
}

/// `POST /generate` of raw bytes with the given `Content-Encoding`.
async fn post(app: &TestApp, encoding: &str, body: Vec<u8>) -> reqwest::Response {
    app.http
        .post(format!("{}/generate", app.address))
        .bearer_auth(&app.api_key)
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .expect("POST /generate")
}

/// The job a 202 names, and the document its row holds.
async fn accepted(app: &TestApp, response: reqwest::Response) -> (Value, Value) {
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id: uuid::Uuid = job["job_id"].as_str().unwrap().parse().unwrap();
    let stored = sqlx::query_scalar("SELECT payload FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    (job, stored)
}

/// A valid request whose document has `rows` rows (it compresses well).
fn body_with_rows(key: &str, rows: usize) -> Value {
    let mut document = sample_document();
    let row = document["sheets"][0]["rows"][0].clone();
    document["sheets"][0]["rows"] = Value::Array(vec![row; rows]);
    json!({ "format": "xlsx", "idempotency_key": key, "document": document })
}

#[tokio::test]
async fn a_gzip_body_makes_the_same_job_as_the_plain_one() {
    let app = spawn_app_with(Options::default()).await;
    let body = body_with_rows("same", 500);
    let plain = serde_json::to_vec(&body).unwrap();

    let response = post(&app, "gzip", gzip(&plain)).await;
    let (job, stored) = accepted(&app, response).await;
    assert_eq!(
        stored, body["document"],
        "the job holds the inflated document"
    );

    // The same request uncompressed is a replay of that job, not a conflict:
    // the encoding is transport, not part of the request.
    let replay = app.generate(&body).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["job_id"], job["job_id"]);
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn the_body_limit_counts_compressed_bytes_and_the_document_limit_inflated_ones() {
    let app = spawn_app_with(Options {
        vars: vec![
            ("ARTEFATOS_MAX_BODY_BYTES", "4096".into()),
            ("ARTEFATOS_MAX_DOCUMENT_BYTES", "200000".into()),
        ],
        ..Options::default()
    })
    .await;
    let plain = serde_json::to_vec(&body_with_rows("fits", 1000)).unwrap();
    let compressed = gzip(&plain);
    assert!(plain.len() > 4096 && plain.len() < 200_000 && compressed.len() < 4096);

    // Sent plain it is over the body limit; compressed it is not.
    problem(
        post(&app, "identity", plain.clone()).await,
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(post(&app, "gzip", compressed).await.status(), 202);

    // Inflated past the document limit: 413, and no job.
    let over = serde_json::to_vec(&body_with_rows("over", 5000)).unwrap();
    assert!(over.len() > 200_000);
    let over = gzip(&over);
    assert!(over.len() < 4096);
    let body = problem(post(&app, "gzip", over).await, 413, "payload_too_large").await;
    assert!(
        body["detail"].as_str().unwrap().contains("decompressed"),
        "{body}"
    );
    assert_eq!(app.job_count().await, 1);
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_with_413() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_MAX_DOCUMENT_BYTES", "1048576".into())],
        ..Options::default()
    })
    .await;
    // 1 GiB of spaces in about 1 MiB of gzip (1024 members of 1 MiB each,
    // concatenated as gzip allows): inflated whole it would take the
    // process's memory; it is refused past the 1 MiB document limit (the
    // unit tests in src/http/encoding.rs show it stops one chunk past it).
    let member = gzip(&vec![b' '; 1024 * 1024]);
    let bomb = member.repeat(1024);
    assert!(bomb.len() < 2 * 1024 * 1024, "{}", bomb.len());
    problem(post(&app, "gzip", bomb).await, 413, "payload_too_large").await;

    // Garbage that claims to be gzip is a 400, not a 500.
    problem(
        post(&app, "gzip", b"{\"not\": \"gzip\"}".to_vec()).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(app.job_count().await, 0);
    // The process is fine: a normal request still works.
    let ok = post(
        &app,
        "gzip",
        gzip(&serde_json::to_vec(&generate_body("pdf", "after")).unwrap()),
    )
    .await;
    assert_eq!(ok.status(), 202);
}

#[tokio::test]
async fn unknown_encodings_are_415_unsupported_encoding() {
    let app = spawn_app_with(Options::default()).await;
    let plain = serde_json::to_vec(&generate_body("pdf", "br")).unwrap();
    for coding in ["br", "deflate", "gzip, gzip"] {
        let response = post(&app, coding, plain.clone()).await;
        assert_eq!(
            response.headers()["accept-encoding"],
            "gzip, zstd, identity"
        );
        let body = problem(response, 415, "unsupported_encoding").await;
        assert!(body["detail"].as_str().unwrap().contains(coding), "{body}");
    }
    assert_eq!(app.job_count().await, 0);
}

#[tokio::test]
async fn a_small_gzip_body_that_inflates_large_needs_a_large_body_slot() {
    let app = spawn_app_with(Options {
        vars: vec![
            ("ARTEFATOS_LARGE_BODY_BYTES", "2048".into()),
            ("ARTEFATOS_MAX_LARGE_BODIES_IN_FLIGHT", "1".into()),
        ],
        ..Options::default()
    })
    .await;
    let large = serde_json::to_vec(&body_with_rows("large", 200)).unwrap();
    let compressed = gzip(&large);
    assert!(large.len() > 2048 && compressed.len() < 2048);

    // A plain large body arrives slowly and holds the only slot.
    let held = serde_json::to_vec(&body_with_rows("held", 100)).unwrap();
    assert!(held.len() > 2048);
    let address = app.address.trim_start_matches("http://");
    let mut slow = TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.api_key,
        held.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&held[..100]).await.unwrap();

    // Polled: the slow request takes its slot once its head is parsed. The
    // compressed body is small on the wire, so only its inflated size can
    // make it need a slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    let refused = loop {
        attempt += 1;
        let body = serde_json::to_vec(&body_with_rows(&format!("large-{attempt}"), 200)).unwrap();
        let response = post(&app, "gzip", gzip(&body)).await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 202);
        assert!(
            std::time::Instant::now() < deadline,
            "an inflated large body is never refused while the slot is held"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    problem(refused, 503, "server_busy").await;
    // A compressed body that stays small inflated needs no slot.
    let small = serde_json::to_vec(&generate_body("pdf", "small")).unwrap();
    assert!(small.len() < 2048);
    assert_eq!(post(&app, "gzip", gzip(&small)).await.status(), 202);
    drop(slow);
}

#[tokio::test]
async fn zstd_bodies_are_accepted_within_the_same_limits() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_MAX_DOCUMENT_BYTES", "1048576".into())],
        ..Options::default()
    })
    .await;
    let body = body_with_rows("zstd", 500);
    // Two frames one after the other, as RFC 8878 allows.
    let plain = serde_json::to_vec(&body).unwrap();
    let (first, second) = plain.split_at(plain.len() / 2);
    let mut compressed = zstd(first);
    compressed.extend(zstd(second));
    let response = post(&app, "zstd", compressed).await;
    let (_, stored) = accepted(&app, response).await;
    assert_eq!(stored, body["document"]);

    // 1 GiB in 1,024 frames of 1 MiB: refused past the 1 MiB limit.
    let bomb = zstd(&vec![b' '; 1024 * 1024]).repeat(1024);
    assert!(bomb.len() < 1024 * 1024, "{}", bomb.len());
    problem(post(&app, "zstd", bomb).await, 413, "payload_too_large").await;
    // A frame asking for a 128 MiB window (`--long=27`) is refused before
    // anything is decoded (RFC 9659 allows 8 MiB): a 400, where decoding
    // would have met the document limit (413).
    let wide = zstd_with(&vec![b' '; 32 * 1024 * 1024], &["--long=27"]);
    let body = problem(post(&app, "zstd", wide).await, 400, "invalid_request").await;
    assert!(body["detail"].as_str().unwrap().contains("indow"), "{body}");
    problem(
        post(&app, "zstd", b"not zstd at all".to_vec()).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(app.job_count().await, 1);
}
