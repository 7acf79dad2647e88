//! Consumer groups with real processes: four partitions shared two and two; a third member
//! joins and only the partition that moves pauses; that member is SIGKILLed and its
//! partition goes back after the session timeout; the coordinator's broker is SIGKILLed
//! and the group goes on from its committed offsets. Over the whole run, every
//! acknowledged record is consumed at least once, and records are consumed twice only if
//! the killed member had read them (its uncommitted window).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, ensure};
use ferrolog_client::{
    ClientConfig, ConsumerConfig, GroupConsumer, GroupConsumerConfig, OffsetReset, Rebalance,
};
use ferrolog_tests::describe::DescribeGroupResponse;
use ferrolog_tests::workload::{Outcome, Workload};
use ferrolog_tests::{Cluster, ferrolog_bin, init_logging, run_cli_within, stdout, wait_until};

const TOPIC: &str = "events";
const GROUP: &str = "billing";
const PARTITIONS: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(40);
/// How long the third member reads before it is SIGKILLed.
const THIRD_MEMBER_RUNS_FOR: Duration = Duration::from_secs(2);
/// Short group timings keep the test quick; the defaults are 10 s and 1 s.
const SERVER_ARGS: &[&str] = &[
    "--offsets-topic-partitions",
    "3",
    "--group-session-timeout-ms",
    "3000",
    "--group-heartbeat-interval-ms",
    "300",
];

/// What one in-process member saw.
#[derive(Default, Debug)]
struct MemberLog {
    /// (partition, offset, record id), in the order `poll` returned them.
    records: Vec<(u32, i64, u64)>,
    events: Vec<Rebalance>,
    assignment: BTreeSet<u32>,
}

/// A group member running `poll` on its own thread, with auto-commit every second.
struct Member {
    log: Arc<Mutex<MemberLog>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Member {
    fn start(brokers: Vec<String>) -> Self {
        let log = Arc::new(Mutex::new(MemberLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let client = ClientConfig::with_brokers(brokers);
                    let mut config =
                        GroupConsumerConfig::new(ConsumerConfig::new(client), GROUP, &[TOPIC]);
                    config.auto_offset_reset = OffsetReset::Earliest;
                    config.auto_commit_interval = Some(Duration::from_secs(1));
                    let mut consumer = GroupConsumer::join(config).await?;
                    let events = Arc::clone(&log);
                    consumer.on_rebalance(move |change| {
                        let mut log = events.lock().unwrap_or_else(|p| p.into_inner());
                        match change {
                            Rebalance::Assigned(ps) => {
                                log.assignment.extend(ps.iter().map(|(tp, _)| tp.partition));
                            }
                            Rebalance::Revoked(ps) => {
                                for tp in ps {
                                    log.assignment.remove(&tp.partition);
                                }
                            }
                        }
                        log.events.push(change.clone());
                    });
                    while !stop.load(Ordering::Acquire) {
                        let records = consumer.poll(Duration::from_millis(200)).await?;
                        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                        for r in records {
                            let id = r
                                .value
                                .as_deref()
                                .and_then(|v| std::str::from_utf8(v).ok())
                                .and_then(|v| v.strip_prefix("h-"))
                                .and_then(|v| v.parse().ok())
                                .context("a workload record")?;
                            log.records.push((r.partition, r.offset, id));
                        }
                    }
                    consumer.close().await?;
                    Ok(())
                })
            })
        };
        Self { log, stop, thread }
    }

    fn assignment(&self) -> BTreeSet<u32> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assignment
            .clone()
    }

    fn revoked(&self) -> Vec<u32> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.events
            .iter()
            .filter_map(|e| match e {
                Rebalance::Revoked(ps) => Some(ps.iter().map(|tp| tp.partition)),
                Rebalance::Assigned(_) => None,
            })
            .flatten()
            .collect()
    }

    fn consumed(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .records
            .len()
    }

    fn stop(self) -> anyhow::Result<MemberLog> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("a member thread panicked"))??;
        Ok(Arc::try_unwrap(self.log)
            .map_err(|_| anyhow::anyhow!("the member log is still shared"))?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()))
    }
}

