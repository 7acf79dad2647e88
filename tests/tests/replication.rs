//! Partition replication with real processes: a topic with replication factor 3 keeps every
//! acknowledged record while a follower is SIGKILLed and restarted, refuses `acks=all`
//! writes while its ISR is smaller than `min.insync.replicas`, loses nothing when its
//! leadership is moved, and makes a replica that holds records no other replica has (a
//! divergent suffix, the log divergence scenario of Kafka's KIP-101) truncate them and copy
//! the new leader's log instead.
//!
//! Everything an operator would do goes through the `ferrolog` CLI (`topic create`,
//! `partition elect-leader`, `produce`, `consume`). The partition's state is read with the
//! harness's typed describe (`ferrolog_tests::describe`, the admin API). Two things use
//! `ferrolog-client` directly, because the CLI cannot show them: the offset at which each
//! record of a long-running producer was acknowledged, and a refused `acks=all` write (the
//! client retries `NOT_ENOUGH_REPLICAS` until its delivery timeout, which the CLI leaves at
//! 120 s, past the harness's 60 s bound on a CLI run).
//!
//! A topic description answers from the node it is sent to: leader, epoch, replicas and ISR
//! are the cluster's metadata, the offsets are that node's own replica. Describing through
//! each replica in turn is how these tests see every replica's log end offset.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferrolog_client::{Acks, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use ferrolog_tests::describe::{self, PartitionDescription};
use ferrolog_tests::{
    Cluster, assert_ok, http_get, init_logging, metric_sum, run_cli_within, stderr, stdout,
    wait_until,
};

/// Every topic here has one partition: replication is per partition, and one partition
/// keeps offsets and order easy to state.
const PARTITION: u32 = 0;
const PARTITION_ARG: &str = "0";
const PARTITION_ID: i32 = 0;
const REPLICATION_FACTOR: usize = 3;
/// Server arguments of the tests that want a follower dropped from the ISR quickly.
const FAST_ISR_SHRINK: [&str; 2] = ["--replica-lag-time-max-ms", "2000"];

/// How long the metadata quorum may take to elect its leader.
const ELECTION_DEADLINE: Duration = Duration::from_secs(30);
/// How long `topic create` may keep failing (e.g. while brokers still register).
const CREATE_DEADLINE: Duration = Duration::from_secs(30);
/// How long an ISR change (shrink or expand) may take to show in a topic description.
const ISR_DEADLINE: Duration = Duration::from_secs(30);
/// How long a leader move may take to show through a node once the command succeeded.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(15);
/// How long a replica may take to copy what the leader has.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);
/// The bound of one polling CLI run (create, elect), so a hung node cannot stall a wait.
const POLL_CLI_LIMIT: Duration = Duration::from_secs(10);
/// The bound of one `consume` run.
const CONSUME_CLI_LIMIT: Duration = Duration::from_secs(60);
/// `consume --timeout-ms` when the number of records to read is known: only a safety net.
const CONSUME_IDLE: Duration = Duration::from_secs(10);
/// Room for records beyond the expected ones when a read must show that there are none.
const PROBE_EXTRA: usize = 20;
/// `consume --timeout-ms` of such a read: it ends when nothing more arrives for this long.
const PROBE_IDLE: Duration = Duration::from_secs(5);
/// How long a client-side wait for deliveries may exceed the delivery timeout.
const DELIVERY_MARGIN: Duration = Duration::from_secs(30);

/// One partition as a topic description through one node shows it, its ISR sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionState {
    leader: i32,
    leader_epoch: i32,
    replicas: Vec<i32>,
    /// Sorted, so it compares as a set.
    isr: Vec<i32>,
    log_start_offset: i64,
    log_end_offset: i64,
    high_watermark: i64,
}

impl PartitionState {
    /// Whether there is a leader and every one of the three replicas is in sync.
    fn has_full_isr(&self) -> bool {
        let mut replicas = self.replicas.clone();
        replicas.sort_unstable();
        self.leader >= 0 && replicas.len() == REPLICATION_FACTOR && self.isr == replicas
    }

    /// The replicas other than the leader, in replica order.
    fn followers(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|&id| id != self.leader)
            .collect()
    }
}

impl From<&PartitionDescription> for PartitionState {
    fn from(p: &PartitionDescription) -> Self {
        let mut isr = p.isr.clone();
        isr.sort_unstable();
        Self {
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            replicas: p.replicas.clone(),
            isr,
            log_start_offset: p.log_start_offset,
            log_end_offset: p.log_end_offset,
            high_watermark: p.high_watermark,
        }
    }
}

/// Partition 0 of `topic` as node `via` describes it: the cluster's metadata, with the
/// offsets of node `via`'s own replica.
fn describe_partition(cluster: &Cluster, via: i32, topic: &str) -> anyhow::Result<PartitionState> {
    let described = cluster.describe(via, topic)?;
    Ok(describe::partition(&described, PARTITION_ID)?.into())
}

/// Polls the description through node `via` until `done` holds, and returns that state.
fn wait_for_partition(
    cluster: &Cluster,
    via: i32,
    topic: &str,
    what: &str,
    deadline: Duration,
    mut done: impl FnMut(&PartitionState) -> bool,
) -> anyhow::Result<PartitionState> {
    let started = Instant::now();
    let mut last = String::from("no answer");
    let result = wait_until(what, deadline, || {
        match describe_partition(cluster, via, topic) {
            Ok(state) => {
                let finished = done(&state);
                last = format!("{state:?}");
                finished.then_some(state)
            }
            Err(error) => {
                last = format!("{error:#}");
                None
            }
        }
    });
    let state = result.with_context(|| format!("last describe via node {via}: {last}"))?;
    tracing::info!("{what}: after {:?} ({state:?})", started.elapsed());
    Ok(state)
}

