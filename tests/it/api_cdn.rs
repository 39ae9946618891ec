//! Downloads from where clients are (issue 14): presigned URLs signed for the
//! public S3 endpoint while the service talks to its internal one.

use serde_json::Value;

use crate::api_read::finish_job;
use crate::support::{Options, generate_body, spawn_app_with};

#[tokio::test]
async fn presigned_urls_name_the_public_endpoint_and_work_there() {
    let app = spawn_app_with(Options {
        public_s3_proxy: true,
        ..Options::default()
    })
    .await;
    let response = app.generate(&generate_body("pdf", "public")).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = job["job_id"].as_str().unwrap().to_string();
    let bytes = b"%PDF-1.7 through the public endpoint".to_vec();
    // Stored through the internal endpoint, as a worker does.
    finish_job(&app, &id, &bytes).await;

    let response = app.get(&format!("/download/{id}")).await;
    assert_eq!(response.status(), 302);
    let url = response.headers()["location"].to_str().unwrap().to_string();
    let public = format!("http://{}/", app.s3_public_proxy.as_ref().unwrap().addr());
    let internal = app.s3.as_ref().unwrap().endpoint();
    assert!(url.starts_with(&public), "{url} names {public}");
    assert!(
        !url.starts_with(&internal),
        "{url} names the internal {internal}"
    );

    // The signature holds for the public host: fetched there, it serves the bytes.
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // And it really goes through the public endpoint: with that one down,
    // the same URL no longer answers.
    app.s3_public_proxy.as_ref().unwrap().cut();
    assert!(reqwest::get(&url).await.is_err());
}
