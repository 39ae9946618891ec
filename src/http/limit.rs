//! Per-client limits: a rate limit on `POST /generate` shared by every API
//! replica, a cap on a client's jobs not yet final, and a limit on 401s per
//! source address, so one client (or one address guessing keys) cannot take
//! the service or PostgreSQL's disk from the others.
//!
//! - The rate is a token bucket in Redis (one `EVALSHA` per request, in the
//!   cache's shared pipeline). When Redis is unreachable each replica keeps
//!   its own bucket with the same settings, so the limit then holds per
//!   replica rather than in total.
//! - The count of a client's unfinished jobs is read from PostgreSQL at most
//!   once a second per client and replica (a bounded, indexed count), plus the
//!   requests this replica admitted since: approximate by design, never a
//!   `COUNT` per request.
//! - 401s are counted per source address, in each replica's memory, over a
//!   fixed window; past the limit the address gets 429 until the window ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::config::ClientLimits;
use crate::storage::cache::Cache;

/// How long a client's counted unfinished jobs and its own limits are trusted.
pub const CLIENT_REFRESH: Duration = Duration::from_secs(1);
/// Most source addresses whose 401s are tracked (and clients with a fallback
/// bucket); past it, finished windows are forgotten first, then everything: a
/// flood of addresses must not grow memory without bound.
const MAX_TRACKED: usize = 100_000;

/// What this replica knows of one client.
struct ClientState {
    /// The client's own limits (`artefatos keys limits`), if any.
    rate: Option<u32>,
    max_unfinished: Option<u32>,
    /// Unfinished jobs PostgreSQL counted (up to the cap + 1) at `counted_at`.
    unfinished: u64,
    /// Requests this replica admitted since that count.
    admitted_since: u64,
    counted_at: Instant,
    /// When a request started refreshing this entry; others keep using it
    /// meanwhile. A refresh older than [`REFRESH_ABANDONED`] (its request was
    /// dropped mid-query) no longer stops the next one.
    refreshing_since: Option<Instant>,
}

/// How long the request that refreshes a client waits for PostgreSQL before
/// going on with what is known (the defaults for a client never seen).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a refresh may run before another request may start one.
const REFRESH_ABANDONED: Duration = Duration::from_secs(5);

/// A replica-local token bucket, used while Redis is unreachable.
struct LocalBucket {
    tokens: f64,
    at: Instant,
}

