//! API keys: clients, their hashed keys, and the authentication look-up.
//!
//! A key is `af_` followed by 64 hex digits of OS randomness. Only its SHA-256
//! is stored: with 256 bits of entropy there is nothing a slow password hash
//! would protect, and a fast hash keeps authentication off the hot path's
//! budget. Look-ups are cached in-process for [`AUTH_CACHE_TTL`], which is
//! therefore how long a revoked key may keep working on a busy replica. A key
//! in use is looked up again in the background before its entry expires, so
//! its requests never all miss the cache at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// How long an authentication result is trusted without asking PostgreSQL.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);
/// Age at which the first request to use an entry refreshes it in the
/// background. Without it, every request in flight when a busy key's entry
/// expired went to PostgreSQL at once: 64 look-ups competing for the pool
/// every five seconds, a latency spike the load test saw.
const AUTH_REFRESH_AFTER: Duration = Duration::from_secs(4);
/// Most cached look-ups; past it the least recently used eighth is evicted
/// (not the whole cache, which made every busy key miss at once).
const AUTH_CACHE_MAX_ENTRIES: usize = 10_000;
/// Length of a key: `af_` and 64 hex digits.
const KEY_LEN: usize = 3 + 64;

/// Whether `secret` has the shape of a key this module creates (`af_` and
/// 64 lowercase hex digits). Anything else is refused without a look-up, so
/// random tokens cost neither a PostgreSQL query nor a cache entry.
pub fn is_well_formed(secret: &str) -> bool {
    secret.len() == KEY_LEN
        && secret.starts_with("af_")
        && secret[3..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Failures of the key store.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no key with id or prefix {0:?}")]
    NotFound(String),
    #[error("no client named {0:?}")]
    NoClient(String),
}

impl KeyError {
    /// PostgreSQL could not be reached: see [`crate::storage::db::is_unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, KeyError::Database(e) if crate::storage::db::is_unavailable(e))
    }
}

/// A freshly created key: the only moment its secret exists in clear.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: Uuid,
    pub client_id: Uuid,
    pub client_name: String,
    pub secret: String,
}

/// A stored key as an operator sees it (never the secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: Uuid,
    pub client_name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a key for the client `name`, creating the client on first use.
pub async fn create(pool: &PgPool, name: &str) -> Result<NewKey, KeyError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("af_{}", hex::encode(bytes));
    let mut tx = pool.begin().await?;
    let client_id: Uuid = sqlx::query_scalar(
        "INSERT INTO clients (id, name) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let key_id = Uuid::now_v7();
    sqlx::query("INSERT INTO api_keys (id, client_id, key_hash, prefix) VALUES ($1, $2, $3, $4)")
        .bind(key_id)
        .bind(client_id)
        .bind(hash(&secret).as_slice())
        .bind(&secret[..11])
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(NewKey {
        key_id,
        client_id,
        client_name: name.to_string(),
        secret,
    })
}

/// Revokes the key with this id or secret prefix (as `keys list` prints it).
pub async fn revoke(pool: &PgPool, id_or_prefix: &str) -> Result<(), KeyError> {
    let id = Uuid::parse_str(id_or_prefix).ok();
    let updated = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE revoked_at IS NULL AND (id = $1 OR prefix = $2)",
    )
    .bind(id)
    .bind(id_or_prefix)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(KeyError::NotFound(id_or_prefix.to_string()));
    }
    Ok(())
}

/// Every key, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<KeyInfo>, KeyError> {
    Ok(sqlx::query_as(
        "SELECT k.id, c.name AS client_name, k.prefix, k.created_at, k.revoked_at
         FROM api_keys k JOIN clients c ON c.id = k.client_id
         ORDER BY k.created_at DESC",
    )
    .fetch_all(pool)
    .await?)
}

