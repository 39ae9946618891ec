//! The one typed configuration, read from the environment once at start-up.
//!
//! Every default works on a development machine with PostgreSQL, Redis and
//! RabbitMQ on loopback, so `artefatos all` runs with no variable set. Nothing
//! else in the crate reads environment variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::render::{Format, Limits};

/// Why the configuration could not be built; names the offending variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {reason} (got {value:?})")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Where artifacts are kept.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    /// An S3 (or S3-compatible) bucket: the production backend.
    S3(S3Config),
    /// A local directory: the embedded default when no bucket is configured.
    /// Downloads are streamed by the service because there is nothing to presign.
    Filesystem { dir: PathBuf },
}

/// Connection details for an S3 bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    /// Custom endpoint (S3-compatible servers); path-style addressing is used when set.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Endpoint written into presigned URLs (`ARTEFATOS_PUBLIC_S3_ENDPOINT`)
    /// when clients reach the store under another address than the service
    /// does (an in-cluster `S3_ENDPOINT`); `None`: the URLs name `endpoint`.
    pub public_endpoint: Option<String>,
    /// Static credentials; when absent the AWS default provider chain is used
    /// (instance profile, IRSA, shared config).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// Downloads through CloudFront (`ARTEFATOS_DOWNLOAD_BASE_URL`): `GET
/// /download` redirects to a CloudFront signed URL (canned policy) under
/// `base_url` instead of a presigned S3 URL. Needs the S3 backend (the
/// bucket is the distribution's origin).
#[derive(Debug, Clone, PartialEq)]
pub struct CdnConfig {
    /// `https://dxxxx.cloudfront.net` (or a custom domain), without the key.
    pub base_url: String,
    /// The CloudFront public key's id (`ARTEFATOS_CLOUDFRONT_KEY_PAIR_ID`).
    pub key_pair_id: String,
    pub private_key: PrivateKeySource,
}

/// Where the CloudFront signing key (PEM, PKCS#1 or PKCS#8) comes from.
#[derive(Clone, PartialEq)]
pub enum PrivateKeySource {
    /// `ARTEFATOS_CLOUDFRONT_PRIVATE_KEY`: the PEM text itself.
    Pem(String),
    /// `ARTEFATOS_CLOUDFRONT_PRIVATE_KEY_FILE`: a file holding it (a mounted
    /// secret), read once at start-up.
    File(PathBuf),
}

/// The key never reaches a log through `{:?}` of the configuration.
impl std::fmt::Debug for PrivateKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivateKeySource::Pem(_) => f.write_str("Pem(<redacted>)"),
            PrivateKeySource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// RabbitMQ queue flavour: classic for one node, quorum for a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// Settings of the worker half (consumers, renderer pools, retries, janitor).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Formats this process consumes (`ARTEFATOS_WORKER_FORMATS`, default all).
    pub formats: Vec<Format>,
    /// Jobs in flight per format, whatever stage they are in (claim, render,
    /// upload, commit); also the consumer's prefetch. Most of them wait on
    /// I/O, so this is several times `renderers`.
    pub concurrency: usize,
    /// Renderers per format: the CPU stage, one per core by default.
    pub renderers: usize,
    /// Documents larger than this (JSON bytes) are big: rendered to a
    /// temporary file rather than memory, read from PostgreSQL apart from
    /// their claim, and never given every renderer of their format.
    pub big_document_bytes: usize,
    /// Delay of each retry queue; its length is the number of retries
    /// (default 1 s, 5 s, 30 s: four attempts in all).
    pub retry_delays: Vec<Duration>,
    /// A job not started within this time fails as `expired`.
    pub job_ttl: Duration,
    /// How long a claimed job belongs to its worker without a renewal.
    pub lease: Duration,
    /// How long in-flight jobs may run on after SIGTERM before they are requeued.
    pub shutdown_grace: Duration,
    /// Artifacts older than this are deleted by the janitor; downloads answer 410.
    pub retention: Duration,
    /// Final job rows are deleted this long after they finished (once their
    /// artifact is gone); the idempotency key then starts a new job.
    pub job_retention: Duration,
    /// A `failed` job keeps its document this long after it failed, so an
    /// operator can replay it from the DLQ; then the janitor drops it.
    pub dlq_replay_window: Duration,
    pub queue_type: QueueType,
    /// `x-delivery-limit` for quorum queues (RabbitMQ 4 defaults it to 20).
    pub delivery_limit: u32,
    /// Longest one render may take before it fails permanently (a document
    /// that takes this long would take as long on every retry).
    pub render_timeout: Duration,
}

