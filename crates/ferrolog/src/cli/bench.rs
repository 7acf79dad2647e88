//! `ferrolog bench produce|consume|create-topics`: throughput and latency through the real client, as an
//! application sees them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use ferrolog_client::{
    Acks, Admin, ClientError, Compression, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, StartOffset,
};
use ferrolog_proto::v1::ErrorCode;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::ClientArgs;

/// Unacknowledged records per producer task; bounds the benchmark's own memory.
const MAX_PENDING_PER_PRODUCER: usize = 200_000;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce N records of B bytes and report throughput and ack latency
    Produce(ProduceBench),
    /// Read a topic from the beginning and report throughput
    Consume(ConsumeBench),
    /// Create N topics one after another and report the latency of each commit
    CreateTopics(CreateTopicsBench),
    /// Measure how long this disk takes to fsync an append, with one writer and several at
    /// once (no server needed)
    Fsync(super::fsync_bench::FsyncBench),
}

#[derive(Debug, Args)]
pub struct CreateTopicsBench {
    /// Topics to create
    #[arg(long, default_value_t = 200)]
    count: u32,
    /// Name prefix; a random suffix keeps runs apart
    #[arg(long, default_value = "bench-create")]
    prefix: String,
    /// Partitions per topic
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Delete the topics afterwards
    #[arg(long)]
    delete: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// What the produce benchmark's record values look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    Random,
    Text,
}