/// Sets a client's own limits (`artefatos keys limits`): requests per second
/// on `POST /generate` and jobs not yet final. `None` leaves a limit as it is,
/// `Some(0)` returns it to the configured default. Replicas apply a change
/// within a second.
pub async fn set_limits(
    pool: &PgPool,
    client_name: &str,
    rate: Option<u32>,
    max_unfinished_jobs: Option<u32>,
) -> Result<(), KeyError> {
    let value = |v: Option<u32>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    let updated = sqlx::query(
        "UPDATE clients SET
           rate_limit = CASE WHEN $2::int IS NULL THEN rate_limit ELSE NULLIF($2, 0) END,
           max_unfinished_jobs =
             CASE WHEN $3::int IS NULL THEN max_unfinished_jobs ELSE NULLIF($3, 0) END
         WHERE name = $1",
    )
    .bind(client_name)
    .bind(value(rate))
    .bind(value(max_unfinished_jobs))
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(KeyError::NoClient(client_name.to_string()));
    }
    Ok(())
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Key digest → what PostgreSQL said about it, with least-recently-used
/// eviction.
#[derive(Default)]
struct AuthCache {
    entries: HashMap<[u8; 32], Verdict>,
    /// Counts uses; an entry's `used` is the tick of its last use.
    tick: u64,
}

impl AuthCache {
    /// The entry for `digest`, marked as just used.
    fn touch(&mut self, digest: &[u8; 32]) -> Option<&mut Verdict> {
        self.tick += 1;
        let tick = self.tick;
        let verdict = self.entries.get_mut(digest)?;
        verdict.used = tick;
        Some(verdict)
    }

    /// Stores `verdict`, first evicting the least recently used eighth of
    /// the entries when the cache is full: a flood of distinct tokens evicts
    /// its own entries, never a key in steady use.
    fn insert(&mut self, digest: [u8; 32], mut verdict: Verdict, capacity: usize) {
        if self.entries.len() >= capacity && !self.entries.contains_key(&digest) {
            let mut uses: Vec<u64> = self.entries.values().map(|v| v.used).collect();
            let evict = (capacity / 8).max(1).min(uses.len());
            let (_, &mut oldest_kept, _) = uses.select_nth_unstable(evict - 1);
            self.entries.retain(|_, v| v.used > oldest_kept);
        }
        self.tick += 1;
        verdict.used = self.tick;
        self.entries.insert(digest, verdict);
    }
}

/// One cached look-up.
struct Verdict {
    /// The owning client, or `None` for an unknown or revoked key.
    client: Option<Uuid>,
    /// When the look-up was sent: the entry is trusted until `AUTH_CACHE_TTL` after.
    asked_at: Instant,
    /// A background refresh is under way.
    refreshing: bool,
    /// The cache's tick at the last use, for LRU eviction.
    used: u64,
}

impl Verdict {
    /// The client, if the entry may still answer at `now`, and whether this
    /// caller should refresh it: only the first to find it old enough does,
    /// so a busy key costs one look-up per refresh, not one per request.
    fn consult(&mut self, now: Instant) -> Option<(Option<Uuid>, bool)> {
        let age = now.saturating_duration_since(self.asked_at);
        if age >= AUTH_CACHE_TTL {
            return None;
        }
        let refresh = age >= AUTH_REFRESH_AFTER && !self.refreshing;
        self.refreshing |= refresh;
        Some((self.client, refresh))
    }
}

/// Resolves bearer secrets to client ids, with a short in-process cache.
#[derive(Clone)]
pub struct KeyRing {
    pool: PgPool,
    cache: Arc<Mutex<AuthCache>>,
}

impl KeyRing {
    /// A key ring over `pool` with an empty cache.
    pub fn new(pool: PgPool) -> Self {
        KeyRing {
            pool,
            cache: Arc::new(Mutex::new(AuthCache::default())),
        }
    }

