//! RabbitMQ: the topology (work queues, retry queues, DLQ), confirmed publishing
//! of job ids, the consumer side and the broker-side attempt count (`x-death`).
//!
//! Retries never leave the broker. A failed attempt is `nack`ed without requeue;
//! the work queue dead-letters it with the message's own routing key into the
//! retry exchange, which routes by that key to the retry queue of the next hop.
//! Each retry queue holds the message for its `x-message-ttl` and dead-letters it
//! back to the jobs exchange with the routing key of the following hop:
//!
//! ```text
//! jobs ─xlsx─▶ work.xlsx ─nack─▶ retry ─xlsx────▶ retry.xlsx.1 (1 s)  ─xlsx.r2─▶ jobs ─▶ work.xlsx
//!                                      ─xlsx.r2─▶ retry.xlsx.2 (5 s)  ─xlsx.r3─▶ jobs ─▶ work.xlsx
//!                                      ─xlsx.r3─▶ retry.xlsx.3 (30 s) ─xlsx.r4─▶ jobs ─▶ work.xlsx
//!                                      ─xlsx.r4─▶ dlq
//! ```
//!
//! The attempt number is the work queue's `rejected` count in `x-death` plus one,
//! so it survives worker crashes and is never set by a worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::{Config, QueueType};
use crate::render::Format;

/// How long connecting may take before the broker counts as down: the API must
/// start (and accept jobs into the outbox) while RabbitMQ is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one publish may take, from taking a channel (a reconnect
/// included) through `basic_publish` to the broker's confirm. A broker under a
/// memory or disk alarm stops reading its sockets: without one deadline over
/// the whole publish, the outbox sweep would hold its row locks and its
/// PostgreSQL connection for as long as the alarm lasts.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed reconnect, publishes fail at once for this long instead of
/// each one paying a connect attempt (the outbox relay retries them).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Publishing channels on the one connection; confirms are pipelined on each.
const PUBLISH_CHANNELS: usize = 4;
/// Header naming why a message was put into the DLQ by a worker directly
/// (permanent failure, expiry) rather than by the retry chain.
pub const DLQ_REASON_HEADER: &str = "x-artefatos-reason";

/// Failures talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached (refused, timed out, connection lost).
    #[error("RabbitMQ unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error (channel closed, precondition failed).
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take responsibility for a message.
    #[error("RabbitMQ did not confirm the publish of job {0}")]
    Nacked(Uuid),
    /// No confirm arrived within [`CONFIRM_TIMEOUT`].
    #[error("RabbitMQ did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    /// A message whose body is not a job id: nothing can be done with it.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The names and arguments of every exchange and queue of one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    namespace: String,
    retry_delays: Vec<Duration>,
    queue_type: QueueType,
    delivery_limit: u32,
}

impl Topology {
    /// Reads the namespace and retry settings; declares for every format
    /// regardless of which ones this process consumes.
    pub fn new(config: &Config) -> Self {
        Topology {
            namespace: config.namespace.clone(),
            retry_delays: config.worker.retry_delays.clone(),
            queue_type: config.worker.queue_type,
            delivery_limit: config.worker.delivery_limit,
        }
    }

