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
const AUTH_CACHE_MAX_ENTRIES: usize = 10_000;

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

/// Key digest → what PostgreSQL said about it.
type AuthCache = HashMap<[u8; 32], Verdict>;

/// One cached look-up.
struct Verdict {
    /// The owning client, or `None` for an unknown or revoked key.
    client: Option<Uuid>,
    /// When the look-up was sent: the entry is trusted until `AUTH_CACHE_TTL` after.
    asked_at: Instant,
    /// A background refresh is under way.
    refreshing: bool,
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
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The client owning this secret, or `None` for an unknown or revoked key.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Uuid>, KeyError> {
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
        cache.get_mut(digest)?.consult(Instant::now())
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
            if cache.len() >= AUTH_CACHE_MAX_ENTRIES {
                cache.clear();
            }
            // A slow refresh must not replace a look-up sent after it.
            if cache
                .get(&digest)
                .is_none_or(|cached| cached.asked_at <= asked_at)
            {
                let verdict = Verdict {
                    client,
                    asked_at,
                    refreshing: false,
                };
                cache.insert(digest, verdict);
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
        }
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