/// Waits until the description through each of `replicas` shows that node's replica at
/// `log_end_offset`.
fn wait_for_log_end_offsets(
    cluster: &Cluster,
    topic: &str,
    replicas: &[i32],
    log_end_offset: i64,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last: BTreeMap<i32, String> = BTreeMap::new();
    let what = format!("replicas {replicas:?} to reach log end offset {log_end_offset}");
    let result = wait_until(&what, deadline, || {
        let mut all_there = true;
        for &id in replicas {
            match describe_partition(cluster, id, topic) {
                Ok(state) => {
                    all_there &= state.log_end_offset == log_end_offset;
                    last.insert(
                        id,
                        format!(
                            "log end {} high watermark {} leader {} epoch {} isr {:?}",
                            state.log_end_offset,
                            state.high_watermark,
                            state.leader,
                            state.leader_epoch,
                            state.isr
                        ),
                    );
                }
                Err(error) => {
                    all_there = false;
                    last.insert(id, format!("{error:#}"));
                }
            }
        }
        all_there.then_some(())
    });
    result.with_context(|| format!("last seen through each node: {last:?}"))?;
    tracing::info!("{what}: after {:?}", started.elapsed());
    Ok(())
}

/// Creates TOPIC with one partition, replication factor 3 and `min.insync.replicas`, retried
/// until it succeeds (before every broker registered, three replicas cannot be placed), and
/// waits until all three replicas are in sync and each has its local log.
fn create_replicated_topic(
    cluster: &Cluster,
    via: i32,
    topic: &str,
    min_insync_replicas: u32,
) -> anyhow::Result<PartitionState> {
    let replication_factor = REPLICATION_FACTOR.to_string();
    let min_insync = format!("min.insync.replicas={min_insync_replicas}");
    let args: &[&str] = &[
        "topic",
        "create",
        topic,
        "--partitions",
        "1",
        "--replication-factor",
        &replication_factor,
        "--config",
        &min_insync,
    ];
    let mut last_error = String::from("none");
    let result = wait_until(&format!("`topic create {topic}`"), CREATE_DEADLINE, || {
        match run_cli_within(cluster.address(via), args, None, POLL_CLI_LIMIT) {
            Ok(out) if out.status.success() => Some(()),
            // An attempt that timed out may still have been committed, and that counts.
            Ok(out) if stderr(&out).contains("already exists") => Some(()),
            Ok(out) => {
                last_error = format!("{}: {}", out.status, stderr(&out).trim());
                None
            }
            Err(error) => {
                last_error = format!("{error:#}");
                None
            }
        }
    });
    result.with_context(|| format!("last error: {last_error}"))?;
    let state = wait_for_partition(
        cluster,
        via,
        topic,
        &format!("{topic}: a leader and all three replicas in the ISR"),
        ISR_DEADLINE,
        PartitionState::has_full_isr,
    )?;
    wait_for_log_end_offsets(cluster, topic, &state.replicas, 0, ISR_DEADLINE)?;
    Ok(state)
}

/// `ferrolog produce TOPIC --partition 0 --acks ACKS` through node `via`, one record per line.
fn produce_lines(
    cluster: &Cluster,
    via: i32,
    topic: &str,
    acks: &str,
    lines: &[String],
) -> anyhow::Result<Output> {
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    cluster.cli(
        via,
        &[
            "produce",
            topic,
            "--partition",
            PARTITION_ARG,
            "--acks",
            acks,
        ],
        Some(&input),
    )
}

/// `prefix-00000`, `prefix-00001`, ...: zero-padded, so the values sort in send order.
fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:05}")).collect()
}