    /// The direct exchange jobs are published to, routed by format.
    pub fn exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }

    /// The direct exchange failed attempts are dead-lettered into.
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.namespace)
    }

    /// The durable queue a format's workers consume.
    pub fn work_queue(&self, format: Format) -> String {
        format!("{}.work.{}", self.namespace, format.as_str())
    }

    /// The retry queue of `hop` (1-based), holding a message for its delay.
    pub fn retry_queue(&self, format: Format, hop: usize) -> String {
        format!("{}.retry.{}.{}", self.namespace, format.as_str(), hop)
    }

    /// Where jobs end that exhausted their attempts or can never succeed.
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.namespace)
    }

    /// Attempts in all: the first one plus one per retry delay.
    pub fn max_attempts(&self) -> u32 {
        self.retry_delays.len() as u32 + 1
    }

    /// The routing key a new job is published with: the format's name.
    pub fn routing_key(&self, format: Format) -> String {
        self.hop_key(format, 1)
    }

    /// The routing key a message carries while it waits for attempt `hop + 1`;
    /// `hop == retries + 1` routes to the DLQ.
    fn hop_key(&self, format: Format, hop: usize) -> String {
        if hop <= 1 {
            format.as_str().to_string()
        } else {
            format!("{}.r{hop}", format.as_str())
        }
    }

    fn queue_args(&self, with_delivery_limit: bool) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        };
        args.insert("x-queue-type".into(), long_string(kind));
        if self.queue_type == QueueType::Quorum {
            // Quorum queues dead-letter at most once by default: a message
            // could vanish between a work queue and its retry queue. At least
            // once (which needs reject-publish overflow) keeps it until the
            // target confirms; a duplicate is harmless to the consumers.
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
        }
        if with_delivery_limit && self.queue_type == QueueType::Quorum {
            // A quorum queue counts redeliveries itself (RabbitMQ 4 defaults to 20
            // and then drops or dead-letters); set it deliberately, above our own
            // retry count, so it only catches a message that crashes every worker.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
        }
        args
    }

    /// Declares exchanges, queues and bindings for every format. Idempotent:
    /// the API calls it before publishing so no routing key is ever unbound.
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for exchange in [self.exchange(), self.retry_exchange()] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        let queue_options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let dlq = self.dlq();
        channel
            .queue_declare(dlq.as_str().into(), queue_options, self.queue_args(false))
            .await?;
        let retries = self.retry_delays.len();
        for format in Format::ALL {
            let work = self.work_queue(format);
            let mut args = self.queue_args(true);
            args.insert(
                "x-dead-letter-exchange".into(),
                long_string(&self.retry_exchange()),
            );
            channel
                .queue_declare(work.as_str().into(), queue_options, args)
                .await?;
            // New jobs and every returning hop land in the work queue.
            for hop in 1..=retries + 1 {
                self.bind(channel, &work, &self.exchange(), &self.hop_key(format, hop))
                    .await?;
            }
            for (index, delay) in self.retry_delays.iter().enumerate() {
                let hop = index + 1;
                let queue = self.retry_queue(format, hop);
                let mut args = self.queue_args(false);
                let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
                args.insert(
                    "x-dead-letter-exchange".into(),
                    long_string(&self.exchange()),
                );
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    long_string(&self.hop_key(format, hop + 1)),
                );
                channel
                    .queue_declare(queue.as_str().into(), queue_options, args)
                    .await?;
                self.bind(
                    channel,
                    &queue,
                    &self.retry_exchange(),
                    &self.hop_key(format, hop),
                )
                .await?;
            }
            // The last failed attempt carries the key of a hop that does not exist.
            self.bind(
                channel,
                &dlq,
                &self.retry_exchange(),
                &self.hop_key(format, retries + 1),
            )
            .await?;
        }
        Ok(())
    }

    async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), QueueError> {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

/// Opens a connection, failing within [`CONNECT_TIMEOUT`] when the broker is down.
pub async fn connect(amqp_url: &str) -> Result<Connection, QueueError> {
    let properties = ConnectionProperties::default().with_connection_name("artefatos".into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(amqp_url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(QueueError::Unavailable(err.to_string())),
        Err(_) => Err(QueueError::Unavailable(format!(
            "no connection within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// The properties of a job message: persistent, identified by the job id.
fn job_properties(job_id: Uuid) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("text/plain".into())
        .with_message_id(job_id.to_string().into())
}

/// Publishes job ids with publisher confirms over one lazily (re)built connection.
///
/// Cheap to clone; every clone shares the connection. Confirms are pipelined:
/// the lock is held only to pick a channel, never across a confirm.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    amqp_url: String,
    topology: Topology,
    link: Mutex<Link>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    channels: Vec<Channel>,
    last_failure: Option<Instant>,
}

impl Link {
    fn usable(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.status().connected())
            && !self.channels.is_empty()
            && self.channels.iter().all(|c| c.status().connected())
    }
}

impl Publisher {
    /// Connects and declares the topology. Fails fast (see [`CONNECT_TIMEOUT`])
    /// when the broker is down; use [`Publisher::lazy`] to start without it.
    pub async fn connect(config: &Config) -> Result<Publisher, QueueError> {
        let publisher = Publisher::lazy(config);
        publisher.channel().await?;
        Ok(publisher)
    }

    /// A publisher that connects on first use: lets the API start while the
    /// broker is down, its relay publishing once it returns.
    pub fn lazy(config: &Config) -> Publisher {
        Publisher {
            inner: Arc::new(PublisherInner {
                amqp_url: config.amqp_url.clone(),
                topology: Topology::new(config),
                link: Mutex::new(Link::default()),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The topology this publisher declared.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Returns a confirm-mode channel, reconnecting (once, bounded by
    /// [`CONNECT_TIMEOUT`]) when the connection was lost.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut link = self.inner.link.lock().await;
        if !link.usable() {
            if let Some(at) = link.last_failure
                && at.elapsed() < RECONNECT_BACKOFF
            {
                return Err(QueueError::Unavailable(
                    "reconnect failed moments ago".into(),
                ));
            }
            match self.open().await {
                Ok((connection, channels)) => {
                    *link = Link {
                        connection: Some(connection),
                        channels,
                        last_failure: None,
                    };
                }
                Err(err) => {
                    *link = Link {
                        last_failure: Some(Instant::now()),
                        ..Link::default()
                    };
                    return Err(err);
                }
            }
        }
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % link.channels.len();
        Ok(link.channels[index].clone())
    }

    async fn open(&self) -> Result<(Connection, Vec<Channel>), QueueError> {
        let connection = connect(&self.inner.amqp_url).await?;
        let mut channels = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        self.inner.topology.declare(&channels[0]).await?;
        Ok((connection, channels))
    }

    /// Forgets the connection so the next call rebuilds it.
    async fn invalidate(&self) {
        let mut link = self.inner.link.lock().await;
        if !link.usable() {
            *link = Link {
                last_failure: link.last_failure,
                ..Link::default()
            };
        }
    }

    /// Publishes a job id and resolves once the broker confirmed it (persistent
    /// message, body and message id = the job id, routing key = the format).
    /// A lost connection is rebuilt once before giving up; the whole of it,
    /// reconnect included, within [`CONFIRM_TIMEOUT`].
    pub async fn publish(&self, job_id: Uuid, format: Format) -> Result<(), QueueError> {
        let key = self.inner.topology.routing_key(format);
        let exchange = self.inner.topology.exchange();
        let attempt = async {
            match self
                .publish_to(&exchange, &key, job_id, job_properties(job_id))
                .await
            {
                Err(QueueError::Amqp(_)) | Err(QueueError::Unavailable(_)) => {
                    self.invalidate().await;
                    self.publish_to(&exchange, &key, job_id, job_properties(job_id))
                        .await
                }
                other => other,
            }
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, attempt)
            .await
            .unwrap_or(Err(QueueError::ConfirmTimeout(CONFIRM_TIMEOUT)))
    }

    async fn publish_to(
        &self,
        exchange: &str,
        key: &str,
        job_id: Uuid,
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        confirmed_publish(&channel, exchange, key, job_id, properties).await
    }

    /// Health probe: the broker is reachable and the topology declared.
    pub async fn check(&self) -> Result<(), QueueError> {
        self.channel().await.map(|_| ())
    }
}

/// Publishes one job message on a confirm-mode channel and waits for its
/// confirm; `basic_publish` and the confirm together within [`CONFIRM_TIMEOUT`].
pub async fn confirmed_publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    job_id: Uuid,
    properties: BasicProperties,
) -> Result<(), QueueError> {
    let body = job_id.to_string();
    let publish = async {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?;
        confirm.await
    };
    match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
        Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(()),
        Ok(Ok(_)) => Err(QueueError::Nacked(job_id)),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(QueueError::ConfirmTimeout(CONFIRM_TIMEOUT)),
    }
}

/// Opens a consuming channel on a format's work queue, with the prefetch that
/// bounds how many deliveries a worker holds (its renderer pool's size).
pub async fn consume(
    connection: &Connection,
    topology: &Topology,
    format: Format,
    prefetch: u16,
    consumer_tag: &str,
) -> Result<(Channel, lapin::Consumer), QueueError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    topology.declare(&channel).await?;
    channel
        .basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            topology.work_queue(format).as_str().into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// The job id a message carries in its body.
pub fn job_id_of(body: &[u8]) -> Result<Uuid, QueueError> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|text| Uuid::parse_str(text.trim()).ok())
        .ok_or_else(|| {
            QueueError::Malformed(format!(
                "body is not a job id: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(64)])
            ))
        })
}

/// One entry of a message's `x-death` history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Death {
    pub queue: String,
    pub reason: String,
    pub count: u64,
    /// When the broker first dead-lettered it from `queue` (seconds since the epoch).
    pub time: Option<u64>,
}

/// The `x-death` history the broker wrote on a dead-lettered message.
pub fn deaths(properties: &BasicProperties) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => {
                let get = |k: &str| table.inner().get(k);
                Some(Death {
                    queue: get("queue").and_then(text_of).unwrap_or_default(),
                    reason: get("reason").and_then(text_of).unwrap_or_default(),
                    count: get("count").and_then(integer_of).unwrap_or(0),
                    time: get("time").and_then(integer_of),
                })
            }
            _ => None,
        })
        .collect()
}