/// GROUP as its coordinator describes it, found through node `via`; `None` while it cannot.
fn describe_group(cluster: &Cluster, via: i32) -> Option<DescribeGroupResponse> {
    cluster.describe_group(via, GROUP).ok()
}

/// Partitions per member, once the group is stable.
fn stable_assignment(cluster: &Cluster, via: i32) -> Option<Vec<usize>> {
    let group = describe_group(cluster, via)?;
    if group.state != "stable" {
        return None;
    }
    let mut sizes: Vec<usize> = group
        .members
        .iter()
        .map(|m| m.assignment.iter().map(|t| t.partitions.len()).sum())
        .collect();
    sizes.sort_unstable();
    Some(sizes)
}

#[test]
fn a_group_shares_partitions_moves_only_what_it_must_and_reads_everything_at_least_once()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: three nodes, a topic of {PARTITIONS} RF=3 partitions and a workload writing to it"
    );
    let mut cluster = Cluster::start(3, SERVER_ARGS)?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic(1, TOPIC, PARTITIONS, 3)?;
    let brokers: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.address(id).to_owned())
        .collect();
    let workload = Workload::start(brokers.clone(), TOPIC, PARTITIONS);

    tracing::info!("phase: two members share the four partitions two and two");
    let a = Member::start(brokers.clone());
    let b = Member::start(brokers.clone());
    wait_until("two members with two partitions each", DEADLINE, || {
        (a.assignment().len() == 2 && b.assignment().len() == 2).then_some(())
    })?;
    wait_until("a stable two-member group", DEADLINE, || {
        stable_assignment(&cluster, 1).filter(|s| *s == [2, 2])
    })?;
    let (a_before, b_before) = (a.assignment(), b.assignment());
    let (a_revoked, b_revoked) = (a.revoked().len(), b.revoked().len());

    tracing::info!(
        "phase: a third member (a CLI process) joins: exactly one partition moves, to it"
    );
    let mut c = Command::new(ferrolog_bin())
        .args([
            "consume",
            TOPIC,
            "--group",
            GROUP,
            "--from-beginning",
            "--format",
            "{partition} {offset} {value}",
            "--brokers",
            &cluster.brokers_csv(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the third member")?;
    wait_until("three members sharing 2+1+1", DEADLINE, || {
        stable_assignment(&cluster, 1).filter(|s| *s == [1, 1, 2])
    })?;
    let moved: Vec<u32> = a.revoked()[a_revoked..]
        .iter()
        .chain(&b.revoked()[b_revoked..])
        .copied()
        .collect();
    ensure!(moved.len() == 1, "exactly one partition moves: {moved:?}");
    let kept_a: BTreeSet<u32> = a_before.intersection(&a.assignment()).copied().collect();
    let kept_b: BTreeSet<u32> = b_before.intersection(&b.assignment()).copied().collect();
    ensure!(
        kept_a.len() + kept_b.len() == 3,
        "the other three partitions stay where they were: a {a_before:?} -> {:?}, b {b_before:?} -> {:?}",
        a.assignment(),
        b.assignment()
    );
    // Let the third member read (and not yet commit: it commits every 5 s) before it dies,
    // so its uncommitted window is not empty.
    std::thread::sleep(THIRD_MEMBER_RUNS_FOR);

    tracing::info!(
        "phase: the third member is SIGKILLed: after the session timeout its partition returns"
    );
    c.kill().context("SIGKILL the third member")?;
    let c_output = c.wait_with_output().context("reap the third member")?;
    let c_records = parse_cli_records(&stdout(&c_output))?;
    tracing::info!("the killed member had printed {} records", c_records.len());
    wait_until("two members again, 2+2", DEADLINE, || {
        stable_assignment(&cluster, 1).filter(|s| *s == [2, 2])
    })?;

    tracing::info!(
        "phase: the coordinator's broker is SIGKILLed; the group continues from its commits"
    );
    let coordinator = describe_group(&cluster, 1)
        .map(|g| g.coordinator_id)
        .context("the coordinator")?;
    let before_kill = a.consumed() + b.consumed();
    cluster.kill(coordinator)?;
    let observer = cluster.live_ids()[0];
    wait_until("a new coordinator with a stable group", DEADLINE, || {
        let group = describe_group(&cluster, observer)?;
        (group.coordinator_id != coordinator && group.state == "stable").then_some(())
    })?;
    wait_until("the members keep consuming", DEADLINE, || {
        (a.consumed() + b.consumed() > before_kill + 100).then_some(())
    })?;
    cluster.restart(coordinator)?;

    let Outcome { acks, failed } = workload.stop()?;
    ensure!(failed == 0, "{failed} sends failed");
    let acknowledged: BTreeSet<u64> = acks.iter().map(|a| a.id).collect();
    wait_until("every acknowledged record consumed", DEADLINE, || {
        let mut seen: BTreeSet<u64> = c_records.iter().map(|r| r.2).collect();
        for m in [&a, &b] {
            let log = m.log.lock().unwrap_or_else(|p| p.into_inner());
            seen.extend(log.records.iter().map(|r| r.2));
        }
        acknowledged.is_subset(&seen).then_some(())
    })?;
    let a_log = a.stop()?;
    let b_log = b.stop()?;

    tracing::info!("phase: at least once: every acknowledged record was read");
    // At least once: every acknowledged record was read. A record (a partition and offset)
    // is read twice only if the killed member had read it. (The same id at two offsets is
    // the producer's retry, not the consumers'.)
    let mut reads: BTreeMap<(u32, i64), usize> = BTreeMap::new();
    let mut ids: BTreeSet<u64> = BTreeSet::new();
    for (partition, offset, id) in a_log.records.iter().chain(&b_log.records).chain(&c_records) {
        *reads.entry((*partition, *offset)).or_default() += 1;
        ids.insert(*id);
    }
    let lost: Vec<u64> = acknowledged.difference(&ids).copied().collect();
    let duplicated: Vec<(u32, i64)> = reads
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(at, _)| *at)
        .collect();
    let read_by_killed: BTreeSet<(u32, i64)> = c_records.iter().map(|r| (r.0, r.1)).collect();
    let unexplained: Vec<(u32, i64)> = duplicated
        .iter()
        .filter(|at| !read_by_killed.contains(at))
        .copied()
        .collect();
    tracing::info!(
        "{} acknowledged, {} records read, {} lost, {} read twice (all by the killed member: {})",
        acknowledged.len(),
        reads.len(),
        lost.len(),
        duplicated.len(),
        unexplained.is_empty()
    );
    ensure!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(10)]);
    if let Some(at) = unexplained.first() {
        for (name, log) in [("a", &a_log), ("b", &b_log)] {
            let times = log.records.iter().filter(|r| (r.0, r.1) == *at).count();
            tracing::info!(
                "member {name} read {at:?} {times} time(s); its assignment changes: {:?}",
                log.events
            );
        }
    }
    ensure!(
        unexplained.is_empty(),
        "read twice without a crash to explain it: {:?}",
        &unexplained[..unexplained.len().min(10)]
    );
    Ok(())
}

