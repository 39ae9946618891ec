//! Everything the service keeps outside its own memory: PostgreSQL (jobs and
//! API keys), Redis (idempotency and status caches), RabbitMQ (the work queues)
//! and the artifact store (S3 or a local directory).

pub mod batch;
pub mod blobs;
pub mod cache;
pub mod db;
pub mod dlq;
pub mod jobs;
pub mod keys;
pub mod outbox;
pub mod queue;
