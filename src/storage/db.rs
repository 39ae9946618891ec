//! The PostgreSQL pool, database creation and migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// Failures reaching or preparing PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url: {0}")]
    Url(sqlx::Error),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Whether an error means "PostgreSQL could not be reached" (an outage: wait
/// and try again) rather than an answer that will be the same next time (a
/// refused statement, a decoding problem: a bug or bad data). The HTTP layer
/// answers 503 for the first and 500 for the second; a worker defers the job
/// for the first and fails the attempt for the second.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    !matches!(
        e,
        sqlx::Error::Database(_)
            | sqlx::Error::RowNotFound
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::Encode(_)
            | sqlx::Error::Configuration(_)
            | sqlx::Error::InvalidArgument(_)
    )
}

/// Migrations compiled into the binary, so `artefatos migrate` needs no files on disk.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that fails fast: a request waiting for a connection while
/// PostgreSQL is down answers 503 within `acquire_timeout`, not after 30 s.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(60))
        .after_connect(|conn, _meta| Box::pin(disable_nagle(conn)))
        .connect_lazy_with(options.disable_statement_logging());
    Ok(pool)
}

/// Creates the database named in `url` if it does not exist yet, connecting to
/// the server's `postgres` database to do so.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    let name = options.get_database().unwrap_or("postgres").to_string();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Brings the schema up to date; concurrent callers are serialised by sqlx's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Turns Nagle's algorithm off on a new connection's socket.
///
/// sqlx 0.9.0 connects without `TCP_NODELAY` (a regression, launchbadge/sqlx
/// #4335; the fix, #4336, is merged but unreleased). A statement that does not
/// leave in one segment, such as a group-committed insert of a few dozen jobs,
/// then waits for the server's delayed ACK: measured as 40–50 ms stalls that
/// capped job creation (BENCHMARKS.md). sqlx offers no hook on its socket, so
/// the connection asks the server which client port it came from and the
/// socket with that local port is found among this process's descriptors.
/// Delete this once sqlx sets the option itself.
async fn disable_nagle(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // NULLs over a Unix socket, which has no Nagle to turn off.
    let (client, server): (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
            .fetch_one(&mut *conn)
            .await?;
    let port = |p: Option<i32>| p.and_then(|p| u16::try_from(p).ok());
    if let (Some(local), Some(peer)) = (port(client), port(server))
        && with_socket(local, peer, |s| s.set_tcp_nodelay(true)).is_none()
    {
        tracing::debug!(local, peer, "no socket found to set TCP_NODELAY on");
    }
    Ok(())
}

/// Runs `f` on this process's TCP socket from local port `local` to remote
/// port `peer`, if there is one (Linux: descriptors are listed in
/// `/proc/self/fd`).
fn with_socket<T>(local: u16, peer: u16, f: impl FnOnce(&socket2::SockRef) -> T) -> Option<T> {
    use std::os::fd::BorrowedFd;

    let port = |addr: std::io::Result<socket2::SockAddr>| {
        addr.ok().and_then(|a| a.as_socket()).map(|a| a.port())
    };
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` was open when listed and is only borrowed for address
        // look-ups and socket options, which cannot touch memory. Were it
        // closed and reused meanwhile, the port check fails or the call
        // errors; a TCP socket given TCP_NODELAY by mistake only sends sooner.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        if port(socket.local_addr()) == Some(local) && port(socket.peer_addr()) == Some(peer) {
            return Some(f(&socket));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's TCP connections have Nagle off (see [`disable_nagle`]).
    #[tokio::test]
    async fn pooled_tcp_connections_send_without_waiting_for_acks() {
        let pool = connect("postgres://postgres@127.0.0.1:5432/postgres", 1)
            .await
            .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let (client, server): (i32, i32) =
            sqlx::query_as("SELECT inet_client_port(), inet_server_port()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        let nodelay = with_socket(client as u16, server as u16, |s| s.tcp_nodelay().unwrap());
        assert_eq!(nodelay, Some(true));
    }
}