/// Reads partition 0 from the beginning with the CLI bootstrapped on node `via` (the client
/// fetches from the partition's leader), as (offset, value) pairs. Ends after
/// `max_messages` records or when nothing arrives for `idle`.
fn consume_all(
    cluster: &Cluster,
    via: i32,
    topic: &str,
    max_messages: usize,
    idle: Duration,
) -> anyhow::Result<Vec<(i64, String)>> {
    let max_messages = max_messages.to_string();
    let idle_ms = idle.as_millis().to_string();
    let args: &[&str] = &[
        "consume",
        topic,
        "--partition",
        PARTITION_ARG,
        "--from-beginning",
        "--max-messages",
        &max_messages,
        "--timeout-ms",
        &idle_ms,
        "--format",
        "{offset} {value}",
    ];
    let started = Instant::now();
    let out = run_cli_within(cluster.address(via), args, None, CONSUME_CLI_LIMIT)?;
    if !out.status.success() {
        bail!(
            "`consume {topic}` via node {via} failed ({}): {}",
            out.status,
            stderr(&out).trim()
        );
    }
    let records = stdout(&out)
        .lines()
        .map(|line| {
            let (offset, value) = line
                .split_once(' ')
                .with_context(|| format!("consumed line {line:?} is not `offset value`"))?;
            let offset = offset
                .parse::<i64>()
                .with_context(|| format!("consumed line {line:?} has no numeric offset"))?;
            Ok((offset, value.to_owned()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    tracing::info!(
        "read {} record(s) via node {via} in {:?}",
        records.len(),
        started.elapsed()
    );
    Ok(records)
}

/// Fails unless `records` are exactly `expected`, the first at offset 0, with no gap.
fn ensure_log_is(records: &[(i64, String)], expected: &[String], what: &str) -> anyhow::Result<()> {
    let expected: Vec<(i64, String)> = expected
        .iter()
        .enumerate()
        .map(|(offset, value)| (offset as i64, value.clone()))
        .collect();
    if records == expected.as_slice() {
        return Ok(());
    }
    let first_difference = records
        .iter()
        .zip(&expected)
        .position(|(found, wanted)| found != wanted)
        .unwrap_or_else(|| records.len().min(expected.len()));
    bail!(
        "{what}: {} record(s) where {} were expected; first difference at index \
         {first_difference}: found {:?}, expected {:?}",
        records.len(),
        expected.len(),
        records.get(first_difference),
        expected.get(first_difference)
    )
}

/// `partition elect-leader TOPIC 0 --leader TARGET` through node `via`, retried until it
/// succeeds (the metadata quorum may be electing its own leader), then waits until node
/// `via` shows `target` leading with an epoch above `epoch_before`, and returns that state.
fn elect_leader(
    cluster: &Cluster,
    via: i32,
    topic: &str,
    target: i32,
    epoch_before: i32,
    deadline: Duration,
) -> anyhow::Result<PartitionState> {
    let target_arg = target.to_string();
    let args: &[&str] = &[
        "partition",
        "elect-leader",
        topic,
        PARTITION_ARG,
        "--leader",
        &target_arg,
    ];
    let moved = |s: &PartitionState| s.leader == target && s.leader_epoch > epoch_before;
    let mut last_error = String::from("none");
    let what = format!("`partition elect-leader {topic} {PARTITION_ARG} --leader {target}`");
    let result = wait_until(&what, deadline, || {
        match run_cli_within(cluster.address(via), args, None, POLL_CLI_LIMIT) {
            Ok(out) if out.status.success() => return Some(()),
            Ok(out) => last_error = format!("{}: {}", out.status, stderr(&out).trim()),
            Err(error) => last_error = format!("{error:#}"),
        }
        // An attempt that failed to report back may still have been committed.
        describe_partition(cluster, via, topic)
            .ok()
            .filter(moved)
            .map(|_| ())
    });
    result.with_context(|| format!("last error: {last_error}"))?;
    wait_for_partition(
        cluster,
        via,
        topic,
        &format!("node {target} to lead {topic} with an epoch above {epoch_before}"),
        PROPAGATION_DEADLINE,
        moved,
    )
}

/// Whether an error text names the refusal of an `acks=all` write below
/// `min.insync.replicas`.
fn names_not_enough_replicas(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("not enough replicas") || text.contains("not_enough_replicas")
}

/// How a client-side producer spreads its sends over time.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// Pause after every this many records; 0 never pauses.
    every: usize,
    pause: Duration,
}

const UNPACED: Pacing = Pacing {
    every: 0,
    pause: Duration::ZERO,
};

/// The outcome of every record a client-side producer sent.
#[derive(Debug, Default)]
struct Delivered {
    /// Offset -> value of every acknowledged record.
    acked: BTreeMap<i64, String>,
    /// `value: error` of every record that failed.
    failures: Vec<String>,
}

/// Sends `values` to partition 0 with `ferrolog-client` (so each acknowledgement names its
/// offset) and waits, bounded, for every outcome. `progress` counts the records handed to
/// the producer so far.
fn produce_with_client(
    brokers: &[String],
    topic: &str,
    acks: Acks,
    values: &[String],
    delivery_timeout: Duration,
    pacing: Pacing,
    progress: &AtomicUsize,
) -> anyhow::Result<Delivered> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build the producer's tokio runtime")?;
    runtime.block_on(produce_async(
        brokers,
        topic,
        acks,
        values,
        delivery_timeout,
        pacing,
        progress,
    ))
}

async fn produce_async(
    brokers: &[String],
    topic: &str,
    acks: Acks,
    values: &[String],
    delivery_timeout: Duration,
    pacing: Pacing,
    progress: &AtomicUsize,
) -> anyhow::Result<Delivered> {
    let mut config = ProducerConfig::new(ClientConfig::with_brokers(brokers.iter().cloned()));
    config.acks = acks;
    config.linger_ms = 1;
    config.delivery_timeout_ms = u64::try_from(delivery_timeout.as_millis()).unwrap_or(u64::MAX);
    let producer = Producer::connect(config)
        .await
        .context("connect the producer")?;
    let mut deliveries = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let record =
            ProducerRecord::new(topic, Bytes::from(value.clone())).with_partition(PARTITION);
        deliveries.push((value, producer.send(record).await));
        progress.fetch_add(1, Ordering::Relaxed);
        if pacing.every > 0 && (index + 1) % pacing.every == 0 {
            tokio::time::sleep(pacing.pause).await;
        }
    }
    // Every delivery resolves within the delivery timeout; the margin covers the last request.
    let resolve_by = tokio::time::Instant::now() + delivery_timeout + DELIVERY_MARGIN;
    let mut delivered = Delivered::default();
    for (value, delivery) in deliveries {
        match tokio::time::timeout_at(resolve_by, delivery).await {
            Ok(Ok(meta)) => {
                if let Some(previous) = delivered.acked.insert(meta.offset, value.clone()) {
                    bail!(
                        "offset {} was acknowledged for both {previous:?} and {value:?}",
                        meta.offset
                    );
                }
            }
            Ok(Err(error)) => delivered.failures.push(format!("{value}: {error}")),
            Err(_) => delivered.failures.push(format!(
                "{value}: no outcome within {:?}",
                delivery_timeout + DELIVERY_MARGIN
            )),
        }
    }
    if tokio::time::timeout(DELIVERY_MARGIN, producer.close())
        .await
        .is_err()
    {
        tracing::warn!("the producer did not close within {DELIVERY_MARGIN:?}");
    }
    Ok(delivered)
}

#[test]
fn an_rf3_topic_keeps_every_acknowledged_record_while_a_follower_is_killed_and_restarted()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: three nodes that drop a silent follower from the ISR after 2 s, and an RF=3 topic \
         with min.insync.replicas=2"
    );
    const TOPIC: &str = "follower-restart";
    const RECORDS: usize = 3_000;
    // The follower dies once this many records were sent, so it misses the rest.
    const KILL_AFTER_SENT: usize = 500;
    const DOWN_TIME: Duration = Duration::from_secs(3);
    // 10 records every 25 ms: sending takes about 7.5 s, past the follower's restart.
    const PACING: Pacing = Pacing {
        every: 10,
        pause: Duration::from_millis(25),
    };
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

    let mut cluster = Cluster::start(3, &FAST_ISR_SHRINK)?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let created = create_replicated_topic(&cluster, controller, TOPIC, 2)?;
    let leader = created.leader;
    let victim = created
        .followers()
        .first()
        .copied()
        .context("an RF=3 partition has followers")?;

    tracing::info!(
        "phase: a producer sends {RECORDS} numbered records with acks=all to leader {leader}; \
         every acknowledged one must survive what happens to follower {victim}"
    );
    let brokers: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.address(id).to_owned())
        .collect();
    let values = numbered("rec", 0..RECORDS);
    let progress = Arc::new(AtomicUsize::new(0));
    let producer = {
        let progress = Arc::clone(&progress);
        std::thread::Builder::new()
            .name("acks-all-producer".into())
            .spawn(move || {
                produce_with_client(
                    &brokers,
                    TOPIC,
                    Acks::All,
                    &values,
                    DELIVERY_TIMEOUT,
                    PACING,
                    &progress,
                )
            })
            .context("spawn the producer thread")?
    };
    let started = Instant::now();
    wait_until(
        "the producer to send its first records",
        Duration::from_secs(30),
        || {
            (progress.load(Ordering::Relaxed) >= KILL_AFTER_SENT || producer.is_finished())
                .then_some(())
        },
    )?;
    ensure!(
        !producer.is_finished(),
        "the producer ended before the follower was killed: {:?}",
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("the producer thread panicked"))
    );

    let sent_at_kill = progress.load(Ordering::Relaxed);
    tracing::info!(
        "phase: SIGKILL of follower {victim} with {sent_at_kill} records sent, {:?} in: the leader \
         must drop it from the ISR and keep acknowledging with the other follower",
        started.elapsed()
    );
    cluster.kill(victim)?;
    let killed_at = Instant::now();
    // Watches the ISR while the follower is down; only reported, the shrink may come later.
    let mut left_isr_after = None;
    while killed_at.elapsed() < DOWN_TIME {
        if left_isr_after.is_none()
            && let Ok(state) = describe_partition(&cluster, leader, TOPIC)
            && !state.isr.contains(&victim)
        {
            left_isr_after = Some(killed_at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!(
        "follower {victim} left the ISR after {left_isr_after:?}; it restarts after {:?} down",
        killed_at.elapsed()
    );
    cluster.restart(victim)?;
    let restarted_at = Instant::now();
    let sent_at_restart = progress.load(Ordering::Relaxed);

    let delivered = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    tracing::info!(
        "producer done after {:?}: {} acknowledged, {} failed; {sent_at_kill} sent at the \
         kill, {sent_at_restart} at the restart",
        started.elapsed(),
        delivered.acked.len(),
        delivered.failures.len()
    );
    ensure!(
        delivered.failures.is_empty(),
        "{} of {RECORDS} acks=all records failed with two of three replicas up; first: {:?}",
        delivered.failures.len(),
        delivered.failures.first()
    );
    ensure!(
        delivered.acked.len() == RECORDS,
        "{} of {RECORDS} records acknowledged",
        delivered.acked.len()
    );
    // One partition, one request in flight: acknowledged offsets follow the send order.
    let in_offset_order: Vec<&String> = delivered.acked.values().collect();
    ensure!(
        in_offset_order.windows(2).all(|pair| pair[0] < pair[1]),
        "acknowledged offsets do not follow the send order"
    );

    tracing::info!("phase: the restarted follower catches up and rejoins the ISR");
    let rejoined = wait_for_partition(
        &cluster,
        leader,
        TOPIC,
        &format!("follower {victim} to rejoin the ISR"),
        CATCH_UP_DEADLINE,
        PartitionState::has_full_isr,
    )?;
    tracing::info!(
        "follower {victim} back in the ISR {:?} after its restart",
        restarted_at.elapsed()
    );
    let leader = rejoined.leader;
    let on_leader = wait_for_partition(
        &cluster,
        leader,
        TOPIC,
        "the leader's high watermark to reach its log end",
        CATCH_UP_DEADLINE,
        |s| s.log_end_offset >= 0 && s.high_watermark == s.log_end_offset,
    )?;
    let log_end = on_leader.log_end_offset;
    let highest_acked = delivered.acked.keys().next_back().copied().unwrap_or(-1);
    ensure!(
        log_end > highest_acked,
        "leader {leader} ends at {log_end}, below acknowledged offset {highest_acked}"
    );
    wait_for_log_end_offsets(
        &cluster,
        TOPIC,
        &rejoined.replicas,
        log_end,
        CATCH_UP_DEADLINE,
    )?;

    tracing::info!(
        "phase: every acknowledged record is read back from leader {leader} at its offset"
    );
    let records = consume_all(
        &cluster,
        leader,
        TOPIC,
        usize::try_from(log_end)?,
        CONSUME_IDLE,
    )?;
    let offsets_dense = records
        .iter()
        .zip(on_leader.log_start_offset..)
        .all(|((offset, _), wanted)| *offset == wanted);
    ensure!(
        offsets_dense && records.len() as i64 == log_end - on_leader.log_start_offset,
        "reading {TOPIC} from leader {leader} gave {} record(s) for offsets {}..{log_end}, or \
         with a gap",
        records.len(),
        on_leader.log_start_offset
    );
    let on_disk: BTreeMap<i64, String> = records.into_iter().collect();
    let mut lost = Vec::new();
    for (offset, value) in &delivered.acked {
        match on_disk.get(offset) {
            Some(found) if found == value => {}
            other => lost.push(format!("offset {offset} acked {value:?}, found {other:?}")),
        }
    }
    ensure!(
        lost.is_empty(),
        "{} acknowledged record(s) lost; first: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    tracing::info!(
        "all {RECORDS} acknowledged records are in place; {} extra record(s) from retries",
        on_disk.len().saturating_sub(RECORDS)
    );
    Ok(())
}

#[test]
fn acks_all_writes_are_refused_below_min_insync_and_accepted_when_a_replica_returns()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: five nodes (two can die without the metadata quorum) and an RF=3 topic with \
         min.insync.replicas=2; five records with acks=all while all is well"
    );
    const TOPIC: &str = "min-insync";
    // Long enough for several retries of the refused write, short enough to wait for.
    const REFUSAL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

    // Five nodes: every node is also a metadata voter, and the ISR shrink is committed by
    // the metadata quorum. With three nodes, killing both followers would take the quorum
    // with them and the ISR could never shrink.
    let mut cluster = Cluster::start(5, &FAST_ISR_SHRINK)?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let created = create_replicated_topic(&cluster, controller, TOPIC, 2)?;
    let leader = created.leader;
    let (first, second) = match created.followers().as_slice() {
        [first, second] => (*first, *second),
        other => bail!("an RF=3 partition has two followers, not {other:?}"),
    };
    let before = numbered("before", 0..5);
    assert_ok(&produce_lines(&cluster, leader, TOPIC, "all", &before)?);

    tracing::info!(
        "phase: both followers ({first}, {second}) are SIGKILLed: leader {leader} must shrink \
         the ISR to itself"
    );
    cluster.kill(first)?;
    cluster.kill(second)?;
    let killed_at = Instant::now();
    wait_for_partition(
        &cluster,
        leader,
        TOPIC,
        &format!("the ISR to shrink to [{leader}]"),
        ISR_DEADLINE,
        |s| s.leader == leader && s.isr == [leader],
    )?;
    tracing::info!(
        "ISR shrank to [{leader}] {:?} after the kills",
        killed_at.elapsed()
    );

    tracing::info!("phase: electing a dead follower, not in the ISR, is refused with a message");
    let first_arg = first.to_string();
    let refused_election = run_cli_within(
        cluster.address(leader),
        &[
            "partition",
            "elect-leader",
            TOPIC,
            PARTITION_ARG,
            "--leader",
            first_arg.as_str(),
        ],
        None,
        POLL_CLI_LIMIT,
    )?;
    ensure!(
        !refused_election.status.success(),
        "electing node {first}, outside the ISR, succeeded: {}",
        stdout(&refused_election)
    );
    ensure!(
        !stderr(&refused_election).trim().is_empty(),
        "electing node {first} failed without saying why"
    );
    tracing::info!("refused election: {}", stderr(&refused_election).trim());

    tracing::info!("phase: acks=all with an ISR of 1 < min.insync.replicas=2 must be refused");
    let refused = numbered("refused", 0..5);
    let attempt_started = Instant::now();
    let outcome = produce_with_client(
        &[cluster.address(leader).to_owned()],
        TOPIC,
        Acks::All,
        &refused,
        REFUSAL_DELIVERY_TIMEOUT,
        UNPACED,
        &AtomicUsize::new(0),
    )?;
    tracing::info!(
        "acks=all outcome after {:?}: {} acknowledged, failures {:?}",
        attempt_started.elapsed(),
        outcome.acked.len(),
        outcome.failures
    );
    ensure!(
        outcome.acked.is_empty(),
        "acks=all records were acknowledged with the ISR at [{leader}]: {:?}",
        outcome.acked
    );
    ensure!(
        outcome.failures.len() == refused.len(),
        "{} of {} refused records report a failure",
        outcome.failures.len(),
        refused.len()
    );
    let unexplained: Vec<&String> = outcome
        .failures
        .iter()
        .filter(|failure| !names_not_enough_replicas(failure))
        .collect();
    ensure!(
        unexplained.is_empty(),
        "refusals that do not name NOT_ENOUGH_REPLICAS: {unexplained:?}"
    );

    tracing::info!("phase: acks=1 needs only the leader and still succeeds");
    let acks_one = numbered("acks1", 0..5);
    assert_ok(&produce_lines(&cluster, leader, TOPIC, "1", &acks_one)?);

    tracing::info!("phase: follower {first} restarts, catches up and rejoins: the ISR is 2 again");
    cluster.restart(first)?;
    let restarted_at = Instant::now();
    let mut expected_isr = vec![leader, first];
    expected_isr.sort_unstable();
    wait_for_partition(
        &cluster,
        leader,
        TOPIC,
        &format!("the ISR to grow to {expected_isr:?}"),
        ISR_DEADLINE,
        |s| s.leader == leader && s.isr == expected_isr,
    )?;
    tracing::info!(
        "follower {first} rejoined the ISR {:?} after its restart",
        restarted_at.elapsed()
    );
    let after = numbered("after", 0..5);
    assert_ok(&produce_lines(&cluster, leader, TOPIC, "all", &after)?);

    tracing::info!("phase: every accepted record is in the log, in order");
    let on_leader = describe_partition(&cluster, leader, TOPIC)?;
    let records = consume_all(
        &cluster,
        leader,
        TOPIC,
        usize::try_from(on_leader.high_watermark)?,
        CONSUME_IDLE,
    )?;
    let expected: Vec<String> = before
        .iter()
        .chain(&acks_one)
        .chain(&after)
        .cloned()
        .collect();
    let accepted: Vec<String> = records
        .iter()
        .filter(|(_, value)| !value.starts_with("refused"))
        .map(|(_, value)| value.clone())
        .collect();
    ensure!(
        accepted == expected,
        "the accepted records read back {accepted:?}, expected {expected:?}"
    );
    // Kafka checks min.insync.replicas before appending, so it would show none of them.
    tracing::info!(
        "{} refused record(s) are in the log",
        records.len() - accepted.len()
    );
    Ok(())
}

