//! Worker processes (the real binary, `artefatos worker`) killed and stopped
//! under load: SIGKILL mid-job hands the job to another worker within the
//! lease; SIGTERM during a burst loses nothing; several processes share a queue.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use artefatos::Config;
use artefatos::config::StorageConfig;

use crate::support::{Options, TestApp, poll_until, spawn_app_with};
use crate::worker_support::{big_body, depth, dlq, post_job, wait_for_consumers};

const LEASE: &str = "3s";

/// A running `artefatos worker` process on the test app's namespace.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    fn spawn(config: &Config, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("log dir");
        let log = dir.path().join("worker.log");
        let file = std::fs::File::create(&log).expect("log file");
        let delays: Vec<String> = config
            .worker
            .retry_delays
            .iter()
            .map(|d| format!("{}ms", d.as_millis()))
            .collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_artefatos"));
        command
            .arg("worker")
            .env("DATABASE_URL", &config.database_url)
            .env("REDIS_URL", &config.redis_url)
            .env("AMQP_URL", &config.amqp_url)
            .env("ARTEFATOS_NAMESPACE", &config.namespace)
            .env("ARTEFATOS_LISTEN", "127.0.0.1:0")
            .env("ARTEFATOS_RETRY_DELAYS", delays.join(","))
            .env("ARTEFATOS_LEASE", LEASE)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(file.try_clone().expect("log file"));
        if let StorageConfig::S3(s3) = &config.storage {
            command
                .env("S3_ENDPOINT", s3.endpoint.clone().unwrap_or_default())
                .env("S3_BUCKET", &s3.bucket)
                .env("AWS_REGION", &s3.region)
                .env(
                    "AWS_ACCESS_KEY_ID",
                    s3.access_key_id.clone().unwrap_or_default(),
                )
                .env(
                    "AWS_SECRET_ACCESS_KEY",
                    s3.secret_access_key.clone().unwrap_or_default(),
                );
        }
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("artefatos worker starts");
        WorkerProcess {
            child,
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The prefix of the lease owner names this process writes.
    fn owner_prefix(&self) -> String {
        format!("worker-{}-", self.pid())
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit; its exit status, or `None` on timeout.
    async fn wait(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn count(app: &TestApp, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = $1")
        .bind(status)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_it_to_another_worker_within_the_lease() {
    let app = spawn_app_with(Options::default()).await;
    let first = WorkerProcess::spawn(&app.config, &[]);
    let job = post_job(&app, "xlsx", Some(big_body(60_000))).await;

    let prefix = first.owner_prefix();
    let pool = app.pool.clone();
    let claimed = poll_until(Duration::from_secs(60), || {
        let (pool, job, prefix) = (pool.clone(), job.clone(), prefix.clone());
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT lease_owner FROM jobs WHERE id = $1::uuid AND status = 'processing'",
            )
            .bind(&job)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .is_some_and(|owner| owner.starts_with(&prefix))
        }
    })
    .await;
    assert!(
        claimed,
        "first worker claimed the job; log:\n{}",
        first.log()
    );
    first.signal("KILL");
    let killed_at = Instant::now();

    let second = WorkerProcess::spawn(&app.config, &[]);
    let status = app
        .wait_for_status(&job, "done", Duration::from_secs(90))
        .await;
    let took = killed_at.elapsed();
    eprintln!("SIGKILL → done by another worker in {took:?} (lease {LEASE})");
    assert_eq!(
        status["attempts"], 2,
        "one dead attempt, one good: {status}"
    );
    let owner: String = sqlx::query_scalar("SELECT lease_owner FROM jobs WHERE id = $1::uuid")
        .bind(&job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        owner.starts_with(&second.owner_prefix()),
        "done by the second worker, not {owner}"
    );
    assert_eq!(depth(&app.config, &dlq(&app.config)).await, 0);
}

#[tokio::test]
async fn sigterm_during_a_burst_of_200_jobs_loses_none() {
    let app = spawn_app_with(Options::default()).await;
    let total = 200;
    for i in 0..total {
        let format = if i % 2 == 0 { "xlsx" } else { "pdf" };
        post_job(&app, format, None).await;
    }
    // Everything is queued before the worker starts, so it is stopped mid-burst.
    let mut first = WorkerProcess::spawn(&app.config, &[("ARTEFATOS_SHUTDOWN_GRACE", "10s")]);
    assert!(
        poll_until(Duration::from_secs(60), || async {
            count(&app, "done").await >= 10
        })
        .await,
        "first worker works; log:\n{}",
        first.log()
    );
    first.signal("TERM");
    let exit = first.wait(Duration::from_secs(30)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "graceful exit ({exit:?}); log:\n{}",
        first.log()
    );
    let done_at_stop = count(&app, "done").await;
    assert!(done_at_stop < total, "stopped mid-burst");

    let _second = WorkerProcess::spawn(&app.config, &[]);
    assert!(
        poll_until(Duration::from_secs(180), || async {
            count(&app, "done").await == total
        })
        .await,
        "all {total} done; done {}, failed {}",
        count(&app, "done").await,
        count(&app, "failed").await
    );
    let max_attempts: i32 = sqlx::query_scalar("SELECT max(attempts) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(max_attempts <= 2, "no job retried beyond its requeue");
    assert_eq!(depth(&app.config, &dlq(&app.config)).await, 0);
}

#[tokio::test]
async fn several_worker_processes_share_one_queue() {
    let app = spawn_app_with(Options::default()).await;
    let workers = [
        WorkerProcess::spawn(&app.config, &[]),
        WorkerProcess::spawn(&app.config, &[]),
    ];
    assert!(
        wait_for_consumers(&app.config, artefatos::render::Format::Pdf, 2).await,
        "both workers consume; logs:\n{}\n{}",
        workers[0].log(),
        workers[1].log()
    );
    let total = 40;
    for _ in 0..total {
        post_job(&app, "pdf", None).await;
    }
    assert!(
        poll_until(Duration::from_secs(120), || async {
            count(&app, "done").await == total
        })
        .await,
        "all done; logs:\n{}\n{}",
        workers[0].log(),
        workers[1].log()
    );
    for worker in &workers {
        let prefix = format!("{}%", worker.owner_prefix());
        let did: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE lease_owner LIKE $1")
            .bind(&prefix)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert!(did > 0, "worker {} did some jobs", worker.pid());
    }
    let max_attempts: i32 = sqlx::query_scalar("SELECT max(attempts) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(max_attempts, 1, "each job done once");
}