/// Parses `{partition} {offset} h-{id}` lines.
fn parse_cli_records(text: &str) -> anyhow::Result<Vec<(u32, i64, u64)>> {
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let (Some(p), Some(o), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
                anyhow::bail!("bad line {line:?}");
            };
            Ok((
                p.parse()?,
                o.parse()?,
                v.strip_prefix("h-").context("a workload record")?.parse()?,
            ))
        })
        .collect()
}

#[test]
fn offsets_reset_and_delete_are_refused_while_members_are_active() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: one node and a topic of two partitions, three records in partition 0");
    let cluster = Cluster::start(1, SERVER_ARGS)?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic(1, TOPIC, 2, 1)?;
    let out = cluster.cli(
        1,
        &["produce", TOPIC, "--partition", "0"],
        Some("a\nb\nc\n"),
    )?;
    ensure!(out.status.success());
    tracing::info!("phase: the group reads two records; exactly those two are committed");
    let out = run_cli_within(
        cluster.address(1),
        &[
            "consume",
            TOPIC,
            "--group",
            "g1",
            "--from-beginning",
            "--max-messages",
            "2",
        ],
        None,
        Duration::from_secs(30),
    )?;
    ensure!(stdout(&out) == "a\nb\n", "{}", stdout(&out));
    // The CLI's own view, in its JSON: the lag it computes from the committed offset and the
    // log end. Everywhere else the group is read through the typed describe.
    let out = run_cli_within(
        cluster.address(1),
        &["group", "describe", "g1", "--json"],
        None,
        Duration::from_secs(10),
    )?;
    ensure!(out.status.success(), "{}", ferrolog_tests::stderr(&out));
    let group: serde_json::Value = serde_json::from_str(&stdout(&out)).context("describe JSON")?;
    let p0 = group["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["partition"] == 0))
        .context("partition 0")?;
    ensure!(
        p0["committed"] == 2 && p0["log_end"] == 3 && p0["lag"] == 1,
        "{group}"
    );

    tracing::info!("phase: the next member resumes after what was printed");
    let out = run_cli_within(
        cluster.address(1),
        &["consume", TOPIC, "--group", "g1", "--max-messages", "1"],
        None,
        Duration::from_secs(30),
    )?;
    ensure!(stdout(&out) == "c\n", "{}", stdout(&out));

    tracing::info!(
        "phase: while a member runs, resets and deletes are refused; SIGTERM makes it commit \
         and leave"
    );
    let member = Command::new(ferrolog_bin())
        .args([
            "consume",
            TOPIC,
            "--group",
            "g1",
            "--brokers",
            cluster.address(1),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start a member")?;
    wait_until("the member joined", DEADLINE, || {
        cluster
            .describe_group(1, "g1")
            .ok()
            .filter(|g| g.members.len() == 1)
            .map(|_| ())
    })?;
    for args in [
        &[
            "group",
            "reset-offsets",
            "g1",
            "--topic",
            TOPIC,
            "--to-earliest",
        ][..],
        &["group", "delete", "g1"][..],
    ] {
        let out = cluster.cli(1, args, None)?;
        ensure!(
            !out.status.success() && ferrolog_tests::stderr(&out).contains("NON_EMPTY_GROUP"),
            "{args:?} must be refused while the group has a member: {}",
            ferrolog_tests::stderr(&out)
        );
    }
    stop_gracefully(member)?;

    tracing::info!("phase: with no member left, the reset and the delete are done");
    let out = cluster.cli(
        1,
        &[
            "group",
            "reset-offsets",
            "g1",
            "--topic",
            TOPIC,
            "--to-earliest",
        ],
        None,
    )?;
    ensure!(out.status.success(), "{}", ferrolog_tests::stderr(&out));
    let group = cluster.describe_group(1, "g1")?;
    ensure!(
        !group.offsets.is_empty() && group.offsets.iter().all(|o| o.offset == 0),
        "every committed offset is back at the start: {group:?}"
    );
    let list = cluster.cli(1, &["group", "list"], None)?;
    ensure!(stdout(&list).contains("g1"), "{}", stdout(&list));
    let out = cluster.cli(1, &["group", "delete", "g1"], None)?;
    ensure!(out.status.success(), "{}", ferrolog_tests::stderr(&out));
    let out = cluster.cli(1, &["group", "describe", "g1"], None)?;
    ensure!(!out.status.success(), "a deleted group is gone");
    Ok(())
}

/// SIGTERM, then wait (bounded) for the exit.
fn stop_gracefully(mut child: Child) -> anyhow::Result<()> {
    let pid = i32::try_from(child.id())?;
    if ferrolog_tests::send_signal(pid, libc::SIGTERM) != 0 {
        anyhow::bail!("SIGTERM failed");
    }
    let exited = wait_until("the member exits", DEADLINE, || {
        child.try_wait().ok().flatten()
    });
    if exited.is_err() {
        let _ = child.kill();
    }
    ensure!(exited?.success(), "the member exits cleanly on SIGTERM");
    Ok(())
}