/// The limits of one API process; see the module documentation.
pub struct Limiter {
    settings: ClientLimits,
    address_header: Option<axum::http::HeaderName>,
    pool: PgPool,
    cache: Cache,
    clients: Mutex<HashMap<Uuid, ClientState>>,
    local: Mutex<HashMap<Uuid, LocalBucket>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Limiter {
    /// Limits with the configured defaults, reading overrides from `pool`;
    /// `address_header` names the client's address behind a trusted proxy.
    pub fn new(
        settings: ClientLimits,
        address_header: Option<&str>,
        pool: PgPool,
        cache: Cache,
    ) -> Self {
        Limiter {
            settings,
            address_header: address_header
                .and_then(|h| axum::http::HeaderName::from_bytes(h.as_bytes()).ok()),
            pool,
            cache,
            clients: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one `POST /generate` of `client`, or says why not:
    /// `rate_limited` (with the wait) or `too_many_jobs`.
    pub async fn admit(&self, client: Uuid) -> Result<(), ApiError> {
        let (rate, max_unfinished, unfinished) = self.client(client).await;
        // The cap first: a refused request must not spend a token too.
        if unfinished >= u64::from(max_unfinished) {
            return Err(ApiError::TooManyJobs(max_unfinished));
        }
        let burst = self.settings.burst.max(rate);
        let wait = match self.cache.take_token(client, rate, burst).await {
            Ok(wait) => wait,
            Err(_) => self.take_local(client, rate, burst),
        };
        if let Some(wait) = wait {
            return Err(ApiError::RateLimited {
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        if let Ok(mut clients) = self.clients.lock()
            && let Some(state) = clients.get_mut(&client)
        {
            state.admitted_since += 1;
        }
        Ok(())
    }

    /// The client's rate, cap and approximate unfinished jobs, refreshed from
    /// PostgreSQL by one request at most once per [`CLIENT_REFRESH`].
    async fn client(&self, client: Uuid) -> (u32, u32, u64) {
        let defaults = &self.settings;
        let now = Instant::now();
        {
            let Ok(mut clients) = self.clients.lock() else {
                return (defaults.per_second, defaults.max_unfinished_jobs, 0);
            };
            if let Some(state) = clients.get_mut(&client) {
                let fresh = now.duration_since(state.counted_at) < CLIENT_REFRESH;
                let refreshing = state
                    .refreshing_since
                    .is_some_and(|since| now.duration_since(since) < REFRESH_ABANDONED);
                if fresh || refreshing {
                    return (
                        state.rate.unwrap_or(defaults.per_second),
                        state.max_unfinished.unwrap_or(defaults.max_unfinished_jobs),
                        state.unfinished + state.admitted_since,
                    );
                }
                state.refreshing_since = Some(now);
            }
        }
        let read = tokio::time::timeout(
            REFRESH_TIMEOUT,
            read_client(&self.pool, client, defaults.max_unfinished_jobs),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        let Ok(mut clients) = self.clients.lock() else {
            return (defaults.per_second, defaults.max_unfinished_jobs, 0);
        };
        match read {
            Ok((rate, max_unfinished, unfinished)) => {
                clients.insert(
                    client,
                    ClientState {
                        rate,
                        max_unfinished,
                        unfinished,
                        admitted_since: 0,
                        counted_at: now,
                        refreshing_since: None,
                    },
                );
                (
                    rate.unwrap_or(defaults.per_second),
                    max_unfinished.unwrap_or(defaults.max_unfinished_jobs),
                    unfinished,
                )
            }
            // PostgreSQL unreachable: keep what is known, with the defaults
            // for a client never seen, and try again in a second rather than
            // on every request (each would wait for the pool's timeout first).
            Err(e) => {
                tracing::debug!(error = %e, %client, "client limits not refreshed");
                let state = clients.entry(client).or_insert(ClientState {
                    rate: None,
                    max_unfinished: None,
                    unfinished: 0,
                    admitted_since: 0,
                    counted_at: now,
                    refreshing_since: None,
                });
                state.counted_at = Instant::now();
                state.refreshing_since = None;
                (
                    state.rate.unwrap_or(defaults.per_second),
                    state.max_unfinished.unwrap_or(defaults.max_unfinished_jobs),
                    state.unfinished + state.admitted_since,
                )
            }
        }
    }

    /// The fallback bucket of this replica, same settings as the shared one.
    fn take_local(&self, client: Uuid, rate: u32, burst: u32) -> Option<Duration> {
        let Ok(mut buckets) = self.local.lock() else {
            return None;
        };
        let now = Instant::now();
        if buckets.len() > MAX_TRACKED {
            buckets.clear();
        }
        let bucket = buckets.entry(client).or_insert(LocalBucket {
            tokens: f64::from(burst),
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * f64::from(rate);
        bucket.tokens = (bucket.tokens + refill).min(f64::from(burst));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / f64::from(rate),
            ))
        }
    }

    /// The request's source address: the last entry of the configured
    /// header (the one the nearest, trusted proxy wrote; entries before it
    /// are the client's to forge), else (no header set, or no such header on
    /// this request) the peer address.
    fn source(&self, request: &Request) -> Option<IpAddr> {
        let forwarded = self.address_header.as_ref().and_then(|name| {
            request
                .headers()
                .get_all(name)
                .iter()
                .next_back()
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.rsplit(',').next())
                .and_then(|last| last.trim().parse().ok())
        });
        forwarded.or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        })
    }

    /// How long `address` must still wait, if its 401s reached the limit.
    fn blocked(&self, address: IpAddr) -> Option<Duration> {
        let window = self.settings.auth_failure_window;
        let failures = self.failures.lock().ok()?;
        let &(started, count) = failures.get(&address)?;
        let left = window.checked_sub(started.elapsed())?;
        (count >= self.settings.auth_failures).then_some(left)
    }

    /// Counts one 401 answered to `address`.
    fn count_failure(&self, address: IpAddr) {
        let window = self.settings.auth_failure_window;
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (started, _)| started.elapsed() < window);
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        let entry = failures.entry(address).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// A client's own limits and its unfinished jobs, counted up to the cap + 1
/// (the count never costs more than the cap's worth of index entries).
async fn read_client(
    pool: &PgPool,
    client: Uuid,
    default_max: u32,
) -> Result<(Option<u32>, Option<u32>, u64), sqlx::Error> {
    let (rate, max): (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT rate_limit, max_unfinished_jobs FROM clients WHERE id = $1")
            .bind(client)
            .fetch_optional(pool)
            .await?
            .unwrap_or((None, None));
    let to_u32 = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    let (rate, max) = (to_u32(rate), to_u32(max));
    let cap = i64::from(max.unwrap_or(default_max)) + 1;
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM jobs \
         WHERE client_id = $1 AND status IN ('queued', 'processing') LIMIT $2) AS unfinished",
    )
    .bind(client)
    .bind(cap)
    .fetch_one(pool)
    .await?;
    Ok((rate, max, u64::try_from(unfinished).unwrap_or(0)))
}

/// Middleware of the job endpoints: an address that got too many 401s is
/// answered 429 `rate_limited` before its request is looked at, and every
/// 401 is counted against its address.
pub async fn auth_failures(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(address) = state.limits.source(&request) else {
        return next.run(request).await;
    };
    if let Some(left) = state.limits.blocked(address) {
        return ApiError::RateLimited {
            retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        state.limits.count_failure(address);
    }
    response
}
