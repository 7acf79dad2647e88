//! Scaling out: a broker added to a running cluster registers and takes partitions; a
//! partition moved to it with `ferrolog partition reassign` under an acks=all workload
//! keeps every acknowledged record, and the broker it left deletes its copy; a topic grows
//! with `ferrolog topic add-partitions`.

use std::time::Duration;

use anyhow::{Context, ensure};

use ferrolog_tests::history;
use ferrolog_tests::workload::{Outcome, Workload, read_all};
use ferrolog_tests::{
    Cluster, assert_ok, init_logging, run_cli_within, stderr, stdout, wait_until,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn broker_registered(cluster: &Cluster, via: i32, broker: i32) -> Option<()> {
    let status = cluster.status_via(via).ok()?;
    status["brokers"]
        .as_array()?
        .iter()
        .any(|b| {
            b["broker_id"].as_i64() == Some(i64::from(broker))
                && b["state"].as_str() == Some("registered")
        })
        .then_some(())
}

#[test]
fn a_partition_moves_to_a_new_broker_under_load_without_losing_a_record() -> anyhow::Result<()> {
    init_logging();
    const TOPIC: &str = "moves";
    let mut cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic(1, TOPIC, 1, 3)?;
    let before = cluster.describe(1, TOPIC)?;
    let leader = before["partitions"][0]["leader"]
        .as_i64()
        .context("a leader")?;
    let epoch = before["partitions"][0]["leader_epoch"]
        .as_i64()
        .context("an epoch")?;

    let new_broker = cluster.add_broker()?;
    wait_until("the new broker registered", DEADLINE, || {
        broker_registered(&cluster, 1, new_broker)
    })?;

    let brokers: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.address(id).to_owned())
        .collect();
    let workload = Workload::start(brokers, TOPIC, 1);
    let before_move = workload.wait_progress(0, 100, DEADLINE, "before the move")?;

    // The leader leaves: the move must hand leadership over as well as data.
    let mut target: Vec<i64> = vec![i64::from(new_broker)];
    target.extend(
        ids(&before["partitions"][0]["replicas"])
            .into_iter()
            .filter(|b| *b != leader),
    );
    let target_csv = target
        .iter()
        .map(i64::to_string)
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
    eprintln!("reassign: {}{}", stdout(&out), stderr(&out));
    assert_ok(&out);
    workload.wait_progress(before_move, 100, DEADLINE, "after the move")?;
    let Outcome { acks, failed } = workload.stop()?;

    let after = cluster.describe(1, TOPIC)?;
    let p = &after["partitions"][0];
    ensure!(
        ids(&p["replicas"]) == target,
        "replicas after the move: {p}"
    );
    ensure!(
        p["leader"].as_i64() == Some(i64::from(new_broker)),
        "the first target replica leads: {p}"
    );
    ensure!(
        p["leader_epoch"].as_i64() > Some(epoch),
        "a new leader epoch: {p}"
    );
    ensure!(ids(&p["adding_replicas"]).is_empty() && ids(&p["removing_replicas"]).is_empty());

    // The new leader serves everything acknowledged, before and during the move.
    let reads = read_all(cluster.address(new_broker), TOPIC, 1)?;
    let report = history::check(&acks, &reads);
    eprintln!("history across the move: {report}; {failed} sends failed");
    ensure!(report.is_safe(), "{report}");
    ensure!(
        report.acknowledged > 100,
        "too little was acknowledged: {report}"
    );
    ensure!(failed == 0, "{failed} sends failed during the move");

    // The broker that left drops its copy.
    let old_dir = cluster
        .data_dir(i32::try_from(leader)?)
        .join(format!("{TOPIC}-0"));
    wait_until("the old leader deleted its copy", DEADLINE, || {
        (!old_dir.exists()).then_some(())
    })?;

    // The scaled-out cluster places new topics on all four brokers.
    cluster.create_topic(1, "wide", 1, 4)?;
    Ok(())
}

#[test]
fn add_partitions_grows_a_topic_and_never_shrinks_it() -> anyhow::Result<()> {
    init_logging();
    const TOPIC: &str = "growing";
    let cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic(1, TOPIC, 1, 2)?;

    let out = cluster.cli(
        2,
        &["topic", "add-partitions", TOPIC, "--partitions", "3"],
        None,
    )?;
    assert_ok(&out);
    let described = cluster.describe(3, TOPIC)?;
    eprintln!("after add-partitions: {described}");
    let partitions = described["partitions"].as_array().context("partitions")?;
    ensure!(partitions.len() == 3, "{described}");
    for p in partitions {
        ensure!(
            ids(&p["replicas"]).len() == 2,
            "the topic's replication factor: {p}"
        );
        ensure!(p["leader"].as_i64() > Some(0), "a leader: {p}");
    }

    // The new partition takes writes at once, and reads them back.
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
    // Ten produce calls, so ten batches: retention deletes whole segments, and a segment
    // rolls only between batches.
    for call in 0..10 {
        let values: String = (0..30)
            .map(|i| format!("record-{:04}-{}\n", call * 30 + i, "x".repeat(40)))
            .collect();
        assert_ok(&cluster.cli(1, &["produce", TOPIC], Some(&values))?);
    }
    let leader = cluster.describe(1, TOPIC)?["partitions"][0]["leader"]
        .as_i64()
        .context("a leader")?;
    let leader_id = i32::try_from(leader)?;
    let log_start = wait_until("retention trimmed the leader's log", DEADLINE, || {
        let p = &cluster.describe(leader_id, TOPIC).ok()?["partitions"][0];
        p["log_start_offset"].as_i64().filter(|start| *start > 0)
    })?;

    // The other broker becomes a replica: it has nothing, and the leader no longer has
    // offset 0, so it must restart its log at the leader's start.
    let other = if leader_id == 1 { 2 } else { 1 };
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
    eprintln!("reassign: {}{}", stdout(&out), stderr(&out));
    assert_ok(&out);
    let copy = &cluster.describe(other, TOPIC)?["partitions"][0];
    ensure!(
        copy["log_start_offset"].as_i64() >= Some(log_start)
            && copy["log_end_offset"].as_i64() == Some(300),
        "the new replica holds the leader's retained log: {copy}"
    );
    // It can lead, and serves the retained records.
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
