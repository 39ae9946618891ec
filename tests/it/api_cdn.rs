//! Downloads from where clients are (issue 14): presigned URLs signed for the
//! public S3 endpoint while the service talks to its internal one, or
//! CloudFront signed URLs (canned policy) verified with openssl.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use artefatos::config::{CdnConfig, PrivateKeySource};
use artefatos::storage::blobs::CloudFrontSigner;
use base64::Engine;
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

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install -y openssl)")
}

/// Whether `signature` (CloudFront's base64) verifies `policy` with the
/// public key `pub.pem` in `dir`, as RSA-SHA1: checked by openssl, not by us.
fn verifies(dir: &Path, policy: &str, signature: &str) -> bool {
    let standard: String = signature
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '=',
            '~' => '/',
            c => c,
        })
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(standard)
        .expect("signature is base64 after CloudFront's substitutions");
    std::fs::write(dir.join("policy.json"), policy).unwrap();
    std::fs::write(dir.join("sig.bin"), raw).unwrap();
    openssl(
        dir,
        &[
            "dgst",
            "-sha1",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.bin",
            "policy.json",
        ],
    )
    .status
    .success()
}

/// The query of a URL as pairs, and the URL before it.
fn split_url(url: &str) -> (String, HashMap<String, String>) {
    let (resource, query) = url.split_once('?').expect("a query");
    let params = query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("name=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    (resource.to_string(), params)
}

#[tokio::test]
async fn cloudfront_urls_carry_a_canned_policy_signature_the_public_key_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path();
    // PKCS#1, as the CloudFront documentation's `openssl genrsa` gives.
    assert!(
        openssl(dir, &["genrsa", "-traditional", "-out", "key.pem", "2048"])
            .status
            .success()
    );
    assert!(
        openssl(
            dir,
            &["rsa", "-in", "key.pem", "-pubout", "-out", "pub.pem"]
        )
        .status
        .success()
    );
    let app = spawn_app_with(Options {
        vars: vec![
            (
                "ARTEFATOS_DOWNLOAD_BASE_URL",
                "https://cdn.example.test/".into(),
            ),
            ("ARTEFATOS_CLOUDFRONT_KEY_PAIR_ID", "K2JCJMDEHXQW5F".into()),
            (
                "ARTEFATOS_CLOUDFRONT_PRIVATE_KEY_FILE",
                dir.join("key.pem").display().to_string(),
            ),
            ("ARTEFATOS_PRESIGN_TTL", "10m".into()),
        ],
        ..Options::default()
    })
    .await;
    let response = app.generate(&generate_body("pdf", "cdn")).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = job["job_id"].as_str().unwrap().to_string();
    finish_job(&app, &id, b"%PDF-1.7 via the CDN").await;

    let asked_at = chrono::Utc::now().timestamp();
    let response = app.get(&format!("/download/{id}")).await;
    assert_eq!(response.status(), 302);
    let url = response.headers()["location"].to_str().unwrap().to_string();
    let (resource, params) = split_url(&url);
    assert_eq!(resource, format!("https://cdn.example.test/jobs/{id}.pdf"));
    assert_eq!(params["Key-Pair-Id"], "K2JCJMDEHXQW5F");
    assert_eq!(params.len(), 3, "{url}");

    // Expires is the presign TTL from now (whole seconds).
    let expires: i64 = params["Expires"].parse().unwrap();
    assert!(
        (asked_at + 600 - 2..=asked_at + 601).contains(&expires),
        "expires {expires}, asked at {asked_at}"
    );

    // The canned policy CloudFront rebuilds from the URL verifies with the
    // public key; the same signature over any other expiry does not.
    let policy = |expires: i64| {
        format!(
            r#"{{"Statement":[{{"Resource":"{resource}","Condition":{{"DateLessThan":{{"AWS:EpochTime":{expires}}}}}}}]}}"#
        )
    };
    assert!(verifies(dir, &policy(expires), &params["Signature"]));
    assert!(!verifies(
        dir,
        &policy(expires + 3600),
        &params["Signature"]
    ));

    // The JSON form tells the same expiry.
    let json = app.download_json(&id).await;
    assert_eq!(json["url"], url.as_str());
    let expires_at: chrono::DateTime<chrono::Utc> =
        json["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at.timestamp(), expires);

    // A PKCS#8 key given inline works as well.
    assert!(
        openssl(
            dir,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-out", "key8.pem"
            ]
        )
        .status
        .success()
    );
    let pem = std::fs::read_to_string(dir.join("key8.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let signer = CloudFrontSigner::new(&CdnConfig {
        base_url: "https://cdn.example.test".into(),
        key_pair_id: "K2JCJMDEHXQW5F".into(),
        private_key: PrivateKeySource::Pem(pem),
    })
    .unwrap();
    let start = std::time::SystemTime::now();
    let signed = signer
        .sign("jobs/x.xlsx", start, Duration::from_secs(60))
        .unwrap();
    let (resource, params) = split_url(&signed.url);
    let expires: i64 = params["Expires"].parse().unwrap();
    let policy = format!(
        r#"{{"Statement":[{{"Resource":"{resource}","Condition":{{"DateLessThan":{{"AWS:EpochTime":{expires}}}}}}}]}}"#
    );
    assert!(verifies(dir, &policy, &params["Signature"]));

    // A key that is no key stops the start-up with a clear error.
    let err = CloudFrontSigner::new(&CdnConfig {
        base_url: "https://cdn.example.test".into(),
        key_pair_id: "K".into(),
        private_key: PrivateKeySource::Pem("not a key".into()),
    })
    .unwrap_err();
    assert!(err.to_string().contains("PEM"), "{err}");
}
