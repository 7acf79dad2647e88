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
    std::thread::sleep(Duration::from_secs(1));

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
    std::thread::sleep(Duration::from_secs(1));
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
