//! Redis as a cache in front of PostgreSQL: idempotency reservations, job
//! statuses and presigned download URLs, all under the namespace prefix.
//!
//! Redis is never the source of truth. Every operation has a short deadline,
//! and after a failure the cache declares itself down for [`COOL_OFF`] and
//! answers `Unavailable` at once, so a Redis outage costs requests nothing but
//! a PostgreSQL read instead of a timeout each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bb8_redis::RedisConnectionManager;
use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisResult, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::metrics::CACHE_LOOKUPS;
use crate::storage::batch::{self, Held};
use crate::storage::jobs::JobView;

/// How long the cache stays "down" after a failed operation.
pub const COOL_OFF: Duration = Duration::from_secs(2);
/// Deadline of one Redis operation, connection included.
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// Most commands one coalesced pipeline carries.
const MAX_BATCH: usize = 512;
/// One pipeline at a time, on one connection: Redis then applies writes in
/// the order they were sent, even one whose caller gave up waiting. Two in
/// flight on two sockets let a timed-out `processing` land after its job's
/// `done` (seen in the scale test).
const CONCURRENT_BATCHES: usize = 1;
/// How long a request may hold an idempotency key before anyone may retry it:
/// a crashed API process must not block its key for the whole idempotency TTL.
pub const PENDING_TTL: Duration = Duration::from_secs(30);
/// Presigned URLs are dropped from the cache this long before they expire, so
/// a client never receives a URL about to die.
pub const URL_MARGIN: Duration = Duration::from_secs(60);

/// Failures of the cache; callers fall back to PostgreSQL on any of them.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis url: {0}")]
    Url(redis::RedisError),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt cache entry: {0}")]
    Corrupt(String),
}

/// What Redis knows about an idempotency key held by someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A request with this fingerprint is creating the job right now.
    Pending { fingerprint: String },
    /// The key already produced this job.
    Job { job_id: Uuid, fingerprint: String },
}

/// The outcome of trying to take an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// This request holds the key and must create the job.
    Reserved,
    Held(Holder),
}

/// A cached presigned URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// One caller's commands and where their replies go: the collector answers
/// with one result per command, or with why the whole round trip failed.
type Request = (Vec<redis::Cmd>, Reply);
type Reply = oneshot::Sender<Result<Vec<RedisResult<Value>>, String>>;

/// Handle to the Redis cache; cheap to clone.
///
/// Every command goes through one collector that sends whatever concurrent
/// requests have gathered as a single pipeline: on a busy API a status read
/// then costs a share of a round trip instead of a round trip (BENCHMARKS.md).
#[derive(Clone)]
pub struct Cache {
    commands: mpsc::Sender<Request>,
    prefix: Arc<str>,
    idempotency_ttl: Duration,
    status_ttl: Duration,
    down_until_ms: Arc<AtomicU64>,
    /// SHA-1 of [`TOKEN_BUCKET`] as Redis knows it (`SCRIPT LOAD`), once loaded.
    bucket_sha: Arc<std::sync::RwLock<Option<String>>>,
}

/// The shared token bucket of one client: refills `ARGV[1]` tokens a second up
/// to `ARGV[2]`, takes one if it can. Returns 0 when a token was taken, else
/// the milliseconds until one will be there. Redis's own clock, so every API
/// replica agrees; the key expires once a full bucket would have refilled.
const TOKEN_BUCKET: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"#;

impl Cache {
    /// Builds the pool without connecting: the service starts while Redis is
    /// down. Starts the command collector on the current runtime.
    fn new(
        url: &str,
        namespace: &str,
        idempotency_ttl: Duration,
        status_ttl: Duration,
    ) -> Result<Self, CacheError> {
        let manager = RedisConnectionManager::new(url).map_err(CacheError::Url)?;
        let pool = bb8::Pool::builder()
            // One connection per pipeline in flight.
            .max_size(CONCURRENT_BATCHES as u32)
            .connection_timeout(OP_TIMEOUT)
            .build_unchecked(manager);
        let held = Arc::new(Held::new());
        let commands = batch::spawn(MAX_BATCH, CONCURRENT_BATCHES, move |requests| {
            send_batch(pool.clone(), held.clone(), requests)
        });
        Ok(Cache {
            commands,
            prefix: Arc::from(namespace),
            idempotency_ttl,
            status_ttl,
            down_until_ms: Arc::new(AtomicU64::new(0)),
            bucket_sha: Arc::new(std::sync::RwLock::new(None)),
        })
    }