#[derive(Debug, Args)]
pub struct ProduceBench {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value size in bytes
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Producer batch size in bytes (batch_size_bytes)
    #[arg(long, default_value_t = 1024 * 1024)]
    batch_size: usize,
    /// Producer linger in milliseconds
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    #[arg(long, default_value = "all", value_parser = super::parse_acks)]
    acks: Acks,
    /// Compress each batch: none, gzip, snappy, lz4 or zstd
    #[arg(long, default_value = "none", value_parser = super::parse_compression)]
    compression: Compression,
    /// Record values: `random` (incompressible) or `text` (JSON-like text, each record
    /// different, which compresses as real event data does)
    #[arg(long, value_enum, default_value_t = Payload::Random)]
    payload: Payload,
    /// Concurrent producers (each with its own connection)
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Produce requests in flight per partition [default: 5, the client's]
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// A plain producer instead of the default idempotent one (which acks=all implies), to
    /// compare the two
    #[arg(long)]
    no_idempotence: bool,
    /// A transactional producer: each producer takes this id (suffixed `-N` for producer N)
    /// and commits a transaction every --transaction-ms
    #[arg(long, conflicts_with = "no_idempotence")]
    transactional_id: Option<String>,
    /// How long each transaction stays open before it commits, with --transactional-id
    #[arg(long, default_value_t = 100, requires = "transactional_id")]
    transaction_ms: u64,
    /// Target records/s over all producers; 0 sends as fast as possible. Latency is only
    /// meaningful below saturation: at full speed it is mostly time queued in the client.
    #[arg(long, default_value_t = 0)]
    throughput: u64,
    /// Partitions of the topic if the benchmark creates it
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Replication factor of the topic if the benchmark creates it [default: the
    /// cluster's, min(3, brokers)]
    #[arg(long, default_value_t = 0)]
    replication_factor: i32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ConsumeBench {
    #[arg(long)]
    topic: String,
    /// Stop after this many records (default: everything present at the start)
    #[arg(long)]
    records: Option<u64>,
    /// Fetch size per partition request
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    fetch_max_bytes: u32,
    #[command(flatten)]
    client: ClientArgs,
}

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Prints one result line set; the format is stable so scripts can grep it.
fn report(
    what: &str,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency_us: Option<&Histogram<u64>>,
) {
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    println!(
        "{what}: {records} records, {:.1} MB in {:.2} s",
        bytes as f64 / 1e6,
        secs
    );
    println!(
        "throughput: {:.0} records/s, {:.1} MB/s",
        records as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    if let Some(h) = latency_us {
        println!(
            "latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs .. 10 min with 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("create latency histogram")
}

async fn ensure_topic(
    client: &ClientArgs,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
) -> anyhow::Result<()> {
    let admin = Admin::connect(client.config()).await?;
    match admin
        .create_topic(topic, partitions, replication_factor, Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create topic '{topic}'")),
    }
}

async fn run_produce(args: ProduceBench) -> anyhow::Result<()> {
    if args.producers == 0 || args.record_size == 0 {
        bail!("--producers and --record-size must be at least 1");
    }
    ensure_topic(
        &args.client,
        &args.topic,
        args.partitions,
        args.replication_factor,
    )
    .await?;
    // Incompressible-looking payload, built once and shared (Bytes clones are free).
    let payload = Bytes::from(
        (0..args.record_size)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    let bar = Arc::new(progress(args.records));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..u64::from(args.producers) {
        let share = args.records / u64::from(args.producers)
            + u64::from(p < args.records % u64::from(args.producers));
        let mut config = ProducerConfig::new(args.client.config());
        config.acks = args.acks;
        config.enable_idempotence = !args.no_idempotence;
        config.transactional_id = args.transactional_id.as_ref().map(|id| format!("{id}-{p}"));
        let transaction_every = Duration::from_millis(args.transaction_ms.max(1));
        config.compression = args.compression;
        config.batch_size_bytes = args.batch_size;
        config.linger_ms = args.linger_ms;
        if let Some(n) = args.max_in_flight {
            config.max_in_flight_per_partition = n.max(1);
        }
        let per_producer_rate = args.throughput as f64 / f64::from(args.producers);
        let (topic, payload, bar) = (args.topic.clone(), payload.clone(), Arc::clone(&bar));
        let (kind, record_size) = (args.payload, args.record_size);
        tasks.push(tokio::spawn(async move {
            let transactional = config.transactional_id.is_some();
            let producer = Producer::connect(config).await?;
            if transactional {
                producer.init_transactions().await?;
                producer.begin_transaction()?;
            }
            let mut transaction_started = Instant::now();
            // Acknowledgements are collected by their own task, which polls them as they
            // complete, so a record's latency is not inflated by the sender being busy or
            // asleep (pacing).
            let (acks_tx, acks_rx) = tokio::sync::mpsc::channel(MAX_PENDING_PER_PRODUCER);
            let collector = tokio::spawn(collect_acks(acks_rx, Arc::clone(&bar)));
            // Text records are built before the clock starts and cycled: formatting each one
            // as it is sent cost the producer more CPU than the codecs under test.
            let text_pool: Vec<Bytes> = match kind {
                Payload::Random => Vec::new(),
                Payload::Text => (0..TEXT_POOL_RECORDS)
                    .map(|j| text_record(p, j, record_size))
                    .collect(),
            };
            let paced_from = Instant::now();
            for i in 0..share {
                if per_producer_rate > 0.0 && i % 100 == 0 {
                    let due = paced_from + Duration::from_secs_f64(i as f64 / per_producer_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let value = match kind {
                    Payload::Random => payload.clone(),
                    Payload::Text => text_pool[(i % TEXT_POOL_RECORDS) as usize].clone(),
                };
                let sent_at = Instant::now();
                let delivery = producer
                    .send(ProducerRecord::new(topic.clone(), value))
                    .await;
                if acks_tx.send((sent_at, delivery)).await.is_err() {
                    break;
                }
                if transactional && transaction_started.elapsed() >= transaction_every {
                    producer.commit_transaction().await?;
                    producer.begin_transaction()?;
                    transaction_started = Instant::now();
                }
            }
            drop(acks_tx);
            if transactional {
                producer.commit_transaction().await?;
            }
            producer.flush().await?;
            let (histogram, first_error) = collector.await.context("ack collector panicked")??;
            producer.close().await;
            match first_error {
                Some(e) => Err(anyhow::Error::from(e).context("a record was not acknowledged")),
                None => Ok::<_, anyhow::Error>(histogram),
            }
        }));
    }
    let mut histogram = latency_histogram()?;
    for task in tasks {
        let h = task.await.context("producer task panicked")??;
        histogram.add(&h).context("merge histograms")?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    report(
        "produce",
        args.records,
        args.records * args.record_size as u64,
        elapsed,
        Some(&histogram),
    );
    Ok(())
}

/// Distinct text records each producer cycles through: more than a 1 MiB batch holds of 1 KiB
/// records, so no record repeats within a batch and a codec sees no easy duplicates.
const TEXT_POOL_RECORDS: u64 = 4096;

/// Words the text payload draws from: event-like field values.
const TEXT_WORDS: [&str; 32] = [
    "order",
    "created",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
    "customer",
    "premium",
    "standard",
    "express",
    "warehouse",
    "berlin",
    "paris",
    "madrid",
    "lisbon",
    "vienna",
    "payment",
    "card",
    "invoice",
    "pending",
    "approved",
    "declined",
    "item",
    "book",
    "lamp",
    "chair",
    "table",
    "phone",
    "cable",
    "shirt",
    "coffee",
    "tea",
];

/// Record `i` of producer `producer` as JSON-like text of exactly `size` bytes: field names
/// repeat as in real events, values vary from record to record (a xorshift stream seeded by
/// the record), so a codec finds what it finds in real event data, not one repeated value.
fn text_record(producer: u64, i: u64, size: usize) -> Bytes {
    let mut state = (producer << 40 ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut text = format!(r#"{{"id":{i},"producer":{producer},"events":["#);
    while text.len() < size {
        let r = next();
        let word = TEXT_WORDS[(r % 32) as usize];
        let other = TEXT_WORDS[((r >> 8) % 32) as usize];
        text.push_str(&format!(
            r#"{{"type":"{word}","by":"{other}-{}","amount":{}.{:02}}},"#,
            (r >> 16) % 1000,
            (r >> 26) % 500,
            (r >> 36) % 100
        ));
    }
    text.truncate(size);
    Bytes::from(text)
}

/// Awaits acknowledgements as they complete and records send-to-ack latency.
async fn collect_acks(
    mut acks: tokio::sync::mpsc::Receiver<(Instant, ferrolog_client::DeliveryFuture)>,
    bar: Arc<ProgressBar>,
) -> anyhow::Result<(Histogram<u64>, Option<ClientError>)> {
    let mut histogram = latency_histogram()?;
    let mut first_error = None;
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            next = acks.recv(), if open => match next {
                Some((sent_at, delivery)) => {
                    pending.push(async move { (delivery.await, sent_at) });
                }
                None => open = false,
            },
            Some((result, sent_at)) = pending.next(), if !pending.is_empty() => {
                settle(result, sent_at, &mut histogram, &mut first_error, &bar);
            }
        }
    }
    Ok((histogram, first_error))
}

fn settle(
    result: Result<ferrolog_client::RecordMetadata, ClientError>,
    sent_at: Instant,
    histogram: &mut Histogram<u64>,
    first_error: &mut Option<ClientError>,
    bar: &ProgressBar,
) {
    match result {
        Ok(_) => {
            histogram.saturating_record(sent_at.elapsed().as_micros() as u64);
            bar.inc(1);
        }
        Err(e) => {
            first_error.get_or_insert(e);
        }
    }
}

async fn run_consume(args: ConsumeBench) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let metadata = admin
        .metadata(&[args.topic.as_str()])
        .await
        .context("look up topic")?;
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name == args.topic)
        .with_context(|| format!("unknown topic '{}'", args.topic))?;
    let mut available = 0u64;
    for p in &topic.partitions {
        let latest = admin
            .list_offsets(
                &args.topic,
                p.partition as u32,
                ferrolog_client::OffsetQuery::Latest,
            )
            .await?;
        available += (latest.high_watermark - latest.log_start_offset).max(0) as u64;
    }
    let target = args.records.unwrap_or(available);
    if target == 0 {
        bail!(
            "topic '{}' is empty; run `ferrolog bench produce` first",
            args.topic
        );
    }
    let mut config = ConsumerConfig::new(args.client.config());
    config.fetch_max_bytes = args.fetch_max_bytes;
    let mut consumer = Consumer::connect(config).await?;
    for p in &topic.partitions {
        consumer
            .assign(&args.topic, p.partition as u32, StartOffset::Earliest)
            .await?;
    }
    let bar = progress(target);
    let mut histogram = latency_histogram()?;
    let (mut records, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while records < target {
        if Instant::now() > deadline {
            bail!("only {records} of {target} records arrived within 10 minutes");
        }
        let poll_started = Instant::now();
        let batch = consumer.poll(Duration::from_millis(500)).await?;
        histogram.saturating_record(poll_started.elapsed().as_micros() as u64);
        for r in &batch {
            bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
        }
        records += batch.len() as u64;
        bar.inc(batch.len() as u64);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    report("consume", records, bytes, elapsed, None);
    println!(
        "poll latency: p50 {:.2} ms, p99 {:.2} ms",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0
    );
    Ok(())
}

/// Create-topic latency as an administrator sees it: the request reaches a node, which
/// forwards it to the active controller, which commits it through the Raft quorum, and
/// the node answers once its own partitions exist.
async fn run_create_topics(args: CreateTopicsBench) -> anyhow::Result<()> {
    let admin = Admin::connect(args.client.config()).await?;
    let run_id = std::process::id();
    let mut histogram = latency_histogram()?;
    let bar = progress(u64::from(args.count));
    let started = Instant::now();
    let mut names = Vec::new();
    for i in 0..args.count {
        let name = format!("{}-{run_id}-{i}", args.prefix);
        let t = Instant::now();
        admin
            .create_topic(&name, args.partitions, 0, Default::default())
            .await
            .with_context(|| format!("create topic '{name}'"))?;
        histogram.saturating_record(t.elapsed().as_micros() as u64);
        bar.inc(1);
        names.push(name);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    println!(
        "create-topics: {} topics in {:.2} s",
        args.count,
        elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0
    );
    if args.delete {
        for name in &names {
            admin
                .delete_topic(name)
                .await
                .with_context(|| format!("delete topic '{name}'"))?;
        }
    }
    Ok(())
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::CreateTopics(args) => run_create_topics(args).await,
        BenchCommand::Produce(args) => run_produce(args).await,
        BenchCommand::Consume(args) => run_consume(args).await,
        BenchCommand::Fsync(args) => {
            tokio::task::spawn_blocking(move || super::fsync_bench::run(args))
                .await
                .context("the fsync benchmark stopped")?
        }
    }
}
