//! Log compaction on three real nodes (RF=3): after cleaning, each key's latest value is
//! readable on every replica and the cleaned part of each replica's log holds at most one
//! record per key; tombstones vanish after `delete.retention.ms`; and SIGKILLs while the
//! cleaners run lose no latest value and leave no half-swapped segment.
//!
//! Each replica's log is checked from its own files: once while the cluster runs (a raw,
//! read-only scan of the segment files, retried when a swap races it), and at the end with
//! `ferrolog_log::Log::open` on each stopped node's directory, which also runs the crash
//! recovery a restarted broker would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use ferrolog_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use ferrolog_log::{BatchIter, Compression, Log, LogConfig, Offset, decode_records};
use ferrolog_tests::{Cluster, http_get, init_logging, metric_sum, wait_until};

const TOPIC: &str = "kv";
const KEYS: usize = 100;
const UPDATES: usize = 10_000;
/// The last update of these keys is a tombstone.
const DELETED_KEYS: usize = 10;
const DELETE_RETENTION_MS: u64 = 3_000;
const KILLS: usize = 10;
const UPDATES_PER_KILL_ROUND: usize = 600;
const CLEANING_DEADLINE: Duration = Duration::from_secs(120);
const CREATE_DEADLINE: Duration = Duration::from_secs(60);

/// The latest value written for each key; `None` for a tombstone.
type Latest = BTreeMap<String, Option<String>>;

fn key(k: usize) -> String {
    format!("key-{k:03}")
}

/// Sends `updates` (key, value) with acks=all through one producer, zstd-compressed so the
/// cleaner rebuilds compressed batches, and fails unless every one is acknowledged.
fn produce(brokers: &str, updates: &[(String, Option<String>)]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build the producer's runtime")?;
    runtime.block_on(async {
        let mut config = ProducerConfig::new(ClientConfig::with_brokers(
            brokers.split(',').map(str::to_owned),
        ));
        config.acks = Acks::All;
        config.linger_ms = 5;
        config.compression = Compression::Zstd;
        config.delivery_timeout_ms = 60_000;
        let producer = Producer::connect(config)
            .await
            .context("connect producer")?;
        let mut deliveries = Vec::with_capacity(updates.len());
        for (key, value) in updates {
            let record = ProducerRecord {
                topic: TOPIC.to_owned(),
                partition: Some(0),
                key: Some(Bytes::from(key.clone())),
                value: value.clone().map(Bytes::from),
                headers: Vec::new(),
                timestamp_ms: None,
            };
            deliveries.push(producer.send(record).await);
        }
        for delivery in deliveries {
            tokio::time::timeout(Duration::from_secs(90), delivery)
                .await
                .context("a delivery timed out")?
                .context("a delivery failed")?;
        }
        producer.close().await;
        anyhow::Ok(())
    })
}

/// Update `i`'s value: its number, then 192 pseudo-random hex digits, which compress to
/// about half, so the log is large enough for a throttled cleaning to take a while.
fn value(i: usize) -> String {
    let mut state = i as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = format!("v{i}-");
    for _ in 0..12 {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    out
}

/// `count` updates cycling over the keys from `first_key` on, numbered from `first`.
fn updates(
    first: usize,
    count: usize,
    first_key: usize,
    latest: &mut Latest,
) -> Vec<(String, Option<String>)> {
    (first..first + count)
        .map(|i| {
            let k = key(first_key + i % (KEYS - first_key));
            let v = Some(value(i));
            latest.insert(k.clone(), v.clone());
            (k, v)
        })
        .collect()
}

/// Every record of a partition directory's segment files, read without opening the log
/// (the broker owns it): fails when a swap races the scan, and the caller retries.
fn scan_records(dir: &Path) -> anyhow::Result<Vec<ferrolog_log::Record>> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let mut records = Vec::new();
    for path in logs {
        let bytes = std::fs::read(&path)?;
        for batch in BatchIter::new(&bytes) {
            let (_, batch) = batch?;
            records.extend(decode_records(batch)?);
        }
    }
    Ok(records)
}