#[test]
fn moving_the_leader_loses_no_acknowledged_record() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes and an RF=3 topic with every replica in sync");
    const TOPIC: &str = "leader-move";
    const HALF: usize = 500;

    let cluster = Cluster::start(3, &FAST_ISR_SHRINK)?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let created = create_replicated_topic(&cluster, controller, TOPIC, 2)?;
    let old_leader = created.leader;

    tracing::info!("phase: {HALF} records with acks=all to leader {old_leader}");
    let first_half = numbered("move", 0..HALF);
    assert_ok(&produce_lines(
        &cluster,
        old_leader,
        TOPIC,
        "all",
        &first_half,
    )?);
    let before = wait_for_partition(
        &cluster,
        old_leader,
        TOPIC,
        "a full ISR before the move",
        ISR_DEADLINE,
        PartitionState::has_full_isr,
    )?;
    let target = before
        .isr
        .iter()
        .copied()
        .find(|&id| id != old_leader)
        .context("the ISR has a member besides the leader")?;

    tracing::info!(
        "phase: leadership moves from {old_leader} to {target}: epoch {} must grow",
        before.leader_epoch
    );
    let move_started = Instant::now();
    let moved = elect_leader(
        &cluster,
        target,
        TOPIC,
        target,
        before.leader_epoch,
        ELECTION_DEADLINE,
    )?;
    let move_took = move_started.elapsed();

    tracing::info!("phase: {HALF} more records with acks=all, found at new leader {target}");
    let second_half = numbered("move", HALF..2 * HALF);
    assert_ok(&produce_lines(
        &cluster,
        target,
        TOPIC,
        "all",
        &second_half,
    )?);
    let first_write_after = move_started.elapsed();
    tracing::info!(
        "leader move {old_leader} -> {target} (epoch {} -> {}): visible after {move_took:?}, \
         next {HALF} records acknowledged after {first_write_after:?}",
        before.leader_epoch,
        moved.leader_epoch
    );

    tracing::info!(
        "phase: all {} records read from the new leader, in order",
        2 * HALF
    );
    let expected: Vec<String> = first_half.iter().chain(&second_half).cloned().collect();
    let records = consume_all(&cluster, target, TOPIC, expected.len(), CONSUME_IDLE)?;
    ensure_log_is(
        &records,
        &expected,
        &format!("the log read from new leader {target}"),
    )?;
    let still = describe_partition(&cluster, target, TOPIC)?;
    ensure!(
        still.leader == target,
        "leadership left {target} without being asked: {still:?}"
    );

    tracing::info!("phase: every replica, the old leader included, follows to the same log end");
    wait_for_log_end_offsets(
        &cluster,
        TOPIC,
        &moved.replicas,
        i64::try_from(expected.len())?,
        CATCH_UP_DEADLINE,
    )?;
    Ok(())
}

