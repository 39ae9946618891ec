//! Artefatos: asynchronous XLSX and PDF generation.
//!
//! A job travels one way: `http` accepts it and commits it to `storage::jobs`
//! (the row doubles as an outbox), `storage::queue` carries its id to the
//! workers in `actors`, which render it with `render` and store the artifact
//! in `storage::blobs`. See `../shared/architecture.md` and `supervision.md`.

pub mod actors;
pub mod app;
pub mod config;
pub mod http;
pub mod metrics;
pub mod render;
pub mod storage;
pub mod telemetry;

pub use config::Config;
