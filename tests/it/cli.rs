//! The `artefatos` binary's operator commands, run as a user would.

use std::process::Command;

use serde_json::Value;

use crate::support::{TestApp, generate_body, spawn_app};

/// Runs the binary against the app's database and namespace; returns stdout.
pub fn artefatos(app: &TestApp, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_artefatos"))
        .args(args)
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{}", database(app)),
        )
        .env("ARTEFATOS_NAMESPACE", &app.config.namespace)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run artefatos");
    assert!(
        output.status.success(),
        "artefatos {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn database(app: &TestApp) -> String {
    app.config
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn keys_created_by_the_cli_authenticate_until_revoked() {
    let app = spawn_app().await;
    let out = artefatos(&app, &["keys", "create", "cli-client"]);
    let key = out.lines().last().unwrap().trim().to_string();
    assert!(key.starts_with("af_") && key.len() == 67, "{out}");

    let response = app.generate_as(&key, &generate_body("pdf", "cli")).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();

    // Stored hashed: the secret appears nowhere in the database.
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE encode(key_hash, 'escape') LIKE '%' || $1 || '%'",
    )
    .bind(&key[3..])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(clear, 0);

    let listed = artefatos(&app, &["keys", "list"]);
    assert!(
        listed.contains("cli-client") && listed.contains(&key[..11]),
        "{listed}"
    );
    assert!(!listed.contains(&key), "list never shows a secret");

    // `jobs show` prints the full record.
    let id = job["job_id"].as_str().unwrap();
    let shown: Value = serde_json::from_str(&artefatos(&app, &["jobs", "show", id])).unwrap();
    assert_eq!(shown["id"], id);
    assert_eq!(shown["status"], "queued");
    assert!(shown["payload_bytes"].as_i64().unwrap() > 100);

    // A second key of the same client, revoked before use, never authenticates.
    let second = artefatos(&app, &["keys", "create", "cli-client"]);
    let second = second.lines().last().unwrap().trim().to_string();
    artefatos(&app, &["keys", "revoke", &second[..11]]);
    let refused = app
        .generate_as(&second, &generate_body("pdf", "cli-2"))
        .await;
    assert_eq!(refused.status(), 401);
}