/// Waits until node `leader` leads with exactly `expected` below its high watermark and log
/// end, then reads the partition from it, leaving room for records beyond the expected
/// ones: exactly `expected` must come back, none starting with `forbidden_prefix`.
fn ensure_leader_holds_exactly(
    cluster: &Cluster,
    leader: i32,
    topic: &str,
    expected: &[String],
    forbidden_prefix: &str,
) -> anyhow::Result<()> {
    let end = i64::try_from(expected.len())?;
    wait_for_partition(
        cluster,
        leader,
        topic,
        &format!("leader {leader}'s log end and high watermark to be {end}"),
        CATCH_UP_DEADLINE,
        |s| s.leader == leader && s.log_end_offset == end && s.high_watermark == end,
    )?;
    let records = consume_all(
        cluster,
        leader,
        topic,
        expected.len() + PROBE_EXTRA,
        PROBE_IDLE,
    )?;
    let forbidden: Vec<&(i64, String)> = records
        .iter()
        .filter(|(_, value)| value.starts_with(forbidden_prefix))
        .collect();
    ensure!(
        forbidden.is_empty(),
        "leader {leader} serves records of the divergent suffix: {forbidden:?}"
    );
    ensure_log_is(
        &records,
        expected,
        &format!("the log read from leader {leader}"),
    )
}

