//! The scale-out proof of issue 5: 2,000 jobs through nginx in front of 2 API
//! processes and 3 worker processes (`deploy/local/cluster.sh`), while every API
//! and every worker is restarted in turn; no client request fails, every job is
//! `done` exactly once and no artifact is written twice.
//!
//! Its own test binary, so CI can run it alone:
//! `cargo test --all-features --test scale -- --nocapture` (it prints its figures).
//! `SCALE_JOBS` changes the job count; `ARTEFATOS_BIN` runs another build of the
//! binary (e.g. target/release/artefatos for the README's figures).

#[allow(dead_code, unused_imports)]
#[path = "it/support/mod.rs"]
mod support;

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use artefatos::Config;
use artefatos::config::StorageConfig;
use artefatos::storage::queue::{self, Topology};
use artefatos::storage::{db, keys};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use support::poll_until;
use support::s3::{S3Server, storage_env};

/// Jobs driven through nginx (override with `SCALE_JOBS`).
const DEFAULT_JOBS: usize = 2_000;
/// Clients posting jobs at the same time.
const SUBMITTERS: usize = 16;
/// Clients polling statuses and downloading at the same time.
const CHECKERS: usize = 8;
/// How often one job's status is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The whole run (submit, restarts, drain) must finish within this.
const RUN_DEADLINE: Duration = Duration::from_secs(240);
/// Attempts of one client request (the first try included) before it counts as failed.
const MAX_TRIES: u32 = 20;
/// Pause before a client retries when the server names none (Retry-After).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Processes restarted one at a time while the load runs, in this order.
const RESTARTS: [&str; 5] = ["api-1", "worker-1", "api-2", "worker-2", "worker-3"];
/// How far a file's mtime (the kernel's coarse clock) may trail real time.
const COARSE_CLOCK: chrono::TimeDelta = chrono::TimeDelta::milliseconds(10);
/// Drain grace of every process: short, as the documents are small.
const SHUTDOWN_GRACE: &str = "10s";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_jobs_through_nginx_survive_a_rolling_restart_of_every_process() {
    let total: usize = std::env::var("SCALE_JOBS")
        .ok()
        .map(|n| n.parse().expect("SCALE_JOBS is a number"))
        .unwrap_or(DEFAULT_JOBS);
    let nginx = find_nginx();
    let s3 = S3Server::start().await;
    let storage = s3.config();
    let mut cluster = Cluster::new(&storage, &nginx);
    cluster.start().await;

    let pool = db::connect(&cluster.database_url, 4)
        .await
        .expect("test pool");
    let key = keys::create(&pool, &format!("scale-{}", Uuid::new_v4().simple()))
        .await
        .expect("api key");
    let load = Arc::new(Load::new(cluster.base_url(), key.secret.clone(), total));

    // The load: submitters post, checkers poll, download and verify.
    let started = Instant::now();
    let (restarted_tx, restarted_rx) = watch::channel(0usize);
    let mut clients = Vec::new();
    for _ in 0..SUBMITTERS {
        let (load, restarted) = (load.clone(), restarted_rx.clone());
        clients.push(tokio::spawn(
            async move { load.submit_loop(restarted).await },
        ));
    }
    for _ in 0..CHECKERS {
        let load = load.clone();
        clients.push(tokio::spawn(async move { load.check_loop().await }));
    }

    // The rolling restart: restart k starts a few jobs into wave k, and wave
    // k + 1 is not posted before it finished, so every restart meets posts,
    // polls and rendering whatever the machine's speed.
    let mut restarts = Vec::new();
    for (k, name) in RESTARTS.iter().enumerate() {
        let wave = wave_start(k + 2, total) - wave_start(k + 1, total);
        let boundary = wave_start(k + 1, total) + (wave / 4).min(20);
        let left = load.deadline.saturating_duration_since(Instant::now());
        let reached = poll_until(left, || async {
            load.accepted.load(Ordering::SeqCst) >= boundary || load.fatal_error().is_some()
        })
        .await;
        assert!(reached && load.fatal_error().is_none(), "{}", load.report());
        let in_flight =
            load.accepted.load(Ordering::SeqCst) - load.completed.load(Ordering::SeqCst);
        let took = cluster.restart_one(name).await;
        eprintln!(
            "restarted {name} in {took:.1?} with {in_flight} jobs accepted and not yet verified"
        );
        restarts.push((name.to_string(), took, in_flight));
        restarted_tx.send_replace(k + 1);
    }

    for client in clients {
        client.await.expect("client task");
    }
    let elapsed = started.elapsed();
    if let Some(error) = load.fatal_error() {
        panic!("{error}\n{}\n{}", load.report(), cluster.log_tails());
    }
    if load.completed.load(Ordering::SeqCst) != total {
        panic!(
            "not every job verified within {RUN_DEADLINE:?}: {}\nunverified (API view vs PostgreSQL): {:#?}\n{}",
            load.report(),
            load.unverified(&pool).await,
            cluster.log_tails()
        );
    }

    let mut figures = Figures::new(&load, &restarts, started, elapsed);
    figures.nginx_retries = cluster.nginx_retries();
    verify_replays(&load).await;
    // Every process stops gracefully (exit within its grace), so the cluster
    // ends as cleanly as it was restarted.
    let stopping = Instant::now();
    cluster.stop().await;
    figures.stop = stopping.elapsed();
    cluster.assert_no_panics();

    let mut problems = verify_database(&pool, &load, total).await;
    problems.extend(verify_bucket(&pool, &s3, &storage, total).await);
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(50).collect();
        panic!(
            "{} problems behind the API, e.g.:\n{shown:#?}\n{}",
            problems.len(),
            cluster.log_tails()
        );
    }
    verify_queues(&cluster.config, total).await;
    figures.print();
}

