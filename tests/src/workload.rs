//! The workload the history checker judges: an acks=all producer of uniquely numbered
//! records (`h-<id>`, spread round-robin over the partitions) running on its own thread
//! while a test breaks things, and readers that take everything back at the end.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferrolog_client::{
    Acks, Admin, ClientConfig, Compression, Consumer, ConsumerConfig, OffsetQuery, Producer,
    ProducerConfig, ProducerRecord, StartOffset,
};

use crate::history::{Ack, Read};
use crate::{run_cli_within, stdout};

/// Upper bound on records per run, so a test that never stops its workload still ends.
const MAX_RECORDS: u64 = 200_000;
/// Pause between sends: keeps the log small enough to read back quickly.
const SEND_PAUSE: Duration = Duration::from_millis(2);
/// How long one record may take to be acknowledged, retries included.
const DELIVERY_TIMEOUT_MS: u64 = 60_000;
/// How long [`read_to_high_watermark`] may take to read everything.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// How long one poll of that reader waits for records.
const READ_POLL: Duration = Duration::from_millis(200);

/// What the producer saw: the acknowledgements, and how many sends failed.
#[derive(Debug)]
pub struct Outcome {
    pub acks: Vec<Ack>,
    pub failed: usize,
}

/// A running producer; [`Workload::stop`] ends it and collects its outcome.
pub struct Workload {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    thread: JoinHandle<anyhow::Result<Outcome>>,
}

impl Workload {
    /// Starts producing to `topic` (partitions `0..partitions`) through `brokers`.
    pub fn start(brokers: Vec<String>, topic: &str, partitions: u32) -> Self {
        Self::start_with(ClientConfig::with_brokers(brokers), topic, partitions)
    }

    /// Like [`Workload::start`], with the client's settings (timeouts) chosen.
    pub fn start_with(client: ClientConfig, topic: &str, partitions: u32) -> Self {
        Self::start_numbered(client, topic, partitions, 0)
    }

    /// Like [`Workload::start_with`], numbering records from `first_id`: workloads run one
    /// after another on one topic (each started after the previous one stopped) stay one
    /// history when each starts above every id the ones before it could have sent.
    pub fn start_numbered(
        client: ClientConfig,
        topic: &str,
        partitions: u32,
        first_id: u64,
    ) -> Self {
        Self::start_compressed(client, topic, partitions, first_id, Compression::None)
    }

    /// Like [`Workload::start_numbered`], the producer compressing every batch with `codec`.
    pub fn start_compressed(
        client: ClientConfig,
        topic: &str,
        partitions: u32,
        first_id: u64,
        codec: Compression,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let topic = topic.to_owned();
        let ids = first_id..first_id.saturating_add(MAX_RECORDS);
        let thread = {
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                produce(client, codec, &topic, partitions, ids, &stop, acknowledged)
            })
        };
        Self {
            stop,
            acknowledged,
            thread,
        }
    }

    /// Records acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// Waits (up to `deadline`) until `count` more records than `from` are acknowledged,
    /// and returns the count then: the workload makes progress.
    pub fn wait_progress(
        &self,
        from: u64,
        count: u64,
        deadline: Duration,
        phase: &str,
    ) -> anyhow::Result<u64> {
        crate::wait_until(&format!("acknowledged writes {phase}"), deadline, || {
            let now = self.acknowledged();
            (now >= from + count).then_some(now)
        })
    }

    /// How many ids one workload may use: the next workload of a history starts at least
    /// this far above the previous one's first id.
    pub const IDS_PER_RUN: u64 = MAX_RECORDS;

    /// Stops sending and waits for every outstanding acknowledgement (bounded).
    pub fn stop(self) -> anyhow::Result<Outcome> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the producer thread panicked"))?
    }
}