/// KIP-101's log divergence: leader A appends records no follower has (acks=1) and goes
/// silent; follower B becomes leader without them and appends its own records at the same
/// offsets. When A returns it must find where its log and B's part (the end of A's epoch in
/// B's log), truncate its divergent suffix, and copy B's records: truncating to its high
/// watermark alone is not enough (KIP-101's second scenario), nor is keeping what it has.
///
/// A is paused (SIGSTOP) before B is resumed, not left running: otherwise B, still a
/// follower of A, would fetch the suffix from A in the milliseconds before the election
/// reaches it, and there would be no divergence to test.
#[test]
fn a_follower_with_a_divergent_suffix_truncates_to_the_new_leaders_log() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: three nodes that keep every replica in the ISR through the pauses below, and an \
         RF=3 topic with min.insync.replicas=1"
    );
    const TOPIC: &str = "divergence";
    const COMMITTED: usize = 10;
    const DIVERGENT: usize = 5;
    const AFTER: usize = 3;
    // Time for the paused followers' outstanding fetches to be answered before the
    // divergent records exist. A follower's fetch waits at A for new records up to its
    // long-poll limit (Kafka's replica.fetch.wait.max.ms is 500 ms); one still waiting
    // would be answered with the divergent records, sitting in the paused follower's
    // socket until it resumes.
    const FOLLOWER_FETCH_DRAIN: Duration = Duration::from_secs(3);
    // Time for a resumed follower to process whatever was waiting in its sockets.
    const RESUME_SETTLE: Duration = Duration::from_millis(500);

    // No replica may leave the ISR while the scenario pauses nodes: a generous lag time,
    // and a broker session the pauses cannot outlast. A controller that resumes from a
    // pause finds every session it tracks 3.5 s old; at the default 1.2 s it could fence
    // B or C (taking them out of the ISR) before their next heartbeats arrive. The leader
    // moves by an admin election, not by fencing.
    let mut cluster = Cluster::start(
        3,
        &[
            "--replica-lag-time-max-ms",
            "10000",
            "--broker-session-timeout-ms",
            "30000",
        ],
    )?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let created = create_replicated_topic(&cluster, controller, TOPIC, 1)?;
    let a = created.leader;
    let (b, c) = match created.followers().as_slice() {
        [b, c] => (*b, *c),
        other => bail!("an RF=3 partition has two followers, not {other:?}"),
    };
    let committed = numbered("committed", 0..COMMITTED);
    let divergent = numbered("divergent", 0..DIVERGENT);
    let after = numbered("after", 0..AFTER);
    let committed_end = i64::try_from(COMMITTED)?;
    let final_end = i64::try_from(COMMITTED + AFTER)?;

    tracing::info!(
        "phase: {COMMITTED} records with acks=all reach all three replicas (A={a} B={b} C={c})"
    );
    assert_ok(&produce_lines(&cluster, a, TOPIC, "all", &committed)?);
    wait_for_log_end_offsets(
        &cluster,
        TOPIC,
        &[a, b, c],
        committed_end,
        CATCH_UP_DEADLINE,
    )?;
    let epoch_a = describe_partition(&cluster, a, TOPIC)?.leader_epoch;

    tracing::info!(
        "phase: followers {b} and {c} are paused; after {FOLLOWER_FETCH_DRAIN:?}, {DIVERGENT} \
         records with acks=1 go to leader {a} only"
    );
    cluster.pause(b);
    cluster.pause(c);
    std::thread::sleep(FOLLOWER_FETCH_DRAIN);
    assert_ok(&produce_lines(&cluster, a, TOPIC, "1", &divergent)?);
    let on_a = describe_partition(&cluster, a, TOPIC)?;
    ensure!(
        on_a.log_end_offset == committed_end + i64::try_from(DIVERGENT)?
            && on_a.high_watermark == committed_end,
        "leader {a} must hold the {DIVERGENT} acks=1 records above a high watermark of \
         {committed_end} that no paused follower can advance: {on_a:?}"
    );

    tracing::info!("phase: A={a} goes silent (SIGSTOP); B={b} and C={c} resume without the suffix");
    cluster.pause(a);
    cluster.resume(b);
    cluster.resume(c);
    std::thread::sleep(RESUME_SETTLE);
    let on_b = describe_partition(&cluster, b, TOPIC)?;
    ensure!(
        on_b.log_end_offset == committed_end,
        "setup: follower {b} must end at {committed_end} before it is elected, but it got \
         records from {a} while paused ({on_b:?}); a fetch of its was still waiting at {a} \
         after {FOLLOWER_FETCH_DRAIN:?} (raise FOLLOWER_FETCH_DRAIN above the follower's \
         fetch wait)"
    );
    ensure!(
        on_b.leader == a && on_b.isr.contains(&b),
        "setup: {a} must still lead and {b} be in sync: {on_b:?}"
    );
    match describe_partition(&cluster, c, TOPIC) {
        Ok(on_c) => tracing::info!(
            "C={c} ends at {} (at {} it holds the suffix too, and must truncate as well)",
            on_c.log_end_offset,
            committed_end + i64::try_from(DIVERGENT)?
        ),
        Err(error) => tracing::info!("C={c} cannot describe yet: {error:#}"),
    }

    tracing::info!(
        "phase: B={b} is elected leader while A={a} is silent; epoch {epoch_a} must grow"
    );
    let election_started = Instant::now();
    let b_leads = elect_leader(&cluster, b, TOPIC, b, epoch_a, ELECTION_DEADLINE)?;
    tracing::info!(
        "B={b} leads with epoch {} after {:?}",
        b_leads.leader_epoch,
        election_started.elapsed()
    );
    ensure!(
        b_leads.log_end_offset == committed_end,
        "new leader {b} must start from its own {committed_end} records: {b_leads:?}"
    );

    tracing::info!(
        "phase: A={a} resumes; {AFTER} records with acks=all go to B={b} at the offsets of \
         A's suffix"
    );
    cluster.resume(a);
    let resumed_at = Instant::now();
    assert_ok(&produce_lines(&cluster, b, TOPIC, "all", &after)?);
    tracing::info!(
        "the {AFTER} records were acknowledged {:?} after A resumed",
        resumed_at.elapsed()
    );
    wait_for_log_end_offsets(&cluster, TOPIC, &[a, b, c], final_end, CATCH_UP_DEADLINE)?;
    tracing::info!(
        "A={a} truncated its suffix and copied B's records: all replicas end at {final_end}, \
         {:?} after A resumed",
        resumed_at.elapsed()
    );

    tracing::info!("phase: each replica in turn leads and serves exactly the committed log");
    let expected: Vec<String> = committed.iter().chain(&after).cloned().collect();
    ensure_leader_holds_exactly(&cluster, b, TOPIC, &expected, "divergent")?;
    let mut epoch = b_leads.leader_epoch;
    for target in [a, c] {
        wait_for_partition(
            &cluster,
            target,
            TOPIC,
            &format!("node {target} to be in the ISR"),
            ISR_DEADLINE,
            |s| s.isr.contains(&target),
        )?;
        let move_started = Instant::now();
        let state = elect_leader(&cluster, target, TOPIC, target, epoch, ELECTION_DEADLINE)?;
        tracing::info!(
            "node {target} leads with epoch {} after {:?}",
            state.leader_epoch,
            move_started.elapsed()
        );
        epoch = state.leader_epoch;
        ensure_leader_holds_exactly(&cluster, target, TOPIC, &expected, "divergent")?;
    }
    Ok(())
}