fn text(bytes: &Option<Bytes>) -> Option<String> {
    bytes
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Fails unless `records` (one replica's, in offset order) end with each key's latest
/// value, hold at most one record per key below `clean_end`, and, with `tombstones_gone`,
/// hold no tombstone below `clean_end`.
fn check_replica(
    records: &[ferrolog_log::Record],
    latest: &Latest,
    clean_end: Offset,
    tombstones_gone: bool,
    what: &str,
) -> anyhow::Result<()> {
    let mut last: Latest = BTreeMap::new();
    let mut in_clean_part: BTreeMap<String, i64> = BTreeMap::new();
    let mut previous = -1;
    for record in records {
        anyhow::ensure!(
            record.offset.0 > previous,
            "{what}: offsets go back at {}",
            record.offset
        );
        previous = record.offset.0;
        let key = text(&record.key).with_context(|| format!("{what}: a record without key"))?;
        let value = text(&record.value);
        if record.offset < clean_end {
            if let Some(before) = in_clean_part.insert(key.clone(), record.offset.0) {
                bail!(
                    "{what}: {key} at {before} and {} in the cleaned part",
                    record.offset
                );
            }
            if tombstones_gone && value.is_none() {
                bail!(
                    "{what}: tombstone of {key} at {} outlived delete.retention.ms",
                    record.offset
                );
            }
        }
        last.insert(key, value);
    }
    for (key, value) in latest {
        match (last.get(key), value) {
            (Some(found), _) if found == value => {}
            (None, None) => {}
            (found, _) => bail!("{what}: {key} reads {found:?}, its latest is {value:?}"),
        }
    }
    Ok(())
}

fn cleaner_runs(cluster: &Cluster, id: i32) -> f64 {
    http_get(&cluster.node(id).http_address, "/metrics")
        .map(|(_, body)| metric_sum(&body, "ferrolog_log_cleaner_runs_total", &[]))
        .unwrap_or(0.0)
}

fn partition_dir(cluster: &Cluster, id: i32) -> PathBuf {
    cluster.data_dir(id).join(format!("{TOPIC}-0"))
}

fn leftover_cleaner_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
            .count()
    })
}