/// The attempt a delivery of `work_queue` is: one more than the times the work
/// queue rejected it. Read from the broker's `x-death`, never from a header a
/// worker sets.
pub fn attempt(properties: &BasicProperties, work_queue: &str) -> u32 {
    let rejected: u64 = deaths(properties)
        .iter()
        .filter(|d| d.queue == work_queue && d.reason == "rejected")
        .map(|d| d.count)
        .sum();
    u32::try_from(rejected)
        .unwrap_or(u32::MAX)
        .saturating_add(1)
}

fn text_of(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn integer_of(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::Timestamp(n) => Some(n),
        _ => None,
    }
}

/// Puts a DLQ record for a job that fails without going through the retry
/// chain (permanent error, expiry): the job id, the reason, and whatever
/// `x-death` history the delivery already had. Confirmed before returning, so
/// the caller may ack the delivery afterwards.
pub async fn publish_dlq_record(
    channel: &Channel,
    topology: &Topology,
    job_id: Uuid,
    reason: &str,
    delivery_properties: &BasicProperties,
) -> Result<(), QueueError> {
    let mut headers = delivery_properties.headers().clone().unwrap_or_default();
    headers.insert(DLQ_REASON_HEADER.into(), long_string(reason));
    let properties = job_properties(job_id).with_headers(headers);
    // The default exchange routes by queue name.
    confirmed_publish(channel, "", &topology.dlq(), job_id, properties).await
}

