//! No acknowledged write is lost when a single-node server is SIGKILLed while producers
//! are running: every acknowledged record is read back at its acknowledged offset with its
//! value, after each of 20 kills and restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrolog_client::{
    Acks, Admin, Consumer, ConsumerConfig, OffsetQuery, Producer, ProducerConfig, ProducerRecord,
    StartOffset,
};
use ferrolog_tests::{Server, init_logging};

const TOPIC: &str = "durable";
const PARTITIONS: u32 = 3;
const KILLS: usize = 20;
const PRODUCERS: usize = 3;

/// (partition, offset) -> value of every acknowledged record.
type Acked = Arc<Mutex<BTreeMap<(u32, i64), String>>>;

async fn produce_until_stopped(
    server_address: String,
    producer_id: usize,
    round: usize,
    acked: Acked,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut config = ProducerConfig::new(ferrolog_client::ClientConfig::with_brokers([
        server_address,
    ]));
    config.acks = Acks::All;
    config.linger_ms = 1;
    // Records in flight when the server dies fail fast instead of retrying for minutes.
    config.delivery_timeout_ms = 1_500;
    let Ok(producer) = Producer::connect(config).await else {
        return;
    };
    let mut in_flight = tokio::task::JoinSet::new();
    // Bounded: at most this many records per producer per round.
    for seq in 0..200_000u64 {
        let value = format!("r{round}-p{producer_id}-{seq}");
        let record = ProducerRecord::new(TOPIC, Bytes::from(value.clone()))
            .with_key(Bytes::from(format!("k{seq}")));
        if *stop.borrow() {
            break;
        }
        let delivery = tokio::select! {
            d = producer.send(record) => d,
            _ = stop.changed() => break,
        };
        let acked = Arc::clone(&acked);
        in_flight.spawn(async move {
            if let Ok(meta) = delivery.await {
                let previous = acked
                    .lock()
                    .expect("lock")
                    .insert((meta.partition, meta.offset), value.clone());
                assert!(
                    previous.is_none(),
                    "offset {}:{} acknowledged twice",
                    meta.partition,
                    meta.offset
                );
            }
        });
        if seq % 64 == 0 {
            tokio::task::yield_now().await;
        }
        while in_flight.len() > 2_000 {
            in_flight.join_next().await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
}

async fn read_everything(server: &Server) -> anyhow::Result<BTreeMap<(u32, i64), String>> {
    let admin = Admin::connect(server.client_config()).await?;
    let mut consumer = Consumer::connect(ConsumerConfig::new(server.client_config())).await?;
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        let latest = admin.list_offsets(TOPIC, p, OffsetQuery::Latest).await?;
        ends.insert(p, latest.high_watermark);
        consumer.assign(TOPIC, p, StartOffset::Earliest).await?;
    }
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ends
        .iter()
        .any(|(p, end)| consumer.position(TOPIC, *p).unwrap_or(0) < *end)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "reading back took over 60 s"
        );
        for r in consumer.poll(Duration::from_millis(200)).await? {
            let value =
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            anyhow::ensure!(
                seen.insert((r.partition, r.offset), value).is_none(),
                "offset read twice"
            );
        }
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_repeated_sigkill() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path())?;
    Admin::connect(server.client_config())
        .await?
        .create_topic(TOPIC, PARTITIONS as i32, 1, Default::default())
        .await?;
    let acked: Acked = Arc::default();

    for round in 0..KILLS {
        tracing::info!(
            round,
            "producers run, then the server is killed without warning"
        );
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|id| {
                tokio::spawn(produce_until_stopped(
                    server.grpc_address.clone(),
                    id,
                    round,
                    Arc::clone(&acked),
                    stop_rx.clone(),
                ))
            })
            .collect();
        let run_ms = 150 + (round as u64 * 37) % 400;
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        let before_kill = acked.lock().expect("lock").len();
        server = tokio::task::spawn_blocking(move || server.restart_after_kill()).await??;
        // Stop sending; wait (bounded) for the in-flight records to resolve.
        stop.send_replace(true);
        for p in producers {
            tokio::time::timeout(Duration::from_secs(30), p).await??;
        }

        tracing::info!(
            round,
            "every acknowledged record is at its offset after restart"
        );
        let on_disk = read_everything(&server).await?;
        let acked_now = acked.lock().expect("lock").clone();
        let mut lost = Vec::new();
        for ((p, offset), value) in &acked_now {
            match on_disk.get(&(*p, *offset)) {
                Some(found) if found == value => {}
                other => lost.push(format!("{p}:{offset} acked {value:?}, found {other:?}")),
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged records lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        // Offsets are dense: no gap below the high watermark.
        for p in 0..PARTITIONS {
            let offsets: Vec<i64> = on_disk
                .keys()
                .filter(|(q, _)| *q == p)
                .map(|(_, o)| *o)
                .collect();
            assert!(
                offsets.iter().enumerate().all(|(i, o)| i as i64 == *o),
                "partition {p} has a gap"
            );
        }
        tracing::info!(
            round,
            acked_before_kill = before_kill,
            acked_total = acked_now.len(),
            on_disk = on_disk.len(),
            "round verified"
        );
    }
    assert!(
        acked.lock().expect("lock").len() > 1000,
        "the workload acknowledged too little to mean anything"
    );
    Ok(())
}