// ---------------------------------------------------------------------------
// The cluster

/// `deploy/local/cluster.sh` in a private directory, namespace, database and
/// bucket, on free ports; stopped when dropped (e.g. by a failed assertion).
struct Cluster {
    script: PathBuf,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    port: u16,
    database_url: String,
    config: Config,
    running: bool,
}

impl Cluster {
    fn new(storage: &StorageConfig, nginx: &Path) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let dir = tempfile::Builder::new()
            .prefix("artefatos-scale-")
            .tempdir()
            .expect("cluster dir");
        let port = free_port_block();
        let database_url = format!("postgres://postgres@127.0.0.1:5432/artefatos_t_{id}");
        let mut env: Vec<(String, String)> = vec![
            (
                "ARTEFATOS_BIN".into(),
                binary(dir.path()).display().to_string(),
            ),
            ("CLUSTER_DIR".into(), dir.path().display().to_string()),
            ("CLUSTER_PORT".into(), port.to_string()),
            ("NGINX".into(), nginx.display().to_string()),
            ("DATABASE_URL".into(), database_url.clone()),
            ("REDIS_URL".into(), "redis://127.0.0.1:6379".into()),
            (
                "AMQP_URL".into(),
                "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            ),
            ("ARTEFATOS_NAMESPACE".into(), format!("t{id}")),
            ("ARTEFATOS_SHUTDOWN_GRACE".into(), SHUTDOWN_GRACE.into()),
            // Five processes on one PostgreSQL with 100 connections.
            ("ARTEFATOS_DB_POOL_SIZE".into(), "10".into()),
            // Room for a worker's worst-case stop (grace, then consumer call
            // timeouts and the tree's join) before cluster.sh resorts to SIGKILL.
            ("CLUSTER_STOP_TIMEOUT".into(), "45".into()),
            ("ARTEFATOS_LOG_FORMAT".into(), "text".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        env.extend(
            storage_env(storage)
                .into_iter()
                .map(|(name, value)| (name.to_string(), value)),
        );
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let mut config = Config::from_vars(&vars).expect("cluster configuration");
        config.storage = storage.clone();
        Cluster {
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/cluster.sh"),
            env,
            dir,
            port,
            database_url,
            config,
            running: false,
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(&self.script)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    async fn run(&self, args: &[&str]) {
        let output = self
            .command(args)
            .output()
            .await
            .expect("bash runs cluster.sh");
        assert!(
            output.status.success(),
            "cluster.sh {} failed ({}):\n{}{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tails()
        );
    }

    async fn start(&mut self) {
        self.running = true;
        self.run(&["start"]).await;
    }

    /// `restart-one NAME`: SIGTERM, wait for the exit, start, wait ready (and
    /// for an API, until nginx routes to it again). How long that took.
    async fn restart_one(&self, name: &str) -> Duration {
        let started = Instant::now();
        self.run(&["restart-one", name]).await;
        started.elapsed()
    }

    async fn stop(&mut self) {
        self.run(&["stop"]).await;
        self.running = false;
    }

    fn logs(&self) -> Vec<(String, String)> {
        let mut logs: Vec<(String, String)> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        logs.sort();
        logs
    }

    /// The last lines of every process's log, for failure messages.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (name, text) in self.logs() {
            if name == "nginx.log" {
                continue; // the access log: one line per request
            }
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} (last 40 lines)\n"));
            for line in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Upstream attempts nginx logged as failed (refused, or closed before a
    /// response): each one it retried on the other API, unseen by the client.
    fn nginx_retries(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("nginx.error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.contains("[error]")
                    && (line.contains("while connecting to upstream")
                        || line.contains("prematurely closed connection"))
            })
            .count()
    }

    fn assert_no_panics(&self) {
        for (name, text) in self.logs() {
            assert!(!text.contains("panicked"), "{name} logged a panic:\n{text}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new("bash")
                .arg(&self.script)
                .arg("stop")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The binary the cluster runs: `$ARTEFATOS_BIN`, else a private copy of the
/// one cargo built for this test (the shared target dir's copy may be
/// replaced by another build while the test runs).
fn binary(dir: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os("ARTEFATOS_BIN") {
        return PathBuf::from(path);
    }
    let copy = dir.join("artefatos");
    std::fs::copy(env!("CARGO_BIN_EXE_artefatos"), &copy).expect("copy of the artefatos binary");
    copy
}

/// `$NGINX`, else nginx on PATH, else Debian's /usr/sbin/nginx; missing fails the test.
fn find_nginx() -> PathBuf {
    let candidates = std::env::var_os("NGINX")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
                .map(|dir| dir.join("nginx")),
        )
        .chain([PathBuf::from("/usr/sbin/nginx")]);
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("nginx not found: apt-get install nginx (deploy/validate.sh does it in CI)");
}

/// A base port P such that P (nginx), P+1, P+2 (APIs) and P+11..P+13
/// (workers) are free, below the kernel's ephemeral range so outgoing
/// connections do not take them meanwhile.
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base: u16 = rand::random_range(20_000..30_000);
        let free = [0, 1, 2, 11, 12, 13]
            .iter()
            .all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free block of loopback ports between 20000 and 30000");
}

// ---------------------------------------------------------------------------
// The load

/// What the clients know about one job.
#[derive(Clone)]
struct Accepted {
    index: usize,
    job_id: Uuid,
    format: &'static str,
    /// The highest status rank seen so far (statuses never go backwards).
    seen: u8,
    next_poll: Instant,
}

/// Shared state of the client tasks.
struct Load {
    http: reqwest::Client,
    base: String,
    api_key: String,
    total: usize,
    deadline: Instant,
    next_index: AtomicUsize,
    accepted: AtomicUsize,
    completed: AtomicUsize,
    retries_post: AtomicUsize,
    retries_get: AtomicUsize,
    replayed_on_first_try: AtomicUsize,
    requests: AtomicUsize,
    /// Jobs waiting to be polled, oldest poll first.
    pending: Mutex<VecDeque<Accepted>>,
    /// The job id the client got per job index.
    job_ids: std::sync::Mutex<HashMap<usize, Uuid>>,
    /// Indexes whose POST needed a retry.
    retried: std::sync::Mutex<Vec<usize>>,
    /// When the last job was accepted and the last verified.
    last_accepted: std::sync::Mutex<Option<Instant>>,
    fatal: std::sync::Mutex<Option<String>>,
}

impl Load {
    fn new(base: String, api_key: String, total: usize) -> Self {
        Load {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(SUBMITTERS + CHECKERS)
                .build()
                .expect("http client"),
            base,
            api_key,
            total,
            deadline: Instant::now() + RUN_DEADLINE,
            next_index: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            retries_post: AtomicUsize::new(0),
            retries_get: AtomicUsize::new(0),
            replayed_on_first_try: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            pending: Mutex::new(VecDeque::new()),
            job_ids: std::sync::Mutex::new(HashMap::new()),
            retried: std::sync::Mutex::new(Vec::new()),
            last_accepted: std::sync::Mutex::new(None),
            fatal: std::sync::Mutex::new(None),
        }
    }

    fn fail(&self, error: String) {
        let mut fatal = self.fatal.lock().unwrap();
        if fatal.is_none() {
            *fatal = Some(error);
        }
    }

    fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().unwrap().clone()
    }

    fn stopped(&self) -> bool {
        self.fatal_error().is_some() || Instant::now() >= self.deadline
    }

    fn report(&self) -> String {
        format!(
            "accepted {}/{}, verified {}, POST retries {}, GET retries {}, error: {:?}",
            self.accepted.load(Ordering::SeqCst),
            self.total,
            self.completed.load(Ordering::SeqCst),
            self.retries_post.load(Ordering::SeqCst),
            self.retries_get.load(Ordering::SeqCst),
            self.fatal_error()
        )
    }

    /// Up to 10 jobs still waiting for `done`: the status the API last showed
    /// next to PostgreSQL's row, to tell a stuck job from a stale cache.
    async fn unverified(&self, pool: &sqlx::PgPool) -> Vec<String> {
        let pending: Vec<Accepted> = self.pending.lock().await.iter().take(10).cloned().collect();
        let mut out = Vec::new();
        /// status, attempts, published_at, lease owner.
        type Row = (String, i32, Option<DateTime<Utc>>, Option<String>);
        for job in pending {
            let row: Option<Row> = sqlx::query_as(
                "SELECT status, attempts, published_at, lease_owner FROM jobs WHERE id = $1",
            )
            .bind(job.job_id)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
            out.push(format!(
                "job {} (scale-{}): API rank {} (0 queued, 1 processing); PostgreSQL (status, attempts, published_at, lease_owner) {row:?}",
                job.job_id, job.index, job.seen
            ));
        }
        out
    }

    /// Takes job indexes in order and posts each until it is accepted. Wave
    /// k + 1 waits until the k-th restart is done.
    async fn submit_loop(&self, mut restarted: watch::Receiver<usize>) {
        loop {
            let index = self.next_index.fetch_add(1, Ordering::SeqCst);
            if index >= self.total {
                return;
            }
            let wave = wave_of(index, self.total);
            while *restarted.borrow_and_update() + 1 < wave {
                if self.stopped() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), restarted.changed()).await;
            }
            if self.stopped() {
                return;
            }
            match self.post(index).await {
                Ok(job) => {
                    self.job_ids.lock().unwrap().insert(index, job.job_id);
                    self.pending.lock().await.push_back(job);
                    self.accepted.fetch_add(1, Ordering::SeqCst);
                    *self.last_accepted.lock().unwrap() = Some(Instant::now());
                }
                Err(error) => {
                    self.fail(error);
                    return;
                }
            }
        }
    }

    /// `POST /generate` for job `index`, retried with the same body (and so the
    /// same idempotency key) on a transport error, 409 in progress or a 5xx.
    async fn post(&self, index: usize) -> Result<Accepted, String> {
        let (format, body) = job_body(index);
        let mut last = String::new();
        for attempt in 0..MAX_TRIES {
            if attempt > 0 {
                self.retries_post.fetch_add(1, Ordering::SeqCst);
                self.retried.lock().unwrap().push(index);
            }
            self.requests.fetch_add(1, Ordering::SeqCst);
            let sent = self
                .http
                .post(format!("{}/generate", self.base))
                .bearer_auth(&self.api_key)
                .json(&body)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    last = format!("transport error: {error}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let replayed = response
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            let wait = retry_after(&response);
            let text = response.text().await.unwrap_or_default();
            match status {
                202 | 200 => {
                    let json: Value = serde_json::from_str(&text)
                        .map_err(|e| format!("job {index}: 202 body {text:?}: {e}"))?;
                    let job_id = json["job_id"]
                        .as_str()
                        .and_then(|id| Uuid::parse_str(id).ok())
                        .ok_or_else(|| format!("job {index}: no job_id in {text}"))?;
                    if replayed && attempt == 0 {
                        // nginx replayed the POST on the other API after the
                        // first one had acted on it: still one job.
                        self.replayed_on_first_try.fetch_add(1, Ordering::SeqCst);
                    }
                    return Ok(Accepted {
                        index,
                        job_id,
                        format,
                        seen: 0,
                        next_poll: Instant::now() + POLL_INTERVAL,
                    });
                }
                409 | 429 | 502 | 503 | 504 => {
                    last = format!("{status}: {text}");
                    tokio::time::sleep(wait.unwrap_or(RETRY_PAUSE)).await;
                }
                _ => {
                    return Err(format!(
                        "job {index}: POST /generate answered {status}: {text}"
                    ));
                }
            }
        }
        Err(format!(
            "job {index}: POST /generate failed {MAX_TRIES} times; last: {last}"
        ))
    }

    /// Polls accepted jobs round robin; a `done` job is downloaded and checked.
    async fn check_loop(&self) {
        while self.completed.load(Ordering::SeqCst) < self.total {
            if self.stopped() {
                return;
            }
            let next = self.pending.lock().await.pop_front();
            let Some(mut job) = next else {
                // Nothing accepted yet that is not being checked: look again soon.
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            };
            let now = Instant::now();
            if job.next_poll > now {
                tokio::time::sleep(job.next_poll - now).await;
            }
            match self.check(&mut job).await {
                Ok(true) => {
                    self.completed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(false) => {
                    job.next_poll = Instant::now() + POLL_INTERVAL;
                    self.pending.lock().await.push_back(job);
                }
                Err(error) => {
                    self.fail(error);
                    return;
                }
            }
        }
    }

    /// One status poll; `Ok(true)` once the job is done and its download verified.
    async fn check(&self, job: &mut Accepted) -> Result<bool, String> {
        let status = self.get(&format!("/status/{}", job.job_id)).await?;
        let status: Value = serde_json::from_slice(&status)
            .map_err(|e| format!("job {}: status is not JSON: {e}", job.job_id))?;
        let name = status["status"].as_str().unwrap_or_default();
        let rank = match name {
            "queued" => 0,
            "processing" => 1,
            "done" => 2,
            other => return Err(format!("job {} reached {other:?}: {status}", job.job_id)),
        };
        if rank < job.seen {
            return Err(format!(
                "job {} went backwards to {name}: {status}",
                job.job_id
            ));
        }
        job.seen = rank;
        if name != "done" {
            return Ok(false);
        }
        let bytes = self
            .get(&format!("/download/{}?mode=stream", job.job_id))
            .await?;
        verify_artifact(job, &bytes)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if status["artifact"]["sha256"] != sha.as_str() {
            return Err(format!(
                "job {}: the download's SHA-256 {sha} is not the artifact's: {status}",
                job.job_id
            ));
        }
        Ok(true)
    }

    /// A GET through nginx, retried on a transport error or a 5xx; the body of the 200.
    async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        let mut last = String::new();
        for attempt in 0..MAX_TRIES {
            if attempt > 0 {
                self.retries_get.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            self.requests.fetch_add(1, Ordering::SeqCst);
            let sent = self
                .http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.api_key)
                .send()
                .await;
            match sent {
                Ok(response) if response.status() == 200 => match response.bytes().await {
                    Ok(bytes) => return Ok(bytes.to_vec()),
                    Err(error) => last = format!("body: {error}"),
                },
                Ok(response) if response.status().is_server_error() => {
                    last = format!("{}", response.status());
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(format!("GET {path} answered {status}: {text}"));
                }
                Err(error) => last = format!("transport error: {error}"),
            }
        }
        Err(format!("GET {path} failed {MAX_TRIES} times; last: {last}"))
    }
}

/// The wave (1-based) a job index belongs to: the jobs are split into one
/// wave more than there are restarts.
fn wave_of(index: usize, total: usize) -> usize {
    index * (RESTARTS.len() + 1) / total + 1
}

/// The first index of wave `k` (1-based).
fn wave_start(k: usize, total: usize) -> usize {
    (0..total)
        .find(|&i| wave_of(i, total) >= k)
        .unwrap_or(total)
}

/// The request of job `index`: 2 of 3 XLSX, 1 of 3 PDF, each a small
/// document whose cells name the job, with the index as idempotency key.
fn job_body(index: usize) -> (&'static str, Value) {
    let format = if index % 3 == 2 { "pdf" } else { "xlsx" };
    let mut document = support::sample_document();
    document["title"] = json!(format!("Scale {index}"));
    document["sheets"][0]["rows"][0][1] = json!(marker(index));
    (
        format,
        json!({
            "format": format,
            "idempotency_key": format!("scale-{index}"),
            "filename": format!("scale-{index}"),
            "document": document,
        }),
    )
}

fn marker(index: usize) -> String {
    format!("Cliente {index}")
}

/// The downloaded bytes open as the job's format (an XLSX holding the job's own cell).
fn verify_artifact(job: &Accepted, bytes: &[u8]) -> Result<(), String> {
    match job.format {
        "xlsx" => {
            use calamine::Reader;
            let mut book = calamine::open_workbook_auto_from_rs(Cursor::new(bytes.to_vec()))
                .map_err(|e| format!("job {}: not an XLSX: {e}", job.job_id))?;
            let sheet = book
                .worksheet_range("Vendas")
                .map_err(|e| format!("job {}: no sheet Vendas: {e}", job.job_id))?;
            let wanted = marker(job.index);
            if !sheet
                .rows()
                .any(|row| row.iter().any(|c| c.to_string() == wanted))
            {
                return Err(format!("job {}: the XLSX lacks {wanted:?}", job.job_id));
            }
        }
        _ => {
            let pdf = lopdf::Document::load_mem(bytes)
                .map_err(|e| format!("job {}: not a PDF: {e}", job.job_id))?;
            if pdf.get_pages().is_empty() {
                return Err(format!("job {}: a PDF without pages", job.job_id));
            }
        }
    }
    Ok(())
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

// ---------------------------------------------------------------------------
// Behind the API: PostgreSQL, the bucket, the queues

/// One row per job, each `done` after exactly one claim, under the id the
/// client got. Every departure is listed, not just the first.
async fn verify_database(pool: &sqlx::PgPool, load: &Load, total: usize) -> Vec<String> {
    /// id, idempotency key, status, attempts, lease owner, error.
    type Row = (Uuid, String, String, i32, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, idempotency_key, status, attempts, lease_owner, error FROM jobs",
    )
    .fetch_all(pool)
    .await
    .expect("jobs");
    let mut problems = Vec::new();
    if rows.len() != total {
        problems.push(format!(
            "{} job rows for {total} idempotency keys",
            rows.len()
        ));
    }
    let job_ids = load.job_ids.lock().unwrap().clone();
    for (id, key, status, attempts, owner, error) in rows {
        let row = format!(
            "job {id} ({key}, {status}, attempts {attempts}, owner {owner:?}, error {error:?})"
        );
        if status != "done" {
            problems.push(format!("{row}: not done"));
        }
        // `attempts` counts claims, and a job is rendered only after a claim:
        // one claim = rendered once (no restart cut a render short).
        if attempts != 1 {
            problems.push(format!("{row}: claimed {attempts} times"));
        }
        let index = key
            .strip_prefix("scale-")
            .and_then(|i| i.parse::<usize>().ok());
        if index.and_then(|i| job_ids.get(&i)) != Some(&id) {
            problems.push(format!("{row}: the client got another job id for {key}"));
        }
    }
    problems
}

/// One object per job, each written once: its size and SHA-256 are the ones
/// committed with `done`, and it was last modified between the job's claim and
/// its `done` commit — an object written again later would be newer.
async fn verify_bucket(
    pool: &sqlx::PgPool,
    s3: &S3Server,
    storage: &StorageConfig,
    total: usize,
) -> Vec<String> {
    let StorageConfig::S3(config) = storage else {
        unreachable!("the scale test runs on S3")
    };
    let bucket = s3.root().join(&config.bucket);
    let mut problems = Vec::new();
    let objects = files(&bucket);
    if objects.len() != total {
        problems.push(format!(
            "{} objects in {} for {total} jobs",
            objects.len(),
            bucket.display()
        ));
    }
    type Row = (
        Uuid,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, artifact_key, artifact_size, artifact_sha256, started_at, finished_at FROM jobs",
    )
    .fetch_all(pool)
    .await
    .expect("artifacts");
    for (id, key, size, sha, started_at, finished_at) in rows {
        let (Some(key), Some(size), Some(sha), Some(started_at), Some(finished_at)) =
            (key, size, sha, started_at, finished_at)
        else {
            problems.push(format!("job {id}: no artifact recorded"));
            continue;
        };
        let path = bucket.join(&key);
        let (bytes, modified) = match std::fs::read(&path)
            .and_then(|bytes| Ok((bytes, std::fs::metadata(&path)?.modified()?)))
        {
            Ok((bytes, modified)) => (bytes, DateTime::<Utc>::from(modified)),
            Err(e) => {
                problems.push(format!("job {id}: object {}: {e}", path.display()));
                continue;
            }
        };
        if bytes.len() as i64 != size || hex::encode(Sha256::digest(&bytes)) != sha {
            problems.push(format!(
                "job {id}: the object is not the artifact committed with done"
            ));
        }
        // File times come from the kernel's coarse clock, up to a tick (≤ 10 ms)
        // behind PostgreSQL's now(): only the lower bound needs the slack.
        if !(started_at - COARSE_CLOCK <= modified && modified <= finished_at) {
            problems.push(format!(
                "job {id}: object written at {modified}, outside its claim {started_at} .. done {finished_at}"
            ));
        }
    }
    problems
}

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Nothing left in the work queues, nothing dead-lettered.
async fn verify_queues(config: &Config, total: usize) {
    let topology = Topology::new(config);
    let connection = queue::connect(&config.amqp_url).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let mut names: Vec<String> = ["xlsx", "pdf"]
        .iter()
        .map(|f| topology.work_queue(f.parse().expect("format")))
        .collect();
    names.push(topology.dlq());
    for name in names {
        let depth = queue::queue_depth(&channel, &name).await.expect("depth");
        assert_eq!(depth, 0, "{name} is empty after {total} jobs");
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Every POST that needed a retry, and every 100th job, sent once more after
/// the restarts: the same job, replayed (one key, one job, on either API).
async fn verify_replays(load: &Load) {
    let mut indexes = load.retried.lock().unwrap().clone();
    indexes.extend((0..load.total).step_by(100));
    indexes.sort_unstable();
    indexes.dedup();
    let job_ids = load.job_ids.lock().unwrap().clone();
    for index in indexes {
        let (_, body) = job_body(index);
        let response = load
            .http
            .post(format!("{}/generate", load.base))
            .bearer_auth(&load.api_key)
            .json(&body)
            .send()
            .await
            .expect("replay");
        assert!(response.status().is_success(), "replay of job {index}");
        assert_eq!(
            response
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap_or("")),
            Some("true"),
            "replay of job {index}"
        );
        let json: Value = response.json().await.expect("json");
        assert_eq!(
            json["job_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok()),
            job_ids.get(&index).copied(),
            "the key scale-{index} names one job"
        );
    }
}

// ---------------------------------------------------------------------------
// Figures

struct Figures {
    jobs: usize,
    elapsed: Duration,
    submit: Duration,
    drain: Duration,
    restarts: Vec<(String, Duration, usize)>,
    retries_post: usize,
    retries_get: usize,
    replayed: usize,
    requests: usize,
    /// Requests nginx sent to the other API after one failed (its error log).
    nginx_retries: usize,
    /// `cluster.sh stop` at the end: every process's graceful exit.
    stop: Duration,
}

impl Figures {
    fn new(
        load: &Load,
        restarts: &[(String, Duration, usize)],
        started: Instant,
        elapsed: Duration,
    ) -> Self {
        let last_accepted = load.last_accepted.lock().unwrap().unwrap_or(started);
        let submit = last_accepted - started;
        Figures {
            jobs: load.total,
            elapsed,
            submit,
            drain: elapsed.saturating_sub(submit),
            restarts: restarts.to_vec(),
            retries_post: load.retries_post.load(Ordering::SeqCst),
            retries_get: load.retries_get.load(Ordering::SeqCst),
            replayed: load.replayed_on_first_try.load(Ordering::SeqCst),
            requests: load.requests.load(Ordering::SeqCst),
            nginx_retries: 0,
            stop: Duration::ZERO,
        }
    }

    fn print(&self) {
        let restarts: Vec<String> = self
            .restarts
            .iter()
            .map(|(name, took, in_flight)| {
                format!("{name} {:.1}s ({in_flight} in flight)", took.as_secs_f64())
            })
            .collect();
        eprintln!(
            "SCALE FIGURES: {} jobs through nginx in {:.1}s = {:.1} jobs/s (submitted in {:.1}s, drained {:.1}s after the last was accepted); \
             {} restarts: {}; {} client requests, {} POST retries, {} GET retries, {} POSTs replayed by nginx on the other API; \
             {} requests moved by nginx to the other API after a refused or closed connection; 0 failed; \
             cluster stopped in {:.1}s",
            self.jobs,
            self.elapsed.as_secs_f64(),
            self.jobs as f64 / self.elapsed.as_secs_f64(),
            self.submit.as_secs_f64(),
            self.drain.as_secs_f64(),
            self.restarts.len(),
            restarts.join(", "),
            self.requests,
            self.retries_post,
            self.retries_get,
            self.replayed,
            self.nginx_retries,
            self.stop.as_secs_f64(),
        );
    }
}