/// KIP-101's first scenario (data loss): a follower restarts while its high-watermark
/// checkpoint is behind records every replica acknowledged. Before leader epochs, Kafka
/// truncated a restarted follower to its checkpointed high watermark, and if the leader
/// then died that follower took over without the acknowledged suffix. Here a follower
/// never truncates to its high watermark, only where the leader says its log diverges, so
/// the suffix survives the fast double failover.
#[test]
fn a_restarted_follower_keeps_acknowledged_records_above_its_stale_high_watermark()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes and an RF=3 topic with every replica in sync");
    const TOPIC: &str = "stale-hw";
    const RECORDS: usize = 20;
    let mut cluster = Cluster::start(3, &["--replica-lag-time-max-ms", "10000"])?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let created = create_replicated_topic(&cluster, controller, TOPIC, 2)?;
    let a = created.leader;
    let b = created.followers()[0];
    let records = numbered("acked", 0..RECORDS);
    let end = i64::try_from(RECORDS)?;

    tracing::info!(
        "phase: {RECORDS} records acknowledged by all replicas; then follower {b} is SIGKILLed"
    );
    assert_ok(&produce_lines(&cluster, a, TOPIC, "all", &records)?);
    // Checkpoints are written by the upkeep loop every 30 s: the one on disk is stale.
    cluster.kill(b)?;
    cluster.restart(b)?;
    wait_for_log_end_offsets(&cluster, TOPIC, &[b], end, CATCH_UP_DEADLINE)?;
    // Until the restarted process's registration commits, the image lists b's previous
    // process: a controller that takes over in that window (a may be the active one)
    // fences b, and the leadership would go elsewhere.
    cluster.wait_ready(b, ISR_DEADLINE)?;

    tracing::info!("phase: leader {a} dies at once; {b}, still in the ISR, is elected");
    let epoch = describe_partition(&cluster, b, TOPIC)?.leader_epoch;
    cluster.kill(a)?;
    let started = Instant::now();
    let state = elect_leader(&cluster, b, TOPIC, b, epoch, ELECTION_DEADLINE)?;
    tracing::info!(
        "{b} leads at epoch {} after {:?}",
        state.leader_epoch,
        started.elapsed()
    );
    ensure!(
        state.log_end_offset == end,
        "the new leader must hold every acknowledged record: {state:?}"
    );
    ensure_leader_holds_exactly(&cluster, b, TOPIC, &records, "never-written")?;
    Ok(())
}

