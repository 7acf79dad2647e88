//! Scaling out: a broker added to a running cluster registers and takes partitions; a
//! partition moved to it with `ferrolog partition reassign` under an acks=all workload
//! keeps every acknowledged record, and the broker it left deletes its copy; a topic grows
//! with `ferrolog topic add-partitions`.

use std::time::Duration;

use anyhow::{Context, ensure};

use ferrolog_tests::describe;
use ferrolog_tests::history;
use ferrolog_tests::workload::{Outcome, Workload, read_all};
use ferrolog_tests::{
    Cluster, assert_ok, init_logging, run_cli_within, stderr, stdout, wait_until,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn broker_registered(cluster: &Cluster, via: i32, broker: i32) -> Option<()> {
    let status = cluster.status_via(via).ok()?;
    (describe::broker_state(&status, broker) == Some("registered")).then_some(())
}

#[test]
fn a_partition_moves_to_a_new_broker_under_load_without_losing_a_record() -> anyhow::Result<()> {
    init_logging();
    const TOPIC: &str = "moves";
    tracing::info!("phase: three nodes and an RF=3 partition");
    let mut cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic(1, TOPIC, 1, 3)?;
    let before = cluster.describe(1, TOPIC)?;
    let before = describe::partition(&before, 0)?.clone();
    ensure!(before.leader > 0, "the partition has a leader: {before:?}");
    let (leader, epoch) = (before.leader, before.leader_epoch);

    tracing::info!("phase: a fourth broker joins the running cluster and registers");
    let new_broker = cluster.add_broker()?;
    wait_until("the new broker registered", DEADLINE, || {
        broker_registered(&cluster, 1, new_broker)
    })?;

    let brokers: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.address(id).to_owned())
        .collect();
    tracing::info!("phase: the workload produces before, during and after the move");
    let workload = Workload::start(brokers, TOPIC, 1);
    let before_move = workload.wait_progress(0, 100, DEADLINE, "before the move")?;

    tracing::info!(
        "phase: the partition moves to the new broker and leader {leader} leaves it: the move \
         must hand leadership over as well as data"
    );
    let mut target: Vec<i32> = vec![new_broker];
    target.extend(before.replicas.iter().copied().filter(|b| *b != leader));
    let target_csv = target
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = run_cli_within(
        cluster.address(1),
        &[
            "partition",
            "reassign",
            TOPIC,
            "0",
            "--replicas",
            &target_csv,
            "--timeout-ms",
            "60000",
        ],
        None,
        Duration::from_secs(90),
    )?;
    tracing::info!("reassign: {}{}", stdout(&out), stderr(&out));
    assert_ok(&out);
    workload.wait_progress(before_move, 100, DEADLINE, "after the move")?;
    let Outcome { acks, failed } = workload.stop()?;

    let after = cluster.describe(1, TOPIC)?;
    let p = describe::partition(&after, 0)?;
    ensure!(p.replicas == target, "replicas after the move: {p:?}");
    ensure!(
        p.leader == new_broker,
        "the first target replica leads: {p:?}"
    );
    ensure!(p.leader_epoch > epoch, "a new leader epoch: {p:?}");
    ensure!(
        p.adding_replicas.is_empty() && p.removing_replicas.is_empty(),
        "the move is complete: {p:?}"
    );

    tracing::info!(
        "phase: the new leader serves everything acknowledged, before and during the move"
    );
    let reads = read_all(cluster.address(new_broker), TOPIC, 1)?;
    let report = history::check(&acks, &reads);
    tracing::info!("history across the move: {report}; {failed} sends failed");
    ensure!(report.is_safe(), "{report}");
    ensure!(
        report.acknowledged > 100,
        "too little was acknowledged: {report}"
    );
    ensure!(failed == 0, "{failed} sends failed during the move");

    tracing::info!("phase: broker {leader}, which left the partition, deletes its copy");
    let old_dir = cluster.data_dir(leader).join(format!("{TOPIC}-0"));
    wait_until("the old leader deleted its copy", DEADLINE, || {
        (!old_dir.exists()).then_some(())
    })?;

    tracing::info!("phase: the scaled-out cluster places a new topic on all four brokers");
    cluster.create_topic(1, "wide", 1, 4)?;
    Ok(())
}