#[test]
fn compaction_keeps_every_latest_value_on_every_replica_through_sigkills() -> anyhow::Result<()> {
    init_logging();
    let mut cluster = Cluster::start(
        3,
        &[
            "--log-cleaner-backoff-ms",
            "100",
            // Slow enough that a cleaning of this log takes about a second, so the kills
            // below land in the middle of cleanings.
            "--log-cleaner-io-max-bytes-per-second",
            "262144",
        ],
    )?;
    let ids = cluster.ids();
    let via = cluster.wait_for_leader(CREATE_DEADLINE)?;
    let retention = format!("delete.retention.ms={DELETE_RETENTION_MS}");
    let args = [
        "topic",
        "create",
        TOPIC,
        "--partitions",
        "1",
        "--replication-factor",
        "3",
        "--config",
        "cleanup.policy=compact",
        "--config",
        "segment.bytes=8192",
        "--config",
        "min.cleanable.dirty.ratio=0.1",
        "--config",
        &retention,
    ];
    wait_until("the compacted topic is created", CREATE_DEADLINE, || {
        let out = cluster.cli(via, &args, None).ok()?;
        (out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already exists"))
            .then_some(())
    })?;

    tracing::info!(
        "phase: {UPDATES} updates over {KEYS} keys, then tombstones for {DELETED_KEYS} keys"
    );
    let mut latest = Latest::new();
    let brokers = cluster.brokers_csv();
    produce(&brokers, &updates(0, UPDATES, 0, &mut latest))?;
    let tombstones: Vec<(String, Option<String>)> = (0..DELETED_KEYS)
        .map(|k| {
            latest.insert(key(k), None);
            (key(k), None)
        })
        .collect();
    produce(&brokers, &tombstones)?;
    // Later updates of the other keys roll the tombstones' segment: the active one is never
    // cleaned.
    let mut next = UPDATES;
    produce(&brokers, &updates(next, 1_000, DELETED_KEYS, &mut latest))?;
    next += 1_000;

    tracing::info!("phase: every replica's cleaner compacts its own log");
    for &id in &ids {
        wait_until(&format!("node {id} cleans"), CLEANING_DEADLINE, || {
            (cleaner_runs(&cluster, id) >= 1.0).then_some(())
        })?;
    }
    for &id in &ids {
        let dir = partition_dir(&cluster, id);
        let records = wait_until(
            &format!("node {id}'s log is compacted"),
            CLEANING_DEADLINE,
            || {
                let records = scan_records(&dir).ok()?;
                (records.len() < UPDATES / 4).then_some(records)
            },
        )?;
        // The live scan knows no cleaner checkpoint: it checks the latest values only.
        check_replica(
            &records,
            &latest,
            Offset(0),
            false,
            &format!("node {id} (live)"),
        )?;
        tracing::info!(
            "node {id}: {} records left of {}",
            records.len(),
            next + DELETED_KEYS
        );
    }

    tracing::info!("phase: {KILLS} SIGKILLs while the cleaners work on fresh updates");
    let mut kills_mid_cleaning = 0;
    for round in 0..KILLS {
        let round_updates = updates(next, UPDATES_PER_KILL_ROUND, DELETED_KEYS, &mut latest);
        produce(&cluster.live_brokers_csv(), &round_updates)?;
        next += UPDATES_PER_KILL_ROUND;
        let victim = ids[round % ids.len()];
        // Vary the moment within the cleaning the fresh updates start.
        std::thread::sleep(Duration::from_millis(150 * (round as u64 % 5)));
        cluster.kill(victim)?;
        if leftover_cleaner_files(&partition_dir(&cluster, victim)) > 0 {
            kills_mid_cleaning += 1;
        }
        cluster.start_node(victim)?;
        cluster.wait_ready(victim, CREATE_DEADLINE)?;
    }
    tracing::info!("{kills_mid_cleaning} of {KILLS} kills left cleaned or swap files behind");

    tracing::info!("phase: tombstones vanish after delete.retention.ms; every replica converges");
    std::thread::sleep(Duration::from_millis(DELETE_RETENTION_MS));
    // One more round so that every replica has fresh dirt to clean and a high watermark
    // past the last kill round's segment.
    produce(
        &cluster.live_brokers_csv(),
        &updates(next, 1_000, DELETED_KEYS, &mut latest),
    )?;
    for &id in &ids {
        let dir = partition_dir(&cluster, id);
        wait_until(
            &format!("node {id}'s tombstones are gone"),
            CLEANING_DEADLINE,
            || {
                let records = scan_records(&dir).ok()?;
                let tombstones = records.iter().filter(|r| r.value.is_none()).count();
                (tombstones == 0).then_some(())
            },
        )?;
    }

    tracing::info!(
        "phase: each stopped replica's log, opened with recovery, holds every latest value"
    );
    for &id in &ids {
        cluster.kill(id)?;
    }
    for &id in &ids {
        let dir = partition_dir(&cluster, id);
        let log = Log::open(&dir, LogConfig::default()).context("open a replica's log")?;
        let clean_end = log.cleaner_first_dirty();
        let mut records = Vec::new();
        let mut from = log.log_start_offset();
        let end = log.log_end_offset();
        while from < end {
            let read = log.read(from, 1024 * 1024, end)?;
            anyhow::ensure!(!read.batches.is_empty(), "node {id}: no progress at {from}");
            for batch in BatchIter::new(&read.batches) {
                let (header, batch) = batch?;
                records.extend(decode_records(batch)?);
                from = header.next_offset();
            }
        }
        check_replica(&records, &latest, clean_end, true, &format!("node {id}"))?;
        anyhow::ensure!(
            clean_end > Offset(UPDATES as i64),
            "node {id} cleaned up to {clean_end}"
        );
        anyhow::ensure!(
            leftover_cleaner_files(&dir) == 0,
            "node {id}: cleaner files left"
        );
        tracing::info!(
            "node {id}: {} records, cleaned below {clean_end}, log end {end}",
            records.len()
        );
    }
    Ok(())
}
