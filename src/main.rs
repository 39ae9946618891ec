//! The `artefatos` binary: parses the command line and wires the library
//! together. No logic lives here beyond choosing what to start.

use anyhow::Context;
use clap::{Parser, Subcommand};

use artefatos::Config;
use artefatos::actors::Role;
use artefatos::app::Application;
use artefatos::storage::cache::Cache;
use artefatos::storage::outbox::Outbox;
use artefatos::storage::queue::{Publisher, Topology};
use artefatos::storage::{self, db, jobs, keys, queue};

/// mimalloc instead of glibc's allocator: the request path allocates per
/// request (JSON, headers, Redis and SQL buffers) from several threads, and
/// glibc's malloc was 17 % of the API's CPU time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Inspect and replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Inspect jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Every DLQ record: job id, format, attempts, reason, first and last death.
    List {
        /// One JSON document per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put failed jobs back to work with a fresh attempt budget.
    Replay {
        /// Only this job.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        job: Option<uuid::Uuid>,
        /// Every record in the DLQ.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// A job's full record from PostgreSQL, as JSON.
    Show { id: uuid::Uuid },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for client NAME; the key is printed once, as the last line.
    Create { name: String },
    /// Revoke a key by id or prefix (as `keys list` shows).
    Revoke { id_or_prefix: String },
    /// List keys (never their secrets).
    List,
    /// Set client NAME's own limits; 0 returns a limit to the configured default.
    Limits {
        name: String,
        /// `POST /generate` requests per second (ARTEFATOS_RATE_LIMIT otherwise).
        #[arg(long)]
        rate: Option<u32>,
        /// Jobs not yet done or failed (ARTEFATOS_MAX_UNFINISHED_JOBS otherwise).
        #[arg(long)]
        max_unfinished_jobs: Option<u32>,
    },
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
        Command::All => serve(config, Role::All).await,
        Command::Api => serve(config, Role::Api).await,
        Command::Worker { .. } => serve(config, Role::Worker).await,
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
                KeysCommand::Limits {
                    name,
                    rate,
                    max_unfinished_jobs,
                } => {
                    keys::set_limits(&pool, &name, rate, max_unfinished_jobs).await?;
                    println!("limits of {name} updated");
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
        Command::Dlq { command } => dlq(config, command).await,
        Command::Jobs {
            command: JobsCommand::Show { id },
        } => {
            let pool = db::connect(&config.database_url, 2).await?;
            match jobs::record(&pool, id).await? {
                Some(record) => {
                    println!("{}", serde_json::to_string_pretty(&record)?);
                    Ok(())
                }
                None => anyhow::bail!("no job {id}"),
            }
        }
    }
}

async fn dlq(config: Config, command: DlqCommand) -> anyhow::Result<()> {
    let pool = db::connect(&config.database_url, 2).await?;
    let topology = Topology::new(&config);
    let connection = queue::connect(&config.amqp_url).await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    match command {
        DlqCommand::List { json } => {
            let entries = storage::dlq::list(&channel, &topology, &pool).await?;
            if json {
                for entry in &entries {
                    println!("{}", serde_json::to_string(entry)?);
                }
            } else {
                println!(
                    "{:<36}  {:<6}  {:>8}  {:<20}  {:<20}  reason",
                    "job", "format", "attempts", "first death", "last death"
                );
                let show = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into())
                };
                for e in &entries {
                    println!(
                        "{:<36}  {:<6}  {:>8}  {:<20}  {:<20}  {}",
                        e.job_id
                            .map(|id| id.to_string())
                            .unwrap_or_else(|| "(malformed)".into()),
                        e.format.as_deref().unwrap_or("-"),
                        e.attempts
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "-".into()),
                        show(e.first_death),
                        show(e.last_death),
                        e.reason
                    );
                }
                println!("{} record(s)", entries.len());
            }
        }
        DlqCommand::Replay { job, all: _ } => {
            let outcomes = storage::dlq::replay(&channel, &topology, &pool, job).await?;
            let cache = Cache::from_config(&config)?;
            for (id, outcome) in &outcomes {
                if let Ok(Some(view)) = jobs::lifecycle::view(&pool, *id).await {
                    let _ = cache.put_status(&view).await;
                }
                let note = match outcome {
                    storage::dlq::ReplayOutcome::Requeued => "requeued",
                    storage::dlq::ReplayOutcome::Dropped => "dropped: the job is no longer failed",
                    storage::dlq::ReplayOutcome::PayloadGone => {
                        "not replayed: failed before the DLQ replay window, its document \
                         was dropped (the client must post it again)"
                    }
                    storage::dlq::ReplayOutcome::Missing => {
                        "dropped: the job was deleted after the job retention"
                    }
                };
                println!("{id}  {note}");
            }
            // Publish now rather than waiting for a relay's next round.
            let outbox = Outbox::new(pool.clone(), Publisher::lazy(&config));
            let published = outbox.sweep().await?;
            let requeued = outcomes
                .iter()
                .filter(|(_, o)| *o == storage::dlq::ReplayOutcome::Requeued)
                .count();
            println!(
                "{} replayed, {} published, {} record(s) settled",
                requeued,
                published,
                outcomes.len()
            );
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let listen = config.listen;
    let app = Application::build(config)
        .await
        .context("start-up")?
        .start_actors(role)
        .await
        .context("actor tree")?;
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