#[test]
fn add_partitions_grows_a_topic_and_never_shrinks_it() -> anyhow::Result<()> {
    init_logging();
    const TOPIC: &str = "growing";
    tracing::info!("phase: three nodes and a topic of one partition, replication factor 2");
    let cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic(1, TOPIC, 1, 2)?;

    tracing::info!("phase: the topic grows to three partitions with the same replication factor");
    let out = cluster.cli(
        2,
        &["topic", "add-partitions", TOPIC, "--partitions", "3"],
        None,
    )?;
    assert_ok(&out);
    let described = cluster.describe(3, TOPIC)?;
    tracing::info!("after add-partitions: {described:?}");
    ensure!(described.partitions.len() == 3, "{described:?}");
    for p in &described.partitions {
        ensure!(
            p.replicas.len() == 2,
            "the topic's replication factor: {p:?}"
        );
        ensure!(p.leader > 0, "a leader: {p:?}");
    }

    tracing::info!("phase: a new partition takes writes at once, and reads them back");
    let out = cluster.cli(
        1,
        &["produce", TOPIC, "--partition", "2"],
        Some("first\nsecond\n"),
    )?;
    assert_ok(&out);
    let out = run_cli_within(
        cluster.address(3),
        &[
            "consume",
            TOPIC,
            "--partition",
            "2",
            "--from-beginning",
            "--max-messages",
            "2",
            "--timeout-ms",
            "10000",
        ],
        None,
        Duration::from_secs(30),
    )?;
    assert_ok(&out);
    ensure!(stdout(&out).lines().collect::<Vec<_>>() == ["first", "second"]);

    tracing::info!("phase: shrinking the topic is refused, with the reason");
    let out = cluster.cli(
        1,
        &["topic", "add-partitions", TOPIC, "--partitions", "2"],
        None,
    )?;
    ensure!(!out.status.success(), "shrinking must be refused");
    ensure!(
        stderr(&out).contains("must be larger"),
        "the error says why: {}",
        stderr(&out)
    );
    Ok(())
}

#[test]
fn a_new_replica_of_a_partition_trimmed_by_retention_starts_at_the_leaders_log_start()
-> anyhow::Result<()> {
    init_logging();
    const TOPIC: &str = "aged";
    tracing::info!(
        "phase: two nodes running retention every 200 ms and a one-replica topic of tiny \
         segments"
    );
    // Retention runs every 200 ms, so the leader's early segments go while we watch.
    let config_dir = tempfile::tempdir()?;
    let config = config_dir.path().join("ferrolog.toml");
    std::fs::write(&config, "[log]\nmaintenance_interval_ms = 200\n")?;
    let config = config.to_str().context("a UTF-8 path")?.to_owned();
    let cluster = Cluster::start(2, &["--config", &config])?;
    cluster.wait_for_leader(DEADLINE)?;
    let create = [
        "topic",
        "create",
        TOPIC,
        "--partitions",
        "1",
        "--replication-factor",
        "1",
        "--config",
        "segment.bytes=1024",
        "--config",
        "retention.bytes=2048",
    ];
    // Retried while the brokers are still registering.
    wait_until("the topic is created", DEADLINE, || {
        cluster
            .cli(1, &create, None)
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    })?;
    tracing::info!("phase: 300 records, then retention trims the leader's oldest segments");
    // Ten produce calls, so ten batches: retention deletes whole segments, and a segment
    // rolls only between batches.
    for call in 0..10 {
        let values: String = (0..30)
            .map(|i| format!("record-{:04}-{}\n", call * 30 + i, "x".repeat(40)))
            .collect();
        assert_ok(&cluster.cli(1, &["produce", TOPIC], Some(&values))?);
    }
    let leader = describe::partition(&cluster.describe(1, TOPIC)?, 0)?.leader;
    ensure!(leader > 0, "the partition has a leader");
    let log_start = wait_until("retention trimmed the leader's log", DEADLINE, || {
        let described = cluster.describe(leader, TOPIC).ok()?;
        let start = describe::partition(&described, 0).ok()?.log_start_offset;
        (start > 0).then_some(start)
    })?;

    tracing::info!(
        "phase: the other broker becomes a replica: it has nothing, and the leader no longer \
         has offset 0, so it must start its log at the leader's log start"
    );
    let other = if leader == 1 { 2 } else { 1 };
    let target = format!("{leader},{other}");
    let out = run_cli_within(
        cluster.address(1),
        &[
            "partition",
            "reassign",
            TOPIC,
            "0",
            "--replicas",
            &target,
            "--timeout-ms",
            "30000",
        ],
        None,
        Duration::from_secs(60),
    )?;
    tracing::info!("reassign: {}{}", stdout(&out), stderr(&out));
    assert_ok(&out);
    let described = cluster.describe(other, TOPIC)?;
    let copy = describe::partition(&described, 0)?;
    ensure!(
        copy.log_start_offset >= log_start && copy.log_end_offset == 300,
        "the new replica holds the leader's retained log: {copy:?}"
    );
    tracing::info!("phase: the new replica can lead, and serves the retained records");
    assert_ok(&cluster.cli(
        1,
        &[
            "partition",
            "elect-leader",
            TOPIC,
            "0",
            "--leader",
            &other.to_string(),
        ],
        None,
    )?);
    let out = run_cli_within(
        cluster.address(other),
        &[
            "consume",
            TOPIC,
            "--from-beginning",
            "--max-messages",
            "1",
            "--timeout-ms",
            "10000",
        ],
        None,
        Duration::from_secs(30),
    )?;
    assert_ok(&out);
    ensure!(stdout(&out).starts_with("record-"), "{}", stdout(&out));
    Ok(())
}
