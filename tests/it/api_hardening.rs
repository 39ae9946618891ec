//! Hostile requests (issue 11): none of them may take memory, the database,
//! the metrics or the process hostage, or learn the service's internals.

use std::sync::Arc;
use std::time::Duration;

use artefatos::actors::Role;
use artefatos::app::Application;
use artefatos::http::error::UNAVAILABLE_DETAIL;
use artefatos::render::Format;
use artefatos::storage::jobs::JobError;
use artefatos::storage::jobs::create::{Created, JobStore, NewJob};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::api_generate::problem;
use crate::support::{Options, TestApp, generate_body, spawn_app_with};

/// Opens a raw connection and sends `head` and the first `sent` bytes of
/// `body`, leaving the rest unsent: a request in flight as long as the test wants.
async fn start_request(app: &TestApp, head: &str, body: &[u8], sent: usize) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&body[..sent]).await.expect("body start");
    stream
}

/// A `POST /generate` head for a body of `length` bytes.
fn post_head(app: &TestApp, length: usize) -> String {
    format!(
        "POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        app.api_key
    )
}

/// A valid request body padded with whitespace to `size` bytes.
fn padded_body(key: &str, size: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(&generate_body("pdf", key)).unwrap();
    assert!(body.len() < size);
    body.resize(size, b' ');
    body
}

