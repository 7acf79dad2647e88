//! DeleteRecords on a three-node cluster: `topic delete-records` moves the log start offset on
//! the leader and, with their next fetch, on every follower; records below it are gone for
//! consumers, whichever replica leads and across restarts; and nothing past the high
//! watermark can be deleted.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferrolog_tests::describe;
use ferrolog_tests::{Cluster, assert_ok, init_logging, stderr, stdout, wait_until};

const TOPIC: &str = "trimmed";
const DEADLINE: Duration = Duration::from_secs(30);
const RECORDS: u32 = 300;
const DELETE_BEFORE: i64 = 120;

fn leader(cluster: &Cluster, via: i32) -> Option<i32> {
    let described = cluster.describe(via, TOPIC).ok()?;
    let p = describe::partition(&described, 0).ok()?;
    (p.leader > 0 && cluster.is_running(p.leader)).then_some(p.leader)
}

/// The first offset a consumer reading from the beginning gets, through node `via`.
fn first_offset(cluster: &Cluster, via: i32) -> anyhow::Result<i64> {
    let out = cluster.cli(
        via,
        &[
            "consume",
            TOPIC,
            "--from-beginning",
            "--max-messages",
            "1",
            "--timeout-ms",
            "10000",
            "--format",
            "{offset}",
        ],
        None,
    )?;
    ensure!(out.status.success(), "consume failed: {}", stderr(&out));
    stdout(&out)
        .trim()
        .parse()
        .with_context(|| format!("first offset from {:?}", stdout(&out)))
}

/// The log start offset node `id` persisted for partition 0, if DeleteRecords reached it.
fn persisted_log_start(cluster: &Cluster, id: i32) -> Option<i64> {
    let file = cluster
        .node(id)
        .data_dir
        .join(format!("{TOPIC}-0/log-start-offset"));
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().nth(1)?.trim().parse().ok()
}

#[test]
fn deleted_records_stay_deleted_on_every_replica_across_leader_changes_and_restarts()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes, an RF=3 partition with small segments, {RECORDS} records");
    let mut cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic_with(1, TOPIC, 1, 3, &["segment.bytes=1024"])?;
    for chunk in 0..10 {
        let lines: String = (0..RECORDS / 10)
            .map(|i| format!("record-{}\n", chunk * (RECORDS / 10) + i))
            .collect();
        let out = cluster.cli(1, &["produce", TOPIC, "--partition", "0"], Some(&lines))?;
        assert_ok(&out);
    }

    tracing::info!("phase: deleting past the high watermark is refused and changes nothing");
    let out = cluster.cli(
        1,
        &[
            "topic",
            "delete-records",
            TOPIC,
            "--partition",
            "0",
            "--before-offset",
            "100000",
        ],
        None,
    )?;
    ensure!(
        !out.status.success(),
        "deleting uncommitted records must fail"
    );
    ensure!(
        stderr(&out).contains("OFFSET_OUT_OF_RANGE") && stderr(&out).contains("high watermark"),
        "the error names its code and the high watermark: {}",
        stderr(&out)
    );
    ensure!(first_offset(&cluster, 1)? == 0, "nothing was deleted");

    tracing::info!("phase: delete before {DELETE_BEFORE}; every replica takes the new start");
    let out = cluster.cli(
        1,
        &[
            "topic",
            "delete-records",
            TOPIC,
            "--partition",
            "0",
            "--before-offset",
            &DELETE_BEFORE.to_string(),
        ],
        None,
    )?;
    assert_ok(&out);
    ensure!(
        stdout(&out).contains(&format!("log start offset is now {DELETE_BEFORE}")),
        "{}",
        stdout(&out)
    );
    for id in cluster.ids() {
        wait_until(
            &format!("node {id} persists the log start"),
            DEADLINE,
            || (persisted_log_start(&cluster, id) == Some(DELETE_BEFORE)).then_some(()),
        )?;
    }
    ensure!(first_offset(&cluster, 2)? == DELETE_BEFORE);
    let out = cluster.cli(
        1,
        &[
            "consume",
            TOPIC,
            "--offset",
            "5",
            "--max-messages",
            "1",
            "--timeout-ms",
            "5000",
        ],
        None,
    )?;
    ensure!(
        !out.status.success() && stderr(&out).contains("OFFSET_OUT_OF_RANGE"),
        "reading below the start fails: {}",
        stderr(&out)
    );

    tracing::info!("phase: the leader is SIGKILLed; the new leader serves from the same start");
    let old_leader = wait_until("a leader", DEADLINE, || leader(&cluster, 1))?;
    cluster.kill(old_leader)?;
    let survivor = cluster.live_ids()[0];
    let new_leader = wait_until("a new leader", DEADLINE, || {
        leader(&cluster, survivor).filter(|l| *l != old_leader)
    })?;
    ensure!(first_offset(&cluster, new_leader)? == DELETE_BEFORE);

    tracing::info!("phase: every node restarts; the start survives");
    cluster.restart(old_leader)?;
    for id in cluster.ids() {
        cluster.terminate(id)?;
        cluster.restart(id)?;
    }
    cluster.wait_for_leader(DEADLINE)?;
    let via = cluster.ids()[0];
    wait_until("a leader after the restarts", DEADLINE, || {
        leader(&cluster, via)
    })?;
    let after = wait_until("a consumer can read again", DEADLINE, || {
        first_offset(&cluster, via).ok()
    })?;
    ensure!(
        after == DELETE_BEFORE,
        "first offset after restarts is {after}"
    );
    Ok(())
}
