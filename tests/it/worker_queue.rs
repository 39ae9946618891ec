//! The RabbitMQ topology on the real broker: retries by dead-lettering with the
//! attempt read from `x-death`, the DLQ after the last attempt, publishing
//! while the broker is unreachable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use artefatos::Config;
use artefatos::render::Format;
use artefatos::storage::queue::{self, Publisher, Topology};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use uuid::Uuid;

fn config(extra: &[(&str, &str)]) -> Config {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert(
        "ARTEFATOS_NAMESPACE".into(),
        format!("test-{}", Uuid::new_v4().simple()),
    );
    vars.insert("ARTEFATOS_RETRY_DELAYS".into(), "100ms,200ms,300ms".into());
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    Config::from_vars(&vars).expect("test config")
}

async fn delete_namespace(channel: &lapin::Channel, topology: &Topology) {
    let mut queues = vec![topology.dlq()];
    for format in Format::ALL {
        queues.push(topology.work_queue(format));
        for hop in 1..topology.max_attempts() as usize {
            queues.push(topology.retry_queue(format, hop));
        }
    }
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
    for e in [topology.exchange(), topology.retry_exchange()] {
        let _ = channel
            .exchange_delete(e.as_str().into(), Default::default())
            .await;
    }
}

#[tokio::test]
async fn a_rejected_job_comes_back_with_growing_attempts_then_lands_in_the_dlq() {
    retry_chain(config(&[])).await;
}

#[tokio::test]
async fn quorum_queues_retry_and_dead_letter_the_same_way() {
    retry_chain(config(&[("ARTEFATOS_QUEUE_TYPE", "quorum")])).await;
}

/// Rejects one job four times and checks each hop, then the DLQ record.
async fn retry_chain(config: Config) {
    let topology = Topology::new(&config);
    let publisher = Publisher::connect(&config).await.expect("publisher");
    let job = Uuid::new_v4();
    publisher
        .publish(job, Format::Xlsx)
        .await
        .expect("confirmed");

    let connection = queue::connect(&config.amqp_url).await.expect("connect");
    let (channel, mut consumer) = queue::consume(&connection, &topology, Format::Xlsx, 1, "t")
        .await
        .expect("consume");
    let work = topology.work_queue(Format::Xlsx);
    let mut seen = Vec::new();
    let mut arrivals = Vec::new();
    for _ in 0..4 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("redelivered within the retry delay")
            .expect("stream open")
            .expect("delivery");
        assert_eq!(queue::job_id_of(&delivery.data).unwrap(), job);
        seen.push(queue::attempt(&delivery.properties, &work));
        arrivals.push(Instant::now());
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await
            .expect("nack");
    }
    assert_eq!(seen, vec![1, 2, 3, 4]);
    // Each hop waited at least its retry queue's TTL.
    assert!(arrivals[1] - arrivals[0] >= Duration::from_millis(100));
    assert!(arrivals[3] - arrivals[2] >= Duration::from_millis(300));

    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Some(message) = channel
            .basic_get(topology.dlq().as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            break message;
        }
        assert!(Instant::now() < deadline, "no DLQ message");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(queue::job_id_of(&dead.delivery.data).unwrap(), job);
    let deaths = queue::deaths(&dead.delivery.properties);
    let rejected = deaths
        .iter()
        .find(|d| d.queue == work && d.reason == "rejected")
        .expect("work queue rejections in x-death");
    assert_eq!(rejected.count, 4);
    assert!(deaths.iter().any(|d| d.reason == "expired"));
    dead.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    assert_eq!(
        queue::queue_depth(&channel, &topology.dlq()).await.unwrap(),
        0
    );
    assert_eq!(queue::queue_depth(&channel, &work).await.unwrap(), 0);
    delete_namespace(&channel, &topology).await;
}

#[tokio::test]
async fn the_publisher_fails_fast_while_the_broker_is_unreachable() {
    // A closed port: nothing listens on 1 of loopback.
    let config = config(&[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")]);
    let started = Instant::now();
    assert!(Publisher::connect(&config).await.is_err());
    let lazy = Publisher::lazy(&config);
    assert!(lazy.publish(Uuid::new_v4(), Format::Pdf).await.is_err());
    assert!(lazy.check().await.is_err());
    assert!(started.elapsed() < queue::CONNECT_TIMEOUT * 3);
}

#[tokio::test]
async fn declaring_twice_is_harmless_and_depth_counts_ready_messages() {
    let config = config(&[]);
    let topology = Topology::new(&config);
    let publisher = Publisher::connect(&config).await.expect("publisher");
    for _ in 0..3 {
        publisher
            .publish(Uuid::new_v4(), Format::Pdf)
            .await
            .unwrap();
    }
    let connection = queue::connect(&config.amqp_url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    topology.declare(&channel).await.expect("second declare");
    let depth = queue::queue_depth(&channel, &topology.work_queue(Format::Pdf))
        .await
        .unwrap();
    assert_eq!(depth, 3);
    delete_namespace(&channel, &topology).await;
}