/// `POST /generate` of raw bytes (a padded body is no `serde_json::Value`).
async fn post_body(app: &TestApp, body: Vec<u8>) -> reqwest::Response {
    app.http
        .post(format!("{}/generate", app.address))
        .bearer_auth(&app.api_key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /generate")
}

/// Reads until the peer closes; `None` if it has not within `deadline`.
async fn read_to_close(stream: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    tokio::time::timeout(deadline, stream.read_to_end(&mut received))
        .await
        .ok()
        .map(|_| received)
}

#[tokio::test]
async fn large_bodies_beyond_the_configured_number_in_flight_get_503_server_busy() {
    let app = spawn_app_with(Options {
        vars: vec![
            ("ARTEFATOS_LARGE_BODY_BYTES", "1024".into()),
            ("ARTEFATOS_MAX_LARGE_BODIES_IN_FLIGHT", "1".into()),
        ],
        ..Options::default()
    })
    .await;
    // One large body arrives slowly and holds the only slot.
    let held = padded_body("held", 8 * 1024);
    let mut slow = start_request(&app, &post_head(&app, held.len()), &held, 100).await;

    let large = |key: &str| post_body(&app, padded_body(key, 4 * 1024));
    // Polled: the slow request takes its slot once its head is parsed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    let refused = loop {
        attempt += 1;
        let response = large(&format!("other-{attempt}")).await;
        if response.status() == 503 {
            break response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a second large body is never refused while the slot is held"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    problem(refused, 503, "server_busy").await;
    // Small bodies need no slot.
    assert_eq!(
        app.generate(&generate_body("pdf", "small")).await.status(),
        202
    );

    // The slow body completes normally, and its slot is free again after.
    slow.write_all(&held[100..])
        .await
        .expect("rest of the body");
    let answer = read_to_close_or_response(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(large("after").await.status(), 202);
}

/// The response head of a request whose connection stays open.
async fn read_to_close_or_response(stream: &mut TcpStream) -> String {
    let mut received = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut received))
        .await
        .expect("a response")
        .expect("read");
    String::from_utf8_lossy(&received[..n]).into_owned()
}

#[tokio::test]
async fn control_characters_in_idempotency_keys_are_refused_with_400() {
    let app = spawn_app_with(Options::default()).await;
    for key in ["\u{0}", "a\u{0}b", "tab\there", "bell\u{7}", "del\u{7f}"] {
        let response = app.generate(&generate_body("pdf", key)).await;
        problem(response, 400, "invalid_idempotency_key").await;
    }
    assert_eq!(app.job_count().await, 0, "nothing written");
    // The service is unharmed: the next request is served at once.
    assert_eq!(
        app.generate(&generate_body("pdf", "fine")).await.status(),
        202
    );
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_alone_and_its_batch_neighbours_commit() {
    let app = spawn_app_with(Options::default()).await;
    let store = Arc::new(JobStore::new(app.pool.clone()));
    let job = |key: String| NewJob {
        metadata: None,
        id: Uuid::now_v7(),
        client_id: app.client_id,
        idempotency_key: key,
        fingerprint: vec![1; 32],
        format: Format::Pdf,
        filename: "x.pdf".into(),
        payload: serde_json::to_string(&crate::support::sample_document()).unwrap(),
    };
    // Sent together so they share group commits; one carries a NUL, which
    // PostgreSQL text refuses.
    let creates = (0..40).map(|i| {
        let store = store.clone();
        let key = if i == 17 {
            "bad\u{0}key".to_string()
        } else {
            format!("good-{i}")
        };
        let new = job(key);
        async move { store.create(new).await }
    });
    let results = futures::future::join_all(creates).await;
    for (i, result) in results.into_iter().enumerate() {
        if i == 17 {
            assert!(
                matches!(result, Err(JobError::Refused(_))),
                "the bad row is refused as the request's fault: {result:?}"
            );
        } else {
            assert!(matches!(result, Ok(Created::New(_))), "{i}: {result:?}");
        }
    }
    assert_eq!(app.job_count().await, 39);
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_a_database_look_up() {
    let app = spawn_app_with(Options {
        proxy_postgres: true,
        ..Options::default()
    })
    .await;
    // With PostgreSQL unreachable, any look-up would answer 503: a 401 proves
    // none was made.
    app.postgres_proxy.as_ref().unwrap().cut();
    let hex64 = "0123456789abcdef".repeat(4);
    for token in [
        "nope".to_string(),
        format!("af_{}", hex64.to_uppercase()),
        format!("af_{}", &hex64[1..]),
        format!("af_{hex64}0"),
        format!("xx_{hex64}"),
    ] {
        let response = app
            .get_as(&token, &format!("/status/{}", Uuid::nil()))
            .await;
        problem(response, 401, "unauthorized").await;
    }
    // A token of the right shape does need PostgreSQL; its 503 says so
    // without the driver's text.
    let response = app
        .get_as(&format!("af_{hex64}"), &format!("/status/{}", Uuid::nil()))
        .await;
    let body = problem(response, 503, "service_unavailable").await;
    assert_eq!(body["detail"], UNAVAILABLE_DETAIL, "{body}");
}

#[tokio::test]
async fn invented_http_methods_are_one_other_label_in_the_metrics() {
    let app = spawn_app_with(Options::default()).await;
    let method = format!("ZZQ{}", Uuid::new_v4().simple());
    let method = &method[..12];
    let response = app
        .http
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}/health/live", app.address),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 405);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains(method), "{method} became a label");
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("route=\"/health/live\"") && l.contains("method=\"OTHER\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_storage_outage_answers_503_without_internal_text_and_nul_renders() {
    let mut app = spawn_app_with(Options {
        role: Some(Role::All),
        ..Options::default()
    })
    .await;
    // A NUL in the filename or in the document's strings is not an error:
    // the filename loses it, PostgreSQL's `json` keeps the escape, both
    // renderers draw the text.
    let mut ids = Vec::new();
    for format in ["xlsx", "pdf"] {
        let mut body = generate_body(format, &format!("nul-{format}"));
        body["filename"] = json!("Ven\u{0}das");
        body["document"]["sheets"][0]["rows"][0][1] = json!("A\u{0}çaí");
        let response = app.generate(&body).await;
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        ids.push(job["job_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let done = app
            .wait_for_status(id, "done", Duration::from_secs(60))
            .await;
        assert!(
            done["filename"].as_str().unwrap().starts_with("Vendas"),
            "{done}"
        );
    }

    app.s3.as_mut().unwrap().stop().await;
    let response = app.get(&format!("/download/{}?mode=stream", ids[0])).await;
    let endpoint = app.s3.as_ref().unwrap().endpoint();
    let body = problem(response, 503, "service_unavailable").await;
    assert_eq!(body["detail"], UNAVAILABLE_DETAIL, "{body}");
    let text = body.to_string();
    let port = endpoint.rsplit(':').next().unwrap();
    assert!(!text.contains(port), "{text}");
}

#[tokio::test]
async fn a_client_trickling_its_header_is_disconnected() {
    let app = spawn_app_with(Options {
        vars: vec![("ARTEFATOS_HEADER_READ_TIMEOUT", "300ms".into())],
        ..Options::default()
    })
    .await;
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHo")
        .await
        .expect("half a header");
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let answer = answer.expect("the server closed the connection");
    // hyper may say 408 before closing; it must not have served the request.
    assert!(!String::from_utf8_lossy(&answer).contains(" 200 "));
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_request_that_never_ends() {
    let app = spawn_app_with(Options::default()).await;
    let mut config = app.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.worker.shutdown_grace = Duration::from_millis(400);
    let server = Application::build(config).await.expect("app builds");
    let port = server.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    // A request whose body never completes: the handler waits for it forever.
    let body = padded_body("never", 4096);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(post_head(&app, body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    // Let the request reach the handler: a second connection is served.
    let live = reqwest::get(format!("http://127.0.0.1:{port}/health/live"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    stop.send(()).unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(10), serving).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "serve returned within the grace: {finished:?}"
    );
    // And the stuck connection was closed.
    assert!(
        read_to_close(&mut stream, Duration::from_secs(5))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_request_past_its_timeout_gets_503_request_timeout_and_frees_its_slot() {
    let app = spawn_app_with(Options {
        vars: vec![
            ("ARTEFATOS_REQUEST_TIMEOUT", "300ms".into()),
            ("ARTEFATOS_LARGE_BODY_BYTES", "1024".into()),
            ("ARTEFATOS_MAX_LARGE_BODIES_IN_FLIGHT", "1".into()),
        ],
        ..Options::default()
    })
    .await;
    // A body that never completes: its request is cut at the timeout…
    let body = padded_body("trickled", 4096);
    let mut stream = start_request(&app, &post_head(&app, body.len()), &body, 10).await;
    let answer = read_to_close_or_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // …and the large-body slot it held is free for the next one.
    let next = post_body(&app, padded_body("next", 4096)).await;
    assert_eq!(next.status(), 202);
}