fn produce(
    client: ClientConfig,
    codec: Compression,
    topic: &str,
    partitions: u32,
    ids: Range<u64>,
    stop: &AtomicBool,
    acknowledged: Arc<AtomicU64>,
) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut config = ProducerConfig::new(client);
        config.acks = Acks::All;
        config.linger_ms = 1;
        config.delivery_timeout_ms = DELIVERY_TIMEOUT_MS;
        config.compression = codec;
        let producer = Producer::connect(config).await?;
        // Each acknowledgement is counted as it arrives, so a test can watch progress.
        let mut outcomes = Vec::new();
        let limit = Duration::from_millis(DELIVERY_TIMEOUT_MS + 30_000);
        for id in ids {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let record = ProducerRecord::new(topic, Bytes::from(format!("h-{id}")))
                .with_partition((id % u64::from(partitions)) as u32);
            let delivery = producer.send(record).await;
            let acknowledged = Arc::clone(&acknowledged);
            outcomes.push(tokio::spawn(async move {
                match tokio::time::timeout(limit, delivery).await {
                    Ok(Ok(meta)) => {
                        acknowledged.fetch_add(1, Ordering::AcqRel);
                        Some(Ack {
                            id,
                            partition: meta.partition,
                            offset: meta.offset,
                        })
                    }
                    _ => None,
                }
            }));
            tokio::time::sleep(SEND_PAUSE).await;
        }
        let mut acks = Vec::new();
        let mut failed = 0;
        for outcome in outcomes {
            match outcome.await.context("a delivery task panicked")? {
                Some(ack) => acks.push(ack),
                None => failed += 1,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), producer.close()).await;
        Ok(Outcome { acks, failed })
    })
}

/// Reads every record of `topic` partitions `0..partitions` through `broker`, from the
/// beginning until 3 s pass without a new one.
pub fn read_all(broker: &str, topic: &str, partitions: u32) -> anyhow::Result<Vec<Read>> {
    let mut reads = Vec::new();
    for partition in 0..partitions {
        let out = run_cli_within(
            broker,
            &[
                "consume",
                topic,
                "--from-beginning",
                "--partition",
                &partition.to_string(),
                "--timeout-ms",
                "3000",
                "--format",
                "{offset} {value}",
            ],
            None,
            Duration::from_secs(120),
        )?;
        ensure!(
            out.status.success(),
            "consume of {topic}-{partition} via {broker} failed: {}",
            crate::stderr(&out)
        );
        for line in stdout(&out).lines() {
            let Some((offset, value)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(offset), Some(Ok(id))) = (
                offset.parse::<i64>(),
                value.strip_prefix("h-").map(str::parse::<u64>),
            ) else {
                bail!("unexpected record {line:?} in {topic}-{partition}");
            };
            reads.push(Read {
                partition,
                offset,
                id,
            });
        }
    }
    Ok(reads)
}

/// Reads every record of `topic` partitions `0..partitions` below each partition's high
/// watermark (as its leader reports it when the read starts) with the client's consumer,
/// within 60 s. Faster than [`read_all`], which waits for a quiet spell per partition, so a
/// test can check the whole history after every fault.
pub fn read_to_high_watermark(
    client: ClientConfig,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<Vec<Read>> {
    let from = BTreeMap::new();
    Ok(read_from_to_high_watermark(client, topic, partitions, &from)?.0)
}

/// Like [`read_to_high_watermark`], starting each partition at its offset in `from` (the
/// earliest when absent); also returns the high watermarks it read up to, where the next
/// read of a test that checks its history piece by piece starts.
pub fn read_from_to_high_watermark(
    client: ClientConfig,
    topic: &str,
    partitions: u32,
    from: &BTreeMap<u32, i64>,
) -> anyhow::Result<(Vec<Read>, BTreeMap<u32, i64>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build the reader's runtime")?;
    runtime.block_on(async move {
        let admin = Admin::connect(client.clone()).await?;
        let mut consumer = Consumer::connect(ConsumerConfig::new(client)).await?;
        let mut ends = BTreeMap::new();
        for partition in 0..partitions {
            let latest = admin
                .list_offsets(topic, partition, OffsetQuery::Latest)
                .await?;
            ends.insert(partition, latest.high_watermark);
            let start = match from.get(&partition) {
                Some(offset) => StartOffset::Offset(*offset),
                None => StartOffset::Earliest,
            };
            consumer.assign(topic, partition, start).await?;
        }
        let started = Instant::now();
        let mut reads = Vec::new();
        while ends
            .iter()
            .any(|(p, end)| consumer.position(topic, *p).unwrap_or(0) < *end)
        {
            ensure!(
                started.elapsed() < READ_DEADLINE,
                "reading {topic} back took over {READ_DEADLINE:?}: {} records read, ends {ends:?}",
                reads.len()
            );
            for record in consumer.poll(READ_POLL).await? {
                let value = record.value.as_deref().unwrap_or_default();
                let id = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.strip_prefix("h-"))
                    .and_then(|v| v.parse::<u64>().ok())
                    .with_context(|| {
                        format!(
                            "unexpected record {value:?} at {topic}-{}@{}",
                            record.partition, record.offset
                        )
                    })?;
                reads.push(Read {
                    partition: record.partition,
                    offset: record.offset,
                    id,
                });
            }
        }
        Ok((reads, ends))
    })
}