/// Followers fetch per leader, not per partition (Kafka's replica fetchers): one request
/// carries every partition a broker follows on a leader, and long-polls on all of them.
/// Twelve idle partitions on three brokers are then six follower-leader pairs, each
/// sending about one request per 500 ms long poll, where one fetcher per partition would
/// send twenty-four. The bound below counts requests; a slower machine sends fewer.
#[test]
fn an_idle_cluster_sends_one_replica_fetch_per_leader_not_per_partition() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes and idle RF=3 partitions, each broker leading some");
    const TOPIC: &str = "idle";
    const PARTITIONS: u32 = 12;
    const LONG_POLL: Duration = Duration::from_millis(500);
    const WINDOW: Duration = Duration::from_secs(5);
    let cluster = Cluster::start(3, &[])?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    cluster.create_topic(controller, TOPIC, PARTITIONS, 3)?;
    let leaders = wait_until(
        "every partition led and fully in sync",
        ISR_DEADLINE,
        || {
            let described = cluster.describe(controller, TOPIC).ok()?;
            let partitions = &described.partitions;
            (partitions.len() == PARTITIONS as usize
                && partitions.iter().all(|p| p.leader > 0 && p.isr.len() == 3))
            .then(|| {
                partitions
                    .iter()
                    .map(|p| p.leader)
                    .collect::<std::collections::BTreeSet<_>>()
            })
        },
    )?;
    ensure!(
        leaders.len() == 3,
        "every broker should lead some partitions: {leaders:?}"
    );
    // Answered replica fetches, counted by the leaders, over the whole cluster.
    let replica_fetches = || -> anyhow::Result<f64> {
        let mut total = 0.0;
        for id in cluster.ids() {
            let (status, body) = http_get(&cluster.node(id).http_address, "/metrics")?;
            ensure!(status == 200, "GET /metrics on node {id}: {status}");
            total += metric_sum(
                &body,
                "ferrolog_requests_total",
                &[r#"rpc="replica_fetch""#],
            );
        }
        Ok(total)
    };
    tracing::info!(
        "phase: replica fetches over {WINDOW:?}, counted by the leaders: about one per \
         follower-leader pair per long poll"
    );
    // Replicas that just opened may still be joining their fetchers: let them settle.
    std::thread::sleep(2 * LONG_POLL);
    let before = replica_fetches()?;
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let after = replica_fetches()?;
    let elapsed = started.elapsed();
    let sent = after - before;
    let pairs = 3.0 * 2.0;
    let polls = elapsed.as_secs_f64() / LONG_POLL.as_secs_f64();
    tracing::info!(
        "{sent} replica fetches in {elapsed:?} from {pairs} follower-leader pairs \
         ({:.2} per pair per long poll)",
        sent / pairs / polls
    );
    ensure!(
        sent > 0.0,
        "no replica fetch at all: the followers are not following"
    );
    // One per pair per poll, with a little room for the polls cut by the window's edges.
    let bound = pairs * (polls + 2.0);
    ensure!(
        sent <= bound,
        "{sent} replica fetches in {elapsed:?}: more than one per follower-leader pair per \
         long poll (bound {bound}); one fetcher per partition would send about {}",
        f64::from(PARTITIONS) * 2.0 * polls
    );
    Ok(())
}

/// In-sync followers fetch what the leader just appended, and the leader answers them
/// from the batches it keeps in memory rather than reading them back from its log: every
/// replicated byte of an acks=all workload with healthy followers comes from memory.
#[test]
fn in_sync_followers_are_served_from_memory_not_read_back_from_disk() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: three nodes and an RF=3 topic; 1000 records with acks=all to its leader"
    );
    const TOPIC: &str = "from-memory";
    let cluster = Cluster::start(3, &[])?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let created = create_replicated_topic(&cluster, controller, TOPIC, 2)?;
    let leader = created.leader;
    for round in 0..5 {
        let lines = numbered(&format!("memory-{round}"), 0..200);
        assert_ok(&produce_lines(&cluster, leader, TOPIC, "all", &lines)?);
    }
    tracing::info!("phase: the leader's metrics show where the replicated bytes came from");
    let (status, body) = http_get(&cluster.node(leader).http_address, "/metrics")?;
    ensure!(status == 200, "GET /metrics on node {leader}: {status}");
    let replicated = metric_sum(&body, "ferrolog_replicated_bytes_total", &[]);
    let from_memory = metric_sum(&body, "ferrolog_replicated_from_memory_bytes_total", &[]);
    tracing::info!("leader {leader} replicated {replicated} bytes, {from_memory} from memory");
    ensure!(
        replicated > 0.0,
        "leader {leader} replicated nothing: {body}"
    );
    ensure!(
        from_memory == replicated,
        "leader {leader} read {} of {replicated} replicated bytes back from disk",
        replicated - from_memory
    );
    Ok(())
}

/// A follower that has everything the leader has waits for its own fsync and then sends
/// one long poll, which reports the fsync: one replica fetch per follower per acks=all
/// produce in steady state, not an extra immediate fetch that comes back empty.
#[test]
fn followers_send_one_fetch_per_produce_when_caught_up() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: three nodes and an RF=3 topic; a first record waits out the followers' first \
         fetches"
    );
    const TOPIC: &str = "one-fetch-per-produce";
    const RECORDS: &str = "100";
    let cluster = Cluster::start(3, &[])?;
    let controller = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let created = create_replicated_topic(&cluster, controller, TOPIC, 2)?;
    let leader = created.leader;
    // The first produce waits out the followers' first fetches; counting starts after it.
    assert_ok(&produce_lines(
        &cluster,
        leader,
        TOPIC,
        "all",
        &numbered("first", 0..1),
    )?);
    let requests = |rpc: &str| -> anyhow::Result<f64> {
        let (status, body) = http_get(&cluster.node(leader).http_address, "/metrics")?;
        ensure!(status == 200, "GET /metrics on node {leader}: {status}");
        Ok(metric_sum(
            &body,
            "ferrolog_requests_total",
            &[&format!("rpc=\"{rpc}\"")],
        ))
    };
    tracing::info!(
        "phase: {RECORDS} sequential acks=all produces; the leader counts the replica fetches \
         they cost"
    );
    let (produces_before, fetches_before) = (requests("produce")?, requests("replica_fetch")?);
    let started = Instant::now();
    // One 1 KiB record per batch and one request in flight: sequential acks=all produces.
    let out = cluster.cli(
        leader,
        &[
            "bench",
            "produce",
            "--topic",
            TOPIC,
            "--records",
            RECORDS,
            "--record-size",
            "1024",
            "--batch-size",
            "1500",
            "--linger-ms",
            "0",
            "--acks",
            "all",
        ],
        None,
    )?;
    assert_ok(&out);
    let elapsed = started.elapsed();
    let produces = requests("produce")? - produces_before;
    let fetches = requests("replica_fetch")? - fetches_before;
    let followers = (REPLICATION_FACTOR - 1) as f64;
    // Besides the fetches that bring a produce's batch (and report the one before), each
    // follower's long poll expires every 500 ms while nothing comes.
    let idle_polls = followers * (elapsed.as_secs_f64() / 0.5 + 2.0);
    tracing::info!(produces, fetches, ?elapsed, "sequential acks=all produces");
    ensure!(
        produces >= 50.0,
        "only {produces} produce requests: batches were not small"
    );
    ensure!(
        fetches <= 1.5 * followers * produces + idle_polls,
        "{fetches} replica fetches for {produces} produces and {followers} followers in \
         {elapsed:?}: followers fetch again before their fsync is done"
    );
    Ok(())
}
