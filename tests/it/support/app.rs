//! `spawn_app`: the real service on a random port, in its own database,
//! namespace (RabbitMQ exchanges and queues, Redis keys) and bucket, talking
//! to the real PostgreSQL, Redis, RabbitMQ and a private S3 server.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use artefatos::Config;
use artefatos::actors::Role;
use artefatos::app::Application;
use artefatos::config::StorageConfig;
use artefatos::storage::{db, keys};
use reqwest::Response;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::proxy::TcpProxy;
use super::s3::S3Server;

pub const POSTGRES: &str = "127.0.0.1:5432";
pub const REDIS: &str = "127.0.0.1:6379";
pub const RABBITMQ: &str = "127.0.0.1:5672";

/// How the test wants its app; every field has a sensible default.
#[derive(Default)]
pub struct Options {
    /// Route PostgreSQL / Redis / RabbitMQ through a proxy the test can cut.
    pub proxy_postgres: bool,
    pub proxy_redis: bool,
    pub proxy_rabbitmq: bool,
    /// Use the filesystem backend instead of a private S3 server.
    pub filesystem: bool,
    /// Put a proxy in front of the S3 server and make it the public
    /// endpoint (`ARTEFATOS_PUBLIC_S3_ENDPOINT`) presigned URLs name.
    pub public_s3_proxy: bool,
    /// Extra environment variables (e.g. limits) for `Config::from_vars`.
    pub vars: Vec<(&'static str, String)>,
    /// The actor tree the app runs: `Api` (the outbox relay, as `artefatos
    /// api`) unless the test wants the workers in the same process.
    pub role: Option<Role>,
}

/// A running app and everything a test needs to talk to it and look behind it.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    /// The bearer secret of the test's client.
    pub api_key: String,
    pub client_id: Uuid,
    /// A direct pool on the test's database, to prove nothing was lost or doubled.
    pub pool: PgPool,
    pub config: Config,
    /// The variables the app's configuration was read from (storage aside),
    /// so a spawned `artefatos` process can be pointed at the same app.
    pub env: HashMap<String, String>,
    pub s3: Option<S3Server>,
    /// The public endpoint of the S3 server, when `Options::public_s3_proxy`.
    pub s3_public_proxy: Option<TcpProxy>,
    pub postgres_proxy: Option<TcpProxy>,
    pub redis_proxy: Option<TcpProxy>,
    pub rabbitmq_proxy: Option<TcpProxy>,
    _storage_dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// The app with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// The app with the given options.
pub async fn spawn_app_with(options: Options) -> TestApp {
    // Logs go through the test harness's capture: shown only for failures.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn")
            }),
        )
        .try_init();
    let id = Uuid::new_v4().simple().to_string();
    let database = format!("artefatos_t_{id}");

    let postgres_proxy = maybe_proxy(options.proxy_postgres, POSTGRES).await;
    let redis_proxy = maybe_proxy(options.proxy_redis, REDIS).await;
    let rabbitmq_proxy = maybe_proxy(options.proxy_rabbitmq, RABBITMQ).await;
    let via = |proxy: &Option<TcpProxy>, direct: &str| {
        proxy
            .as_ref()
            .map(|p| p.addr().to_string())
            .unwrap_or_else(|| direct.to_string())
    };
    let direct_db_url = format!("postgres://postgres@{POSTGRES}/{database}");

    let mut vars: HashMap<String, String> = HashMap::from([
        (
            "DATABASE_URL".into(),
            format!(
                "postgres://postgres@{}/{database}",
                via(&postgres_proxy, POSTGRES)
            ),
        ),
        (
            "REDIS_URL".into(),
            format!("redis://{}", via(&redis_proxy, REDIS)),
        ),
        (
            "AMQP_URL".into(),
            format!("amqp://guest:guest@{}/%2f", via(&rabbitmq_proxy, RABBITMQ)),
        ),
        ("ARTEFATOS_LISTEN".into(), "127.0.0.1:0".into()),
        ("ARTEFATOS_NAMESPACE".into(), format!("t{id}")),
        ("ARTEFATOS_RETRY_DELAYS".into(), "200ms,400ms,800ms".into()),
        // Tests run side by side against one PostgreSQL (100 connections).
        ("ARTEFATOS_DB_POOL_SIZE".into(), "6".into()),
    ]);
    for (name, value) in options.vars {
        vars.insert(name.to_string(), value);
    }
    let mut config = Config::from_vars(&vars).expect("test configuration");

    let mut s3_public_proxy = None;
    let (s3, storage_dir) = if options.filesystem {
        let dir = tempfile::tempdir().expect("storage dir");
        config.storage = StorageConfig::Filesystem {
            dir: dir.path().to_path_buf(),
        };
        (None, Some(dir))
    } else {
        let server = S3Server::start().await;
        config.storage = server.config();
        if options.public_s3_proxy
            && let StorageConfig::S3(s3) = &mut config.storage
        {
            let internal = s3.endpoint.as_deref().expect("endpoint");
            let proxy = TcpProxy::start(
                internal
                    .trim_start_matches("http://")
                    .parse()
                    .expect("s3 address"),
            )
            .await;
            s3.public_endpoint = Some(format!("http://{}", proxy.addr()));
            s3_public_proxy = Some(proxy);
        }
        (Some(server), None)
    };

    let app = Application::build(config.clone())
        .await
        .expect("app builds")
        .start_actors(options.role.unwrap_or(Role::Api))
        .await
        .expect("actor tree starts");
    let port = app.port();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = app
            .serve(async {
                let _ = stopped.await;
            })
            .await;
    });

    let pool = db::connect(&direct_db_url, 3).await.expect("test pool");
    let key = keys::create(&pool, &format!("client-{id}"))
        .await
        .expect("api key");

    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client"),
        api_key: key.secret,
        client_id: key.client_id,
        pool,
        config,
        env: vars,
        s3,
        s3_public_proxy,
        postgres_proxy,
        redis_proxy,
        rabbitmq_proxy,
        _storage_dir: storage_dir,
        stop: Some(stop),
        server: Some(server),
    }
}