/// Per-client limits of the API; a client's own limits (`artefatos keys
/// limits`) override `per_second` and `max_unfinished_jobs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// `POST /generate` requests per second per client (token bucket refill).
    pub per_second: u32,
    /// Requests a client may send at once above its rate (bucket size).
    pub burst: u32,
    /// Jobs of one client not yet `done` or `failed` (counted approximately).
    pub max_unfinished_jobs: u32,
    /// 401 answers one source address may get per `auth_failure_window`
    /// before every further request from it is answered 429.
    pub auth_failures: u32,
    pub auth_failure_window: Duration,
}

impl Config {
    /// The header naming a request's source address, if a trusted proxy
    /// sets it (`ARTEFATOS_CLIENT_ADDRESS_HEADER`).
    pub fn client_address_header(&self) -> Option<&str> {
        self.client_address_header.as_deref()
    }
}

/// The whole configuration of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub database_url: String,
    /// Most PostgreSQL connections this process opens.
    pub db_pool_size: u32,
    pub redis_url: String,
    pub amqp_url: String,
    pub listen: SocketAddr,
    /// Prefix of every RabbitMQ exchange and queue and every Redis key, so
    /// several deployments or test runs share one broker and one Redis.
    pub namespace: String,
    pub storage: StorageConfig,
    /// Lifetime of presigned download URLs.
    pub presign_ttl: Duration,
    /// CloudFront signed download URLs instead of presigned S3 ones.
    pub cdn: Option<CdnConfig>,
    /// Largest accepted request body, in bytes, as sent (compressed when the
    /// request has a `Content-Encoding`).
    pub max_body_bytes: usize,
    /// Largest accepted request body once decompressed
    /// (`ARTEFATOS_MAX_DOCUMENT_BYTES`): a compressed body is refused with
    /// 413 as soon as its inflated bytes pass it, so a decompression bomb
    /// costs at most this much memory.
    pub max_document_bytes: usize,
    /// Document limits checked before a job is accepted.
    pub limits: Limits,
    /// Request bodies larger than this (or of unknown length) are "large":
    /// each costs a few times its size in memory while it is parsed,
    /// validated and fingerprinted.
    pub large_body_bytes: usize,
    /// Most large bodies processed at once by this process; one more is
    /// refused with 503 `server_busy` before its body is read, so memory
    /// stays bounded whatever clients send.
    pub max_large_bodies_in_flight: usize,
    /// Longest wait for a request's header once its connection is ready for
    /// one (slowloris); the connection is closed past it. hyper runs this
    /// clock on idle keep-alive connections too, so the default stays above
    /// nginx's 60 s upstream keep-alive: a proxy never reuses a connection
    /// the API is closing.
    pub header_read_timeout: Duration,
    /// Longest time a request may take to produce its response head; past
    /// it the client gets 503 `request_timeout`.
    pub request_timeout: Duration,
    /// How long the idempotency key stays in Redis.
    pub idempotency_ttl: Duration,
    /// How long a status stays cached in Redis.
    pub status_cache_ttl: Duration,
    pub client_limits: ClientLimits,
    /// Behind a proxy every request comes from the proxy's address: this
    /// header (e.g. `x-forwarded-for`, its last entry, the one the nearest
    /// proxy appended) names the client instead. Unset: the peer address.
    pub client_address_header: Option<String>,
    pub worker: WorkerConfig,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Builds a configuration from explicit variables; `from_env` and tests share it.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
        let or = |name: &str, default: &str| get(name).unwrap_or_else(|| default.to_string());

        let storage = match get("S3_BUCKET") {
            Some(bucket) => StorageConfig::S3(S3Config {
                endpoint: get("S3_ENDPOINT"),
                public_endpoint: get("ARTEFATOS_PUBLIC_S3_ENDPOINT"),
                bucket,
                region: or("AWS_REGION", "us-east-1"),
                access_key_id: get("AWS_ACCESS_KEY_ID"),
                secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            }),
            None => StorageConfig::Filesystem {
                dir: PathBuf::from(or("ARTEFATOS_STORAGE_DIR", ".artefatos/artifacts")),
            },
        };

        let cdn = match get("ARTEFATOS_DOWNLOAD_BASE_URL") {
            None => None,
            Some(base_url) => {
                let invalid = |name: &'static str, reason: &str| ConfigError::Invalid {
                    name,
                    value: base_url.clone(),
                    reason: reason.into(),
                };
                if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
                    return Err(invalid(
                        "ARTEFATOS_DOWNLOAD_BASE_URL",
                        "expected an absolute http(s) URL",
                    ));
                }
                let private_key = match (
                    get("ARTEFATOS_CLOUDFRONT_PRIVATE_KEY"),
                    get("ARTEFATOS_CLOUDFRONT_PRIVATE_KEY_FILE"),
                ) {
                    (Some(pem), None) => PrivateKeySource::Pem(pem),
                    (None, Some(path)) => PrivateKeySource::File(PathBuf::from(path)),
                    _ => {
                        return Err(invalid(
                            "ARTEFATOS_CLOUDFRONT_PRIVATE_KEY",
                            "set exactly one of ARTEFATOS_CLOUDFRONT_PRIVATE_KEY and \
                             ARTEFATOS_CLOUDFRONT_PRIVATE_KEY_FILE with ARTEFATOS_DOWNLOAD_BASE_URL",
                        ));
                    }
                };
                let key_pair_id = get("ARTEFATOS_CLOUDFRONT_KEY_PAIR_ID").ok_or_else(|| {
                    invalid(
                        "ARTEFATOS_CLOUDFRONT_KEY_PAIR_ID",
                        "required with ARTEFATOS_DOWNLOAD_BASE_URL",
                    )
                })?;
                Some(CdnConfig {
                    base_url: base_url.trim_end_matches('/').to_string(),
                    key_pair_id,
                    private_key,
                })
            }
        };

        let defaults = Limits::default();
        let limits = Limits {
            max_sheets: parse(vars, "ARTEFATOS_MAX_SHEETS", defaults.max_sheets)?,
            max_rows: parse(vars, "ARTEFATOS_MAX_ROWS", defaults.max_rows)?,
            max_columns: parse(vars, "ARTEFATOS_MAX_COLUMNS", defaults.max_columns)?,
            max_cell_chars: parse(vars, "ARTEFATOS_MAX_CELL_CHARS", defaults.max_cell_chars)?,
        };

        let formats = match get("ARTEFATOS_WORKER_FORMATS") {
            None => Format::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|f| {
                    f.trim()
                        .parse::<Format>()
                        .map_err(|_| ConfigError::Invalid {
                            name: "ARTEFATOS_WORKER_FORMATS",
                            value: list.clone(),
                            reason: "expected a comma-separated list of xlsx, pdf".into(),
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let retry_delays = match get("ARTEFATOS_RETRY_DELAYS") {
            None => vec![secs(1), secs(5), secs(30)],
            Some(list) => list
                .split(',')
                .map(|d| parse_duration(d.trim()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ConfigError::Invalid {
                    name: "ARTEFATOS_RETRY_DELAYS",
                    value: list.clone(),
                    reason: "expected durations such as 1s,5s,30s".into(),
                })?,
        };
        // Rendering is the only stage that needs a CPU: one renderer per core,
        // and at least two, so a big document never holds every renderer.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let renderers: usize = parse(vars, "ARTEFATOS_RENDERERS", cores.max(2))?;
        let queue_type = match or("ARTEFATOS_QUEUE_TYPE", "classic").as_str() {
            "classic" => QueueType::Classic,
            "quorum" => QueueType::Quorum,
            other => {
                return Err(ConfigError::Invalid {
                    name: "ARTEFATOS_QUEUE_TYPE",
                    value: other.into(),
                    reason: "expected classic or quorum".into(),
                });
            }
        };

        Ok(Config {
            database_url: or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/artefatos",
            ),
            db_pool_size: parse(vars, "ARTEFATOS_DB_POOL_SIZE", 32)?,
            redis_url: or("REDIS_URL", "redis://127.0.0.1:6379"),
            amqp_url: or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            listen: parse(
                vars,
                "ARTEFATOS_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            namespace: or("ARTEFATOS_NAMESPACE", "artefatos"),
            storage,
            presign_ttl: duration(vars, "ARTEFATOS_PRESIGN_TTL", secs(15 * 60))?,
            cdn,
            max_body_bytes: parse(vars, "ARTEFATOS_MAX_BODY_BYTES", 16 * 1024 * 1024)?,
            max_document_bytes: parse(vars, "ARTEFATOS_MAX_DOCUMENT_BYTES", 512 * 1024 * 1024)?,
            limits,
            large_body_bytes: parse(vars, "ARTEFATOS_LARGE_BODY_BYTES", 1024 * 1024)?,
            max_large_bodies_in_flight: parse(vars, "ARTEFATOS_MAX_LARGE_BODIES_IN_FLIGHT", 4)?,
            header_read_timeout: duration(vars, "ARTEFATOS_HEADER_READ_TIMEOUT", secs(75))?,
            request_timeout: duration(vars, "ARTEFATOS_REQUEST_TIMEOUT", secs(120))?,
            idempotency_ttl: duration(vars, "ARTEFATOS_IDEMPOTENCY_TTL", secs(3600))?,
            status_cache_ttl: duration(vars, "ARTEFATOS_STATUS_CACHE_TTL", secs(300))?,
            client_limits: ClientLimits {
                per_second: positive(vars, "ARTEFATOS_RATE_LIMIT", 1000)?,
                burst: positive(vars, "ARTEFATOS_RATE_BURST", 2000)?,
                max_unfinished_jobs: positive(vars, "ARTEFATOS_MAX_UNFINISHED_JOBS", 10_000)?,
                auth_failures: positive(vars, "ARTEFATOS_AUTH_FAILURE_LIMIT", 20)?,
                auth_failure_window: duration(vars, "ARTEFATOS_AUTH_FAILURE_WINDOW", secs(60))?,
            },
            client_address_header: get("ARTEFATOS_CLIENT_ADDRESS_HEADER")
                .map(|h| h.trim().to_ascii_lowercase()),
            worker: WorkerConfig {
                formats,
                concurrency: parse(vars, "ARTEFATOS_WORKER_CONCURRENCY", 16 * renderers)?,
                renderers,
                big_document_bytes: parse(vars, "ARTEFATOS_BIG_DOCUMENT_BYTES", 1024 * 1024)?,
                retry_delays,
                job_ttl: duration(vars, "ARTEFATOS_JOB_TTL", secs(24 * 3600))?,
                lease: duration(vars, "ARTEFATOS_LEASE", secs(20))?,
                shutdown_grace: duration(vars, "ARTEFATOS_SHUTDOWN_GRACE", secs(30))?,
                retention: duration(vars, "ARTEFATOS_RETENTION", secs(7 * 24 * 3600))?,
                job_retention: duration(vars, "ARTEFATOS_JOB_RETENTION", secs(7 * 24 * 3600))?,
                dlq_replay_window: duration(
                    vars,
                    "ARTEFATOS_DLQ_REPLAY_WINDOW",
                    secs(3 * 24 * 3600),
                )?,
                queue_type,
                delivery_limit: parse(vars, "ARTEFATOS_DELIVERY_LIMIT", 10)?,
                render_timeout: duration(vars, "ARTEFATOS_RENDER_TIMEOUT", secs(10 * 60))?,
            },
        })
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn parse<T: FromStr>(
    vars: &HashMap<String, String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match vars.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(value) => value.parse().map_err(|_| ConfigError::Invalid {
            name,
            value: value.clone(),
            reason: format!("not a valid {}", std::any::type_name::<T>()),
        }),
    }
}

/// A count that must be at least 1 (a zero limit would refuse everything).
fn positive(
    vars: &HashMap<String, String>,
    name: &'static str,
    default: u32,
) -> Result<u32, ConfigError> {
    let value = parse(vars, name, default)?;
    if value == 0 {
        return Err(ConfigError::Invalid {
            name,
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
}

fn duration(
    vars: &HashMap<String, String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match vars.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(value) => parse_duration(value).ok_or_else(|| ConfigError::Invalid {
            name,
            value: value.clone(),
            reason: "expected a duration such as 500ms, 30s, 15m, 24h or 7d".into(),
        }),
    }
}

/// Parses `500ms`, `30s`, `15m`, `24h`, `7d`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_any_variable() {
        let config = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(config.namespace, "artefatos");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(matches!(config.storage, StorageConfig::Filesystem { .. }));
        assert_eq!(config.worker.retry_delays.len(), 3);
        // Renderers follow the machine; attempts in flight follow renderers.
        assert!(config.worker.renderers >= 2);
        assert_eq!(config.worker.concurrency, 16 * config.worker.renderers);
        assert_eq!(config.worker.render_timeout, secs(600));
        let vars = HashMap::from([("ARTEFATOS_RENDER_TIMEOUT".to_string(), "90s".to_string())]);
        let config = Config::from_vars(&vars).unwrap();
        assert_eq!(config.worker.render_timeout, secs(90));
    }

    #[test]
    fn a_bucket_selects_s3_and_bad_values_name_their_variable() {
        let mut vars = HashMap::new();
        vars.insert("S3_BUCKET".to_string(), "b".to_string());
        vars.insert(
            "S3_ENDPOINT".to_string(),
            "http://127.0.0.1:9000".to_string(),
        );
        let config = Config::from_vars(&vars).unwrap();
        assert!(matches!(config.storage, StorageConfig::S3(ref s3) if s3.bucket == "b"));

        vars.insert("ARTEFATOS_PRESIGN_TTL".to_string(), "soon".to_string());
        let err = Config::from_vars(&vars).unwrap_err().to_string();
        assert!(err.starts_with("ARTEFATOS_PRESIGN_TTL"), "{err}");
    }

    #[test]
    fn a_zero_limit_is_refused() {
        let vars = HashMap::from([("ARTEFATOS_RATE_LIMIT".to_string(), "0".to_string())]);
        let err = Config::from_vars(&vars).unwrap_err().to_string();
        assert!(err.starts_with("ARTEFATOS_RATE_LIMIT"), "{err}");
    }

    #[test]
    fn a_download_base_url_needs_a_key_pair_id_and_exactly_one_key() {
        let mut vars = HashMap::from([
            (
                "ARTEFATOS_DOWNLOAD_BASE_URL".to_string(),
                "https://d.example/".to_string(),
            ),
            (
                "ARTEFATOS_CLOUDFRONT_PRIVATE_KEY".to_string(),
                "PEM".to_string(),
            ),
        ]);
        let err = Config::from_vars(&vars).unwrap_err().to_string();
        assert!(err.starts_with("ARTEFATOS_CLOUDFRONT_KEY_PAIR_ID"), "{err}");
        vars.insert("ARTEFATOS_CLOUDFRONT_KEY_PAIR_ID".into(), "K1".into());
        let cdn = Config::from_vars(&vars).unwrap().cdn.unwrap();
        assert_eq!(cdn.base_url, "https://d.example");
        assert_eq!(format!("{:?}", cdn.private_key), "Pem(<redacted>)");
        vars.insert("ARTEFATOS_CLOUDFRONT_PRIVATE_KEY_FILE".into(), "/k".into());
        let err = Config::from_vars(&vars).unwrap_err().to_string();
        assert!(err.starts_with("ARTEFATOS_CLOUDFRONT_PRIVATE_KEY"), "{err}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("15m"), Some(secs(900)));
        assert_eq!(parse_duration("7d"), Some(secs(7 * 86_400)));
        assert_eq!(parse_duration("3"), Some(secs(3)));
        assert_eq!(parse_duration("x"), None);
    }
}
