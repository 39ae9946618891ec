//! The `artefatos` binary's operator commands, run as a user would.

use std::process::Command;

use serde_json::Value;

use crate::support::s3::storage_env;
use crate::support::{TestApp, generate_body, spawn_app};

/// Runs the binary against the app's database and namespace; returns stdout.
pub fn artefatos(app: &TestApp, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_artefatos"))
        .args(args)
        .envs(&app.env)
        .envs(storage_env(&app.config.storage))
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

#[tokio::test]
async fn dlq_list_shows_failed_jobs_and_replay_puts_them_back_to_work() {
    use std::time::Duration;

    use crate::worker_support::{depth, dlq, post_job, start_worker, wait_for_dlq};

    let app = spawn_app().await;
    // A worker whose limits refuse what the API accepted: the job fails at
    // once and leaves a DLQ record.
    let mut strict = app.config.clone();
    strict.limits.max_rows = 1;
    let worker = start_worker(&strict).await;
    let failed = post_job(&app, "xlsx", None).await;
    let kept = post_job(&app, "pdf", None).await;
    app.wait_for_status(&failed, "failed", Duration::from_secs(30))
        .await;
    app.wait_for_status(&kept, "failed", Duration::from_secs(30))
        .await;
    assert!(wait_for_dlq(&app.config, 2, Duration::from_secs(30)).await);
    worker.shutdown().await;

    let listed = artefatos(&app, &["dlq", "list", "--json"]);
    let entries: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{listed}");
    let entry = entries
        .iter()
        .find(|e| e["job_id"] == failed.as_str())
        .unwrap();
    assert_eq!(entry["format"], "xlsx");
    assert_eq!(entry["attempts"], 1);
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid_document"),
        "{entry}"
    );
    let table = artefatos(&app, &["dlq", "list"]);
    assert!(
        table.contains(&failed) && table.contains("2 record(s)"),
        "{table}"
    );
    assert_eq!(
        depth(&app.config, &dlq(&app.config)).await,
        2,
        "listing keeps the records"
    );

    // Replay one job to a worker with the normal limits.
    let worker = start_worker(&app.config).await;
    let out = artefatos(&app, &["dlq", "replay", "--job", &failed]);
    assert!(out.contains("1 replayed"), "{out}");
    let done = app
        .wait_for_status(&failed, "done", Duration::from_secs(30))
        .await;
    assert_eq!(done["attempts"], 1, "a fresh attempt budget: {done}");
    assert!(done["error"].is_null());
    assert_eq!(
        depth(&app.config, &dlq(&app.config)).await,
        1,
        "the other record stays"
    );
    assert_eq!(app.status(&kept).await["status"], "failed");

    artefatos(&app, &["dlq", "replay", "--all"]);
    app.wait_for_status(&kept, "done", Duration::from_secs(30))
        .await;
    assert_eq!(depth(&app.config, &dlq(&app.config)).await, 0);
    worker.shutdown().await;
}