    /// The cache as the configuration describes it.
    pub fn from_config(config: &crate::Config) -> Result<Self, CacheError> {
        Self::new(
            &config.redis_url,
            &config.namespace,
            config.idempotency_ttl,
            config.status_cache_ttl,
        )
    }

    /// Tries to take `key` for `client`; the holder is returned if it is taken.
    pub async fn reserve_key(
        &self,
        client: Uuid,
        key: &str,
        fingerprint: &str,
    ) -> Result<Reservation, CacheError> {
        let redis_key = self.idempotency_key(client, key);
        let pending = format!("pending:{fingerprint}");
        let ttl = PENDING_TTL.as_secs();
        let taken: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(&pending)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl)
                    .arg("GET"),
            )
            .await?;
        let result = match taken {
            None => Ok(Reservation::Reserved),
            Some(value) => parse_holder(&value).map(Reservation::Held),
        };
        self.count("idempotency", matches!(result, Ok(Reservation::Held(_))));
        result
    }

    /// Records that `key` produced `job_id`, for the idempotency TTL, and
    /// writes the new job's status in the same round trip when given — only
    /// into an empty slot (`NX`): the job is already published, so a fast
    /// worker may have cached `processing` or `done` first, and this older
    /// `queued` must not hide it until the TTL runs out.
    pub async fn complete_key(
        &self,
        client: Uuid,
        key: &str,
        job_id: Uuid,
        fingerprint: &str,
        status: Option<&JobView>,
    ) -> Result<(), CacheError> {
        let mut record = redis::cmd("SET");
        record
            .arg(self.idempotency_key(client, key))
            .arg(format!("job:{job_id}:{fingerprint}"))
            .arg("EX")
            .arg(self.idempotency_ttl.as_secs().max(1));
        let mut commands = vec![record];
        if let Some(job) = status {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.status_key(job.id))
                .arg(serde_json::to_string(job).map_err(|e| CacheError::Corrupt(e.to_string()))?)
                .arg("EX")
                .arg(self.status_ttl.as_secs().max(1))
                .arg("NX");
            commands.push(cmd);
        }
        for reply in self.execute(commands).await? {
            reply?;
        }
        Ok(())
    }

    /// Gives a pending key back after the request failed, so a retry can proceed.
    pub async fn release_key(&self, client: Uuid, key: &str) -> Result<(), CacheError> {
        let redis_key = self.idempotency_key(client, key);
        self.run(redis::cmd("DEL").arg(&redis_key)).await
    }

    /// Writes a job's status through to the cache (every transition calls this).
    pub async fn put_status(&self, job: &JobView) -> Result<(), CacheError> {
        self.set_status(job, false).await
    }

    /// Writes several transitions through in one round trip, in order (the
    /// cache writer's batch). Fails as a whole if any write failed.
    pub async fn put_statuses(&self, jobs: &[&JobView]) -> Result<(), CacheError> {
        let commands = jobs
            .iter()
            .map(|job| self.status_command(job, false))
            .collect::<Result<Vec<_>, _>>()?;
        for reply in self.execute(commands).await? {
            reply?;
        }
        Ok(())
    }

    /// Caches a status read from PostgreSQL, only into an empty slot (`NX`):
    /// a transition written through meanwhile is newer than what was read,
    /// and wins. Transitions themselves use [`Cache::put_status`].
    pub async fn fill_status(&self, job: &JobView) -> Result<(), CacheError> {
        self.set_status(job, true).await
    }

    async fn set_status(&self, job: &JobView, only_if_empty: bool) -> Result<(), CacheError> {
        let mut cmd = self.status_command(job, only_if_empty)?;
        // SET NX answers nil when the slot was taken: not an error.
        let _: Option<String> = self.run(&mut cmd).await?;
        Ok(())
    }

    fn status_command(&self, job: &JobView, only_if_empty: bool) -> Result<redis::Cmd, CacheError> {
        let value = serde_json::to_string(job).map_err(|e| CacheError::Corrupt(e.to_string()))?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.status_key(job.id))
            .arg(value)
            .arg("EX")
            .arg(self.status_ttl.as_secs().max(1));
        if only_if_empty {
            cmd.arg("NX");
        }
        Ok(cmd)
    }

    /// The cached status of a job, if any.
    pub async fn get_status(&self, job_id: Uuid) -> Result<Option<JobView>, CacheError> {
        let key = self.status_key(job_id);
        let value: Option<String> = self.run(redis::cmd("GET").arg(&key)).await?;
        self.count("status", value.is_some());
        value
            .map(|v| serde_json::from_str(&v).map_err(|e| CacheError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Drops a job's cached status, so the next read takes PostgreSQL's:
    /// for a change that must not overwrite a transition a worker may be
    /// writing through at the same moment (a cancel request).
    pub async fn forget_status(&self, job_id: Uuid) -> Result<(), CacheError> {
        let _: i64 = self
            .run(redis::cmd("DEL").arg(self.status_key(job_id)))
            .await?;
        Ok(())
    }

    /// Caches a presigned URL until [`URL_MARGIN`] before it expires.
    pub async fn put_download_url(&self, job_id: Uuid, url: &CachedUrl) -> Result<(), CacheError> {
        let remaining = (url.expires_at - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(URL_MARGIN);
        if remaining.is_zero() {
            return Ok(());
        }
        let key = self.url_key(job_id);
        let value = serde_json::to_string(url).map_err(|e| CacheError::Corrupt(e.to_string()))?;
        let ms = remaining.as_millis() as u64;
        self.run(redis::cmd("SET").arg(&key).arg(&value).arg("PX").arg(ms))
            .await
    }

    /// A cached presigned URL still worth handing out.
    pub async fn get_download_url(&self, job_id: Uuid) -> Result<Option<CachedUrl>, CacheError> {
        let key = self.url_key(job_id);
        let value: Option<String> = self.run(redis::cmd("GET").arg(&key)).await?;
        self.count("download_url", value.is_some());
        value
            .map(|v| serde_json::from_str(&v).map_err(|e| CacheError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Forgets a job's cached URL (its artifact was deleted).
    pub async fn forget_download_url(&self, job_id: Uuid) -> Result<(), CacheError> {
        let key = self.url_key(job_id);
        self.run(redis::cmd("DEL").arg(&key)).await
    }

    /// Takes one token from `client`'s bucket shared by every replica
    /// (`per_second` refill, `burst` size): `Ok(None)` when taken, else how
    /// long until the next token. One `EVALSHA` in the shared pipeline; the
    /// script is loaded on first use and again after Redis lost it.
    pub async fn take_token(
        &self,
        client: Uuid,
        per_second: u32,
        burst: u32,
    ) -> Result<Option<Duration>, CacheError> {
        let key = format!("{}:rate:{client}", self.prefix);
        let known = self.bucket_sha.read().ok().and_then(|sha| sha.clone());
        let sha = match known {
            Some(sha) => sha,
            None => self.load_bucket().await?,
        };
        let evalsha = |sha: &str| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(1).arg(&key).arg(per_second).arg(burst);
            cmd
        };
        let wait: u64 = match self.run(&mut evalsha(&sha)).await {
            Err(CacheError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let sha = self.load_bucket().await?;
                self.run(&mut evalsha(&sha)).await?
            }
            other => other?,
        };
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    async fn load_bucket(&self) -> Result<String, CacheError> {
        let sha: String = self
            .run(redis::cmd("SCRIPT").arg("LOAD").arg(TOKEN_BUCKET))
            .await?;
        if let Ok(mut known) = self.bucket_sha.write() {
            *known = Some(sha.clone());
        }
        Ok(sha)
    }

    /// Forgets everything cached about a job whose row the retention deleted
    /// (status, download URL, the idempotency entry naming it), so its key
    /// starts a new job at once instead of answering with the deleted one.
    pub async fn forget_job(
        &self,
        job_id: Uuid,
        client: Uuid,
        key: &str,
    ) -> Result<(), CacheError> {
        let mut del = redis::cmd("DEL");
        del.arg(self.status_key(job_id))
            .arg(self.url_key(job_id))
            .arg(self.idempotency_key(client, key));
        let _: i64 = self.run(&mut del).await?;
        Ok(())
    }

    /// Health probe: PING, under the cool-off like every other command. A
    /// probe never lifts the breaker: `/health/ready` is called by anyone who
    /// can reach it, and each call would otherwise send every request of the
    /// next [`COOL_OFF`] back into a Redis that is down.
    pub async fn check(&self) -> Result<(), CacheError> {
        self.run::<String>(&mut redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    /// Runs one command (see [`Cache::execute`]).
    async fn run<T: FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T, CacheError> {
        let reply = self
            .execute(vec![std::mem::take(cmd)])
            .await?
            .pop()
            .ok_or_else(|| CacheError::Corrupt("no reply to a command".into()))??;
        Ok(T::from_redis_value(reply).map_err(redis::RedisError::from)?)
    }

    /// Runs commands in order, in one round trip shared with whatever other
    /// requests are waiting, under the deadline and the cool-off breaker.
    /// Returns one reply per command; an error reply fails only its command.
    async fn execute(
        &self,
        commands: Vec<redis::Cmd>,
    ) -> Result<Vec<RedisResult<Value>>, CacheError> {
        if now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return Err(CacheError::Unavailable(
                "cooling off after a failure".into(),
            ));
        }
        let attempt = async {
            let (reply, answer) = oneshot::channel();
            self.commands
                .send((commands, reply))
                .await
                .map_err(|_| CacheError::Unavailable("the command collector stopped".into()))?;
            match answer.await {
                Ok(Ok(replies)) => Ok(replies),
                Ok(Err(e)) => Err(CacheError::Unavailable(e)),
                Err(_) => Err(CacheError::Unavailable(
                    "the command collector stopped".into(),
                )),
            }
        };
        let result = match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Unavailable("timed out".into())),
        };
        if let Err(e) = &result {
            // A failed round trip is `Unavailable` (see `send_batch`); a
            // `Redis` error is one command's error reply, not an outage.
            if matches!(e, CacheError::Unavailable(_)) {
                self.down_until_ms
                    .store(now_ms() + COOL_OFF.as_millis() as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, "redis unavailable; serving from PostgreSQL");
            }
        }
        result
    }

    fn count(&self, cache: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        metrics::counter!(CACHE_LOOKUPS, "cache" => cache, "result" => result).increment(1);
    }

    fn idempotency_key(&self, client: Uuid, key: &str) -> String {
        // Hash the client's key: it is arbitrary text of arbitrary length.
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
        format!("{}:idem:{client}:{digest}", self.prefix)
    }

    fn status_key(&self, job_id: Uuid) -> String {
        format!("{}:status:{job_id}", self.prefix)
    }

    fn url_key(&self, job_id: Uuid) -> String {
        format!("{}:url:{job_id}", self.prefix)
    }
}

/// Sends every request of a batch as one pipeline and hands each request
/// its own replies. A failed round trip fails every request in it.
async fn send_batch(
    pool: bb8::Pool<RedisConnectionManager>,
    held: Arc<Held<MultiplexedConnection>>,
    requests: Vec<Request>,
) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut replies = Vec::with_capacity(requests.len());
    for (commands, reply) in requests {
        replies.push((commands.len(), reply));
        for command in commands {
            pipe.add_command(command);
        }
    }
    let round_trip = async {
        // The pipeline runs on a clone of the pooled connection (a handle to
        // the same socket), kept for the next batch while it works; after a
        // failure the next batch goes back to bb8, which checks the pooled
        // one and replaces it if it is broken.
        let mut conn = held
            .take_or(async { pool.get().await.map(|pooled| pooled.clone()) })
            .await
            .map_err(|e| e.to_string())?;
        let values = pipe
            .query_async::<Vec<RedisResult<Value>>>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        held.keep(conn);
        Ok(values)
    };
    let result = match tokio::time::timeout(OP_TIMEOUT, round_trip).await {
        Ok(result) => result,
        Err(_) => Err("timed out".to_string()),
    };
    match result {
        Ok(values) => {
            let mut values = values.into_iter();
            for (count, reply) in replies {
                let _ = reply.send(Ok(values.by_ref().take(count).collect()));
            }
        }
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn parse_holder(value: &str) -> Result<Holder, CacheError> {
    let corrupt = || CacheError::Corrupt(format!("idempotency entry {value:?}"));
    if let Some(fingerprint) = value.strip_prefix("pending:") {
        return Ok(Holder::Pending {
            fingerprint: fingerprint.to_string(),
        });
    }
    let rest = value.strip_prefix("job:").ok_or_else(corrupt)?;
    let (id, fingerprint) = rest.split_once(':').ok_or_else(corrupt)?;
    Ok(Holder::Job {
        job_id: Uuid::parse_str(id).map_err(|_| corrupt())?,
        fingerprint: fingerprint.to_string(),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_round_trip_their_text_form() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_holder(&format!("job:{id}:abc")).unwrap(),
            Holder::Job {
                job_id: id,
                fingerprint: "abc".into()
            }
        );
        assert_eq!(
            parse_holder("pending:abc").unwrap(),
            Holder::Pending {
                fingerprint: "abc".into()
            }
        );
        assert!(parse_holder("garbage").is_err());
    }
}