/// Why a DLQ message is there: the worker's reason header, else the last
/// `x-death` reason of the work queue.
pub fn dlq_reason(properties: &BasicProperties) -> String {
    if let Some(reason) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DLQ_REASON_HEADER))
        .and_then(text_of)
    {
        return reason;
    }
    deaths(properties)
        .first()
        .map(|d| format!("{} after {} attempts", d.reason, d.count))
        .unwrap_or_else(|| "unknown".into())
}

/// Messages ready in a queue, by passive declare (fails if the queue does not
/// exist): feeds the `artefatos_queue_depth` gauge KEDA scales on.
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, QueueError> {
    let declared = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    fn config() -> Config {
        Config::from_vars(&Default::default()).unwrap()
    }

    fn death(queue: &str, reason: &str, count: AMQPValue) -> AMQPValue {
        let mut table = FieldTable::default();
        table.insert("queue".into(), long_string(queue));
        table.insert("reason".into(), long_string(reason));
        table.insert("count".into(), count);
        AMQPValue::FieldTable(table)
    }

    #[test]
    fn names_live_under_the_namespace() {
        let topology = Topology::new(&config());
        assert_eq!(topology.exchange(), "artefatos.jobs");
        assert_eq!(topology.work_queue(Format::Xlsx), "artefatos.work.xlsx");
        assert_eq!(topology.dlq(), "artefatos.dlq");
        assert_eq!(topology.routing_key(Format::Pdf), "pdf");
        assert_eq!(topology.hop_key(Format::Xlsx, 4), "xlsx.r4");
        assert_eq!(topology.max_attempts(), 4);
    }

    #[test]
    fn the_attempt_counts_only_the_work_queue_rejections() {
        let mut deaths = FieldArray::default();
        deaths.push(death(
            "ns.retry.xlsx.2",
            "expired",
            AMQPValue::LongLongInt(1),
        ));
        deaths.push(death("ns.work.xlsx", "rejected", AMQPValue::LongLongInt(2)));
        let mut headers = FieldTable::default();
        headers.insert("x-death".into(), AMQPValue::FieldArray(deaths));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(attempt(&properties, "ns.work.xlsx"), 3);
        assert_eq!(attempt(&BasicProperties::default(), "ns.work.xlsx"), 1);
    }

    #[test]
    fn a_body_that_is_not_a_job_id_is_malformed() {
        let id = Uuid::new_v4();
        assert_eq!(job_id_of(id.to_string().as_bytes()).unwrap(), id);
        assert!(matches!(job_id_of(b"hello"), Err(QueueError::Malformed(_))));
    }
}