async fn maybe_proxy(wanted: bool, target: &str) -> Option<TcpProxy> {
    if wanted {
        Some(TcpProxy::start(target.parse().expect("service address")).await)
    } else {
        None
    }
}

impl TestApp {
    /// A new API key for another client of the same app.
    pub async fn other_client_key(&self) -> String {
        let name = format!("other-{}", Uuid::new_v4().simple());
        keys::create(&self.pool, &name)
            .await
            .expect("api key")
            .secret
    }

    /// `POST /generate` with this app's key.
    pub async fn generate(&self, body: &Value) -> Response {
        self.generate_as(&self.api_key, body).await
    }

    /// `POST /generate` with another key.
    pub async fn generate_as(&self, key: &str, body: &Value) -> Response {
        self.http
            .post(format!("{}/generate", self.address))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("POST /generate")
    }

    /// `GET` a path with this app's key.
    pub async fn get(&self, path: &str) -> Response {
        self.get_as(&self.api_key, path).await
    }

    /// `GET` a path with another key.
    pub async fn get_as(&self, key: &str, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.address))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET")
    }

    /// `GET /download/{id}` asking for JSON: the URL and its expiry.
    pub async fn download_json(&self, job_id: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/download/{job_id}", self.address))
            .bearer_auth(&self.api_key)
            .header("accept", "application/json")
            .send()
            .await
            .expect("GET /download");
        assert_eq!(response.status(), 200, "download of {job_id}");
        response.json().await.expect("download JSON")
    }

    /// The status document of a job.
    pub async fn status(&self, job_id: &str) -> Value {
        let response = self.get(&format!("/status/{job_id}")).await;
        assert_eq!(response.status(), 200, "status of {job_id}");
        response.json().await.expect("status JSON")
    }

    /// Polls `GET /status` until the job reaches `wanted` or `deadline` passes.
    pub async fn wait_for_status(&self, job_id: &str, wanted: &str, deadline: Duration) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let last = self.status(job_id).await;
            if last["status"] == wanted {
                return last;
            }
            assert!(
                Instant::now() < until,
                "job {job_id} never became {wanted}; last status {last}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// How many job rows the test's database holds.
    pub async fn job_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&self.pool)
            .await
            .expect("count jobs")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Re-checks `condition` every 25 ms until it holds or `deadline` passes;
/// how tests wait for something asynchronous without sleeping blindly.
pub async fn poll_until<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A small valid request body for `format`, with `key` as idempotency key.
pub fn generate_body(format: &str, key: &str) -> Value {
    json!({
        "format": format,
        "idempotency_key": key,
        "filename": "Vendas Q3",
        "document": sample_document(),
    })
}

/// The document of the example.
pub fn sample_document() -> Value {
    json!({
        "title": "Vendas Q3",
        "locale": "pt-BR",
        "sheets": [{
            "name": "Vendas",
            "columns": [
                {"title": "Data", "type": "date"},
                {"title": "Cliente", "type": "text"},
                {"title": "Valor", "type": "number", "format": "#,##0.00"},
                {"title": "Qtd", "type": "integer"},
                {"title": "Pago", "type": "boolean"}
            ],
            "rows": [
                ["2026-07-01", "Açaí Ltda", 1234.5, 3, true],
                ["2026-07-02", "São Paulo SA", 99.9, 1, false]
            ],
            "totals": {"Valor": "sum", "Qtd": "sum"}
        }],
        "pdf": {"page_size": "A4", "orientation": "portrait"}
    })
}
