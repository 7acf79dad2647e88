//! The workload the history checker judges: an acks=all producer of uniquely numbered
//! records (`h-<id>`, spread round-robin over the partitions) running on its own thread
//! while a test breaks things, and a reader that takes everything back at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferrolog_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};

use crate::history::{Ack, Read};
use crate::{run_cli_within, stdout};

/// Upper bound on records per run, so a test that never stops its workload still ends.
const MAX_RECORDS: u64 = 200_000;
/// Pause between sends: keeps the log small enough to read back quickly.
const SEND_PAUSE: Duration = Duration::from_millis(2);
/// How long one record may take to be acknowledged, retries included.
const DELIVERY_TIMEOUT_MS: u64 = 60_000;

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
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let topic = topic.to_owned();
        let thread = {
            let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
            std::thread::spawn(move || produce(client, &topic, partitions, &stop, acknowledged))
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
    topic: &str,
    partitions: u32,
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
        let producer = Producer::connect(config).await?;
        // Each acknowledgement is counted as it arrives, so a test can watch progress.
        let mut outcomes = Vec::new();
        let limit = Duration::from_millis(DELIVERY_TIMEOUT_MS + 30_000);
        for id in 0..MAX_RECORDS {
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

/// Parses `ferrolog topic describe --json` output.
pub fn parse_describe(out: &std::process::Output) -> anyhow::Result<serde_json::Value> {
    ensure!(
        out.status.success(),
        "describe failed: {}",
        crate::stderr(out)
    );
    serde_json::from_str(&stdout(out)).context("describe printed no JSON")
}

/// (leader, ISR size) of every partition in `ferrolog topic describe --json` output.
pub fn leaders_and_isr_sizes(describe: &serde_json::Value) -> Option<Vec<(i64, usize)>> {
    describe["partitions"].as_array().map(|ps| {
        ps.iter()
            .map(|p| {
                (
                    p["leader"].as_i64().unwrap_or(-1),
                    p["isr"].as_array().map_or(0, Vec::len),
                )
            })
            .collect()
    })
}