    /// The client owning this secret, or `None` for an unknown or revoked key.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Uuid>, KeyError> {
        if !is_well_formed(secret) {
            return Ok(None);
        }
        let digest = hash(secret);
        if let Some((client, refresh)) = self.cached(&digest) {
            if refresh {
                let ring = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = ring.look_up(digest).await {
                        // The entry stays valid until it expires; the next
                        // request after that asks PostgreSQL itself.
                        tracing::debug!(error = %e, "api key refresh failed");
                    }
                });
            }
            return Ok(client);
        }
        self.look_up(digest).await
    }

    /// The cached client if the entry is still trusted, and whether this
    /// caller should refresh it.
    fn cached(&self, digest: &[u8; 32]) -> Option<(Option<Uuid>, bool)> {
        let mut cache = self.cache.lock().ok()?;
        cache.touch(digest)?.consult(Instant::now())
    }

    /// Asks PostgreSQL and caches the answer.
    async fn look_up(&self, digest: [u8; 32]) -> Result<Option<Uuid>, KeyError> {
        let asked_at = Instant::now();
        let client: Option<Uuid> = sqlx::query_scalar(
            "SELECT client_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(digest.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        if let Ok(mut cache) = self.cache.lock() {
            // A slow refresh must not replace a look-up sent after it.
            if cache
                .entries
                .get(&digest)
                .is_none_or(|cached| cached.asked_at <= asked_at)
            {
                let verdict = Verdict {
                    client,
                    asked_at,
                    refreshing: false,
                    used: 0,
                };
                cache.insert(digest, verdict, AUTH_CACHE_MAX_ENTRIES);
            }
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_asked(ago: Duration, now: Instant) -> Verdict {
        Verdict {
            client: Some(Uuid::nil()),
            asked_at: now - ago,
            refreshing: false,
            used: 0,
        }
    }

    #[test]
    fn only_keys_of_the_issued_shape_are_well_formed() {
        let good = format!("af_{}", "0123456789abcdef".repeat(4));
        assert!(is_well_formed(&good));
        assert!(!is_well_formed(&good.to_uppercase()));
        assert!(!is_well_formed(&good[..good.len() - 1]));
        assert!(!is_well_formed(&format!("{good}0")));
        assert!(!is_well_formed(&good.replace("af_", "ag_")));
        assert!(!is_well_formed(&good.replacen('0', "g", 1)));
        assert!(!is_well_formed("af_é"));
    }

    #[test]
    fn a_flood_of_distinct_tokens_never_evicts_a_key_in_use() {
        let now = Instant::now();
        let capacity = 1_000;
        let mut cache = AuthCache::default();
        let busy = [0xAA; 32];
        cache.insert(busy, verdict_asked(Duration::ZERO, now), capacity);
        for i in 0..20 * capacity as u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&i.to_be_bytes());
            cache.insert(digest, verdict_asked(Duration::ZERO, now), capacity);
            // The legitimate key is used all along, every few strangers.
            if i % 50 == 0 {
                assert!(cache.touch(&busy).is_some(), "evicted after {i} tokens");
            }
            assert!(cache.entries.len() <= capacity);
        }
        // The flood evicted its own entries, a few at a time, not everything.
        assert!(cache.entries.len() > capacity * 7 / 8);
    }

    #[test]
    fn a_fresh_entry_answers_without_a_look_up() {
        let now = Instant::now();
        let mut verdict = verdict_asked(Duration::from_millis(10), now);
        assert_eq!(verdict.consult(now), Some((Some(Uuid::nil()), false)));
    }

    #[test]
    fn only_the_first_request_to_find_an_entry_old_enough_refreshes_it() {
        let now = Instant::now();
        let mut verdict = verdict_asked(AUTH_REFRESH_AFTER, now);
        assert_eq!(verdict.consult(now), Some((Some(Uuid::nil()), true)));
        // The others keep being answered from the entry while it refreshes.
        for _ in 0..63 {
            assert_eq!(verdict.consult(now), Some((Some(Uuid::nil()), false)));
        }
    }

    #[test]
    fn an_entry_never_answers_past_its_ttl_refresh_or_not() {
        let now = Instant::now();
        let mut verdict = verdict_asked(AUTH_CACHE_TTL, now);
        assert_eq!(verdict.consult(now), None);
        // A refresh that failed leaves `refreshing` set: the entry still
        // expires on time, and the next request asks PostgreSQL itself.
        let mut stuck = verdict_asked(AUTH_CACHE_TTL, now);
        stuck.refreshing = true;
        assert_eq!(stuck.consult(now), None);
    }
}
