//! Metric names and the Prometheus recorder.
//!
//! Every metric the service exports is named here once, so the dashboards and
//! alert rules in `deploy/` can be checked against this list
//! (`deploy/validate` greps for `artefatos_` names in this file).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by `route`, `method`, `status`.
pub const HTTP_REQUESTS: &str = "artefatos_http_requests_total";
/// HTTP latency histogram by `route`, `method`, `status`.
pub const HTTP_DURATION: &str = "artefatos_http_request_duration_seconds";
/// POSTs answered with an existing job (`Idempotent-Replayed: true`).
pub const IDEMPOTENT_REPLAYS: &str = "artefatos_idempotent_replays_total";
/// Redis cache look-ups by `cache` (`idempotency`, `status`, `download_url`) and
/// `result` (`hit`, `miss`, `error`).
pub const CACHE_LOOKUPS: &str = "artefatos_cache_lookups_total";
/// Jobs committed but not yet confirmed by RabbitMQ (the outbox backlog).
pub const OUTBOX_BACKLOG: &str = "artefatos_outbox_backlog";
/// Jobs accepted, by `format`.
pub const JOBS_CREATED: &str = "artefatos_jobs_created_total";
/// Jobs that reached a final status, by `format` and `outcome` (`done`, `failed`, `expired`, `canceled`).
pub const JOBS_FINISHED: &str = "artefatos_jobs_finished_total";
/// Attempts started by workers, by `format`.
pub const JOB_ATTEMPTS: &str = "artefatos_job_attempts_total";
/// Time spent per `stage` (`queue_wait`, `render`, `upload`) by `format`.
pub const JOB_STAGE_DURATION: &str = "artefatos_job_stage_duration_seconds";
/// Actor restarts by `actor`.
pub const ACTOR_RESTARTS: &str = "artefatos_actor_restarts_total";
/// Messages ready in each work queue, by `queue` and `format`: what KEDA scales on.
pub const QUEUE_DEPTH: &str = "artefatos_queue_depth";
/// Jobs a worker holds (rendering or waiting for a renderer), by `format`:
/// with the queue depth, what KEDA scales workers on, so a busy worker is not
/// scaled away because its queue looks empty.
pub const JOBS_IN_FLIGHT: &str = "artefatos_jobs_in_flight";
/// Messages in the dead-letter queue.
pub const DLQ_DEPTH: &str = "artefatos_dlq_depth";

/// Installs the global recorder once and returns the handle `/metrics` renders.
///
/// Global because the `metrics` facade is global; tests that boot several
/// apps in one process share it.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is already installed (only possible in tests that
            // install their own); render an empty, private one instead.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}
