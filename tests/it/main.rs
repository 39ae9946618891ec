//! One integration-test binary (one link step) for everything that talks to
//! the real services; each test boots its own app in its own namespace.

mod api_cdn;
mod api_degraded;
mod api_encoding;
mod api_generate;
mod api_hardening;
mod api_jobs;
mod api_read;
mod blobs;
mod cli;
mod ops_limits;
mod ops_retention;
mod support;
mod worker_delivery;
mod worker_failures;
mod worker_flow;
mod worker_lifecycle;
mod worker_ops;
mod worker_pipeline;
mod worker_process;
mod worker_queue;
mod worker_support;
