//! Structured logging with `tracing`: JSON lines when `ARTEFATOS_LOG_FORMAT=json`
//! (what a log pipeline wants), readable text otherwise; level from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; safe to call more than once (later calls do nothing).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn,aws=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
