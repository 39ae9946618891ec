//! API keys: clients, their hashed keys, and the authentication look-up.
//!
//! A key is `af_` followed by 64 hex digits of OS randomness. Only its SHA-256
//! is stored: with 256 bits of entropy there is nothing a slow password hash
//! would protect, and a fast hash keeps authentication off the hot path's
//! budget. Look-ups are cached in-process for [`AUTH_CACHE_TTL`], which is
//! therefore how long a revoked key may keep working on a busy replica.

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
const AUTH_CACHE_MAX_ENTRIES: usize = 10_000;

/// Failures of the key store.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no key with id or prefix {0:?}")]
    NotFound(String),
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

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Key digest → (owning client, or `None` for an unknown key; when looked up).
type AuthCache = HashMap<[u8; 32], (Option<Uuid>, Instant)>;

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
        if let Some(client) = self.cached(&digest) {
            return Ok(client);
        }
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
            cache.insert(digest, (client, Instant::now()));
        }
        Ok(client)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Option<Uuid>> {
        let cache = self.cache.lock().ok()?;
        let (client, at) = cache.get(digest)?;
        (at.elapsed() < AUTH_CACHE_TTL).then_some(*client)
    }
}
