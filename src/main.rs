//! The `artefatos` binary: parses the command line and wires the library
//! together. No logic lives here beyond choosing what to start.

use anyhow::Context;
use clap::{Parser, Subcommand};

use artefatos::Config;
use artefatos::app::Application;
use artefatos::storage::{db, keys};

#[derive(Parser)]
#[command(
    name = "artefatos",
    version,
    about = "Asynchronous XLSX and PDF generation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API and workers in one process (the quick start).
    All,
    /// The HTTP API (and the outbox relay).
    Api,
    /// Workers: consumers, renderers, uploader, janitor (plus health and metrics over HTTP).
    Worker {
        /// Formats to consume, comma-separated (overrides ARTEFATOS_WORKER_FORMATS).
        #[arg(long)]
        formats: Option<String>,
    },
    /// Create the database if missing and run migrations, then exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for client NAME; the key is printed once, as the last line.
    Create { name: String },
    /// Revoke a key by id or prefix (as `keys list` shows).
    Revoke { id_or_prefix: String },
    /// List keys (never their secrets).
    List,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    if let Command::Worker {
        formats: Some(formats),
    } = &cli.command
    {
        vars.insert("ARTEFATOS_WORKER_FORMATS".into(), formats.clone());
    }
    let config = Config::from_vars(&vars).context("configuration")?;
    artefatos::telemetry::init(
        vars.get("ARTEFATOS_LOG_FORMAT")
            .is_some_and(|f| f == "json"),
    );

    match cli.command {
        Command::All | Command::Api | Command::Worker { .. } => serve(config).await,
        Command::Migrate => {
            db::ensure_database(&config.database_url).await?;
            let pool = db::connect(&config.database_url, 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys { command } => {
            db::ensure_database(&config.database_url).await?;
            let pool = db::connect(&config.database_url, 2).await?;
            db::migrate(&pool).await?;
            match command {
                KeysCommand::Create { name } => {
                    let key = keys::create(&pool, &name).await?;
                    println!(
                        "client {} ({}), key id {}",
                        key.client_name, key.client_id, key.key_id
                    );
                    println!("{}", key.secret);
                }
                KeysCommand::Revoke { id_or_prefix } => {
                    keys::revoke(&pool, &id_or_prefix).await?;
                    println!("revoked");
                }
                KeysCommand::List => {
                    for key in keys::list(&pool).await? {
                        let state = match key.revoked_at {
                            Some(at) => format!("revoked {at}"),
                            None => "active".into(),
                        };
                        println!(
                            "{}  {}…  {}  {}  {}",
                            key.id, key.prefix, key.client_name, key.created_at, state
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let app = Application::build(config).await.context("start-up")?;
    tracing::info!(%listen, "artefatos listening");
    app.serve(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
