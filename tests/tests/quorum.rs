//! The metadata quorum with real processes: three or five nodes (broker and controller
//! roles) elect one Raft leader, replicate every admin change to all nodes, survive SIGKILL
//! of the leader and of a minority, restart as a whole with all metadata, catch a far-behind
//! node up by snapshot, depose a leader that was frozen, and refuse or wait out bad
//! configurations instead of splitting.
//!
//! Changes go through the `ferrolog` CLI (`topic ...`, `produce`, `consume`), as an operator
//! would drive the cluster; what each node reports (the quorum, brokers, topic layout) is
//! read with the harness's typed describe (`ferrolog_tests::describe`, the admin API).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use ferrolog_tests::describe::{ClusterStatusResponse, ControllerStatus};
use ferrolog_tests::{
    Cluster, assert_ok, ferrolog_bin, free_ports, init_logging, run_cli_within, stderr, stdout,
    wait_until,
};

/// How long an election may take, from the first node's start or from a leader's death.
const ELECTION_DEADLINE: Duration = Duration::from_secs(30);
/// How long a committed change may take to show in another node's image.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(10);
/// How long a restarted node may take to catch up with the committed log.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);
/// The failover bound the issue asks the test to prove: leader death to first admin write.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);
/// The bound of one polling CLI run, so a node that hangs cannot stall a whole wait.
const POLL_CLI_LIMIT: Duration = Duration::from_secs(10);

/// The topics node `id` lists, or `None` when it cannot answer right now.
fn topics_on(cluster: &Cluster, id: i32) -> Option<BTreeSet<String>> {
    let out = run_cli_within(
        cluster.address(id),
        &["topic", "list"],
        None,
        POLL_CLI_LIMIT,
    )
    .ok()?;
    out.status
        .success()
        .then(|| stdout(&out).lines().map(str::to_owned).collect())
}

/// Waits until node `id` lists every topic of `expected` (it may list more).
fn wait_for_topics(
    cluster: &Cluster,
    id: i32,
    expected: &BTreeSet<String>,
    deadline: Duration,
) -> anyhow::Result<()> {
    let mut last = BTreeSet::new();
    let result = wait_until(&format!("node {id} to list the topics"), deadline, || {
        let listed = topics_on(cluster, id)?;
        let done = expected.is_subset(&listed);
        last = listed;
        done.then_some(())
    });
    result.map_err(|e| {
        let missing: Vec<_> = expected.difference(&last).collect();
        e.context(format!(
            "node {id} lists {} topic(s); missing {}: {missing:?}",
            last.len(),
            missing.len()
        ))
    })
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// `topic create` through node `via`, retried until it succeeds. A retry may find the topic
/// already there: an attempt that timed out can still have been committed, and that counts.
fn create_topic_until_done(
    cluster: &Cluster,
    via: i32,
    create_args: &[&str],
    deadline: Duration,
) -> anyhow::Result<()> {
    let mut args = vec!["topic", "create"];
    args.extend_from_slice(create_args);
    let mut last_error = String::new();
    let result =
        wait_until(
            &format!("`topic create` via node {via}"),
            deadline,
            || match run_cli_within(cluster.address(via), &args, None, POLL_CLI_LIMIT) {
                Ok(out) if out.status.success() => Some(()),
                Ok(out) if stderr(&out).contains("already exists") => Some(()),
                Ok(out) => {
                    last_error = stderr(&out);
                    None
                }
                Err(error) => {
                    last_error = format!("{error:#}");
                    None
                }
            },
        );
    result.map_err(|e| e.context(format!("last error: {last_error}")))
}

/// Waits until every live node's status names one and the same live leader, and returns
/// the statuses by node id.
fn wait_for_agreed_leader(
    cluster: &Cluster,
) -> anyhow::Result<(i32, BTreeMap<i32, ClusterStatusResponse>)> {
    let live = cluster.live_ids();
    let mut last = BTreeMap::new();
    let result = wait_until(
        "every live node to name the same leader",
        ELECTION_DEADLINE,
        || {
            let statuses: BTreeMap<i32, ClusterStatusResponse> = live
                .iter()
                .map(|&id| cluster.status_via(id).ok().map(|s| (id, s)))
                .collect::<Option<_>>()?;
            let leaders: BTreeSet<i32> = statuses.values().map(|s| s.controller_leader).collect();
            last = statuses.clone();
            if leaders.len() != 1 {
                return None;
            }
            let leader = *leaders.first()?;
            live.contains(&leader).then_some((leader, statuses))
        },
    );
    result.map_err(|e| {
        let named: BTreeMap<_, _> = last
            .iter()
            .map(|(id, s)| (id, s.controller_leader))
            .collect();
        e.context(format!("leaders named by node: {named:?}"))
    })
}

/// Waits until the status through node `via` lists every node of the cluster as a broker at
/// its client address: before that, a topic create may find too few brokers to place on.
fn wait_for_brokers(cluster: &Cluster, via: i32) -> anyhow::Result<()> {
    let expected: BTreeMap<i32, String> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.address(id).to_owned()))
        .collect();
    let mut last = None;
    let result = wait_until("every broker to register", PROPAGATION_DEADLINE, || {
        let status = cluster.status_via(via).ok()?;
        let brokers: BTreeMap<i32, String> = status
            .brokers
            .iter()
            .map(|b| (b.broker_id, b.address.clone()))
            .collect();
        last = Some(status);
        (brokers == expected).then_some(())
    });
    result.map_err(|e| e.context(format!("last status: {last:?}")))
}

#[test]
fn three_nodes_form_one_quorum_and_share_topics() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: three voters start; the lowest id bootstraps the cluster, an election follows"
    );
    let cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(ELECTION_DEADLINE)?;

    tracing::info!(
        "phase: every node must name the same leader and cluster, or admin writes could fork"
    );
    let (leader, statuses) = wait_for_agreed_leader(&cluster)?;
    let cluster_ids: BTreeSet<&str> = statuses.values().map(|s| s.cluster_id.as_str()).collect();
    assert_eq!(cluster_ids.len(), 1, "one cluster id: {statuses:?}");
    assert!(
        !cluster_ids.iter().any(|id| id.is_empty()),
        "status names the cluster id: {statuses:?}"
    );
    let status = &statuses[&leader];
    let by_id: BTreeMap<i32, &ControllerStatus> =
        status.controllers.iter().map(|c| (c.node_id, c)).collect();
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{status:?}"
    );
    for id in 1..=3 {
        let c = by_id[&id];
        assert!(c.voter, "{status:?}");
        assert_eq!(c.address, cluster.controller_address(id), "{status:?}");
    }

    tracing::info!("phase: all three brokers register, so new partitions can be spread over them");
    wait_for_brokers(&cluster, leader)?;

    tracing::info!("phase: a topic created through node 2 is committed and reaches nodes 1 and 3");
    // Replication factor 1: this test is about metadata, not partition replication.
    assert_ok(&cluster.cli(
        2,
        &[
            "topic",
            "create",
            "t",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
        ],
        None,
    )?);
    for id in [1, 3] {
        wait_for_topics(&cluster, id, &set(&["t"]), PROPAGATION_DEADLINE)?;
    }

    tracing::info!("phase: the three partitions' leaders are spread over the three brokers");
    let described = cluster.describe(1, "t")?;
    let leaders: BTreeSet<i32> = described.partitions.iter().map(|p| p.leader).collect();
    assert_eq!(leaders, BTreeSet::from([1, 2, 3]), "{described:?}");

    tracing::info!(
        "phase: records go to leaders on every node, found by a client bootstrapped on node 1"
    );
    let mut produced = Vec::new();
    for partition in 0..3 {
        let lines: Vec<String> = (0..2).map(|i| format!("p{partition}-r{i}")).collect();
        let input = format!("{}\n", lines.join("\n"));
        assert_ok(&cluster.cli(
            1,
            &["produce", "t", "--partition", &partition.to_string()],
            Some(&input),
        )?);
        produced.extend(lines);
    }
    let consumed = run_cli_within(
        &cluster.brokers_csv(),
        &[
            "consume",
            "t",
            "--from-beginning",
            "--max-messages",
            "6",
            "--timeout-ms",
            "10000",
        ],
        None,
        Duration::from_secs(60),
    )?;
    assert_ok(&consumed);
    let consumed: BTreeSet<String> = stdout(&consumed).lines().map(str::to_owned).collect();
    assert_eq!(consumed, produced.into_iter().collect::<BTreeSet<_>>());

    tracing::info!("phase: the leader sees every voter caught up with the commit index");
    wait_until(
        "every controller's lag to reach 0",
        PROPAGATION_DEADLINE,
        || {
            let status = cluster.status_via(leader).ok()?;
            let controllers = &status.controllers;
            (controllers.len() == 3 && controllers.iter().all(|c| c.lag == 0)).then_some(())
        },
    )?;
    Ok(())
}

#[test]
fn leader_sigkill_elects_a_new_leader_and_admin_keeps_working() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three voters agree on a leader; a topic is created before the failure");
    let mut cluster = Cluster::start(3, &[])?;
    let (old_leader, statuses) = wait_for_agreed_leader(&cluster)?;
    let term_before = statuses[&old_leader].term;
    create_topic_until_done(
        &cluster,
        old_leader,
        &[
            "before-failover",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
        PROPAGATION_DEADLINE,
    )?;

    tracing::info!(
        "phase: SIGKILL of leader {old_leader}: the survivors must elect a leader by themselves"
    );
    let killed_at = Instant::now();
    cluster.kill(old_leader)?;
    let new_leader = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let leader_after = killed_at.elapsed();
    assert_ne!(new_leader, old_leader);

    tracing::info!(
        "phase: an admin write through a follower is forwarded to the new leader and commits"
    );
    let via = cluster
        .live_ids()
        .into_iter()
        .find(|&id| id != new_leader)
        .expect("two nodes survive");
    create_topic_until_done(
        &cluster,
        via,
        &[
            "after-failover",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
        ELECTION_DEADLINE,
    )?;
    let admin_after = killed_at.elapsed();
    tracing::info!(
        "failover: new leader {new_leader} after {leader_after:?}, first admin write after \
         {admin_after:?}"
    );
    assert!(
        admin_after <= FAILOVER_BOUND,
        "failover took {admin_after:?} (leader after {leader_after:?}); the bound is \
         {FAILOVER_BOUND:?}"
    );
    let status = cluster.status_via(new_leader)?;
    assert!(
        status.term > term_before,
        "a new leader has a higher term than the old one: {term_before} then {status:?}"
    );

    tracing::info!(
        "phase: node {old_leader} restarts and catches up with what was committed without it"
    );
    cluster.restart(old_leader)?;
    wait_for_topics(
        &cluster,
        old_leader,
        &set(&["before-failover", "after-failover"]),
        CATCH_UP_DEADLINE,
    )?;
    let (leader, _) = wait_for_agreed_leader(&cluster)?;
    tracing::info!("all three nodes follow leader {leader} again");
    Ok(())
}

#[test]
fn whole_cluster_restart_keeps_all_metadata() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three voters agree on a leader and every broker registers");
    let mut cluster = Cluster::start(3, &[])?;
    let (mut old_leader, statuses) = wait_for_agreed_leader(&cluster)?;
    let cluster_id = statuses[&old_leader].cluster_id.clone();
    let mut term = statuses[&old_leader].term;
    wait_for_brokers(&cluster, old_leader)?;

    tracing::info!("phase: topics with configs are created; their description is the reference");
    let topics: [(&str, &[&str]); 3] = [
        (
            "orders",
            &["--partitions", "3", "--config", "retention.ms=3600000"],
        ),
        (
            "events",
            &[
                "--partitions",
                "2",
                "--config",
                "max.message.bytes=2048",
                "--config",
                "segment.bytes=1048576",
            ],
        ),
        ("audit", &["--partitions", "1", "--replication-factor", "1"]),
    ];
    for (name, args) in topics {
        let mut create = vec!["topic", "create", name];
        create.extend_from_slice(args);
        assert_ok(&cluster.cli(1, &create, None)?);
    }
    let names = set(&["orders", "events", "audit"]);
    for id in cluster.ids() {
        wait_for_topics(&cluster, id, &names, PROPAGATION_DEADLINE)?;
    }
    // Offsets and leaders may move; the layout (partitions, replicas) and configs may not.
    type Layout = (Vec<(i32, Vec<i32>)>, BTreeMap<String, String>);
    let describe = |cluster: &Cluster, id: i32, name: &str| -> anyhow::Result<Layout> {
        let described = cluster.describe(id, name)?;
        let partitions = described
            .partitions
            .iter()
            .map(|p| (p.partition, p.replicas.clone()))
            .collect();
        Ok((partitions, described.configs.into_iter().collect()))
    };
    let reference: BTreeMap<&str, Layout> = names
        .iter()
        .map(|name| Ok((name.as_str(), describe(&cluster, 1, name.as_str())?)))
        .collect::<anyhow::Result<_>>()?;

    let meta_properties = |cluster: &Cluster| -> BTreeMap<i32, Option<String>> {
        cluster
            .ids()
            .into_iter()
            .map(|id| {
                let path = cluster.data_dir(id).join("meta.properties");
                (id, std::fs::read_to_string(path).ok())
            })
            .collect()
    };
    let meta_before = meta_properties(&cluster);

    for how in ["SIGTERM", "SIGKILL"] {
        tracing::info!(
            "phase: {how} of every node: only what is on disk can bring the cluster back"
        );
        for id in cluster.ids() {
            if how == "SIGTERM" {
                let status = cluster.terminate(id)?;
                assert!(
                    status.success(),
                    "node {id} exits 0 on SIGTERM, got {status}"
                );
            } else {
                cluster.kill(id)?;
            }
        }
        let ids = cluster.ids();
        cluster.start_nodes(&ids)?;

        tracing::info!("phase: after {how} the same cluster (not a fresh one) elects a leader");
        let (leader, statuses) = wait_for_agreed_leader(&cluster)?;
        for (id, status) in &statuses {
            assert_eq!(
                status.cluster_id, cluster_id,
                "node {id} after {how}: the cluster was re-initialized"
            );
        }
        assert_eq!(
            meta_properties(&cluster),
            meta_before,
            "after {how} a node's meta.properties (its node and cluster id) changed"
        );
        // openraft lets a leader whose vote was committed resume in its own term after a
        // restart; any other leader needs a higher term. A lower term means a forgotten vote.
        let new_term = statuses[&leader].term;
        assert!(
            new_term > term || (new_term == term && leader == old_leader),
            "after {how} leader {old_leader} of term {term} was followed by leader {leader} of \
             term {new_term}: two leaders in one term, or a forgotten vote"
        );
        tracing::info!(
            "after {how}: leader {leader} in term {new_term} (before: leader {old_leader} in term \
             {term})"
        );
        term = new_term;
        old_leader = leader;

        tracing::info!("phase: after {how} every node describes the topics as before");
        for id in cluster.ids() {
            wait_for_topics(&cluster, id, &names, CATCH_UP_DEADLINE)?;
            for (name, expected) in &reference {
                assert_eq!(
                    &describe(&cluster, id, name)?,
                    expected,
                    "topic {name} on node {id} after {how}"
                );
            }
        }
    }
    Ok(())
}

/// A node that missed more of the metadata log than the leader keeps (the leader snapshots
/// every 20 entries and purges its log behind the snapshot) catches up by installing the
/// leader's snapshot, not by replaying the log. The proof is the state machine's own line
/// for a snapshot received from the leader ("metadata snapshot installed", at info level in
/// `ferrolog_metadata::raft::state_machine`), which the restarted node must print; neither a
/// snapshot it builds itself nor one it loads from disk at start prints it.
#[test]
fn a_node_far_behind_installs_a_snapshot() -> anyhow::Result<()> {
    init_logging();
    const TOPICS: usize = 60;
    const SNAPSHOT_ENTRIES: u64 = 20;
    /// How long the leader may take to purge its log behind a snapshot.
    const PURGE_DEADLINE: Duration = Duration::from_secs(30);
    /// What the state machine logs when it installs a snapshot sent by the leader.
    const INSTALLED: &str = "metadata snapshot installed";

    tracing::info!(
        "phase: three voters that snapshot every {SNAPSHOT_ENTRIES} entries and log each \
         snapshot they install"
    );
    let snapshot_entries = SNAPSHOT_ENTRIES.to_string();
    let mut cluster = Cluster::configure(3, &["--metadata-snapshot-entries", &snapshot_entries])?;
    cluster.log_also("ferrolog_metadata::raft::state_machine=info");
    let ids = cluster.ids();
    cluster.start_nodes(&ids)?;
    let (leader, statuses) = wait_for_agreed_leader(&cluster)?;
    let commit_at_kill = statuses[&leader].commit_index;

    tracing::info!(
        "phase: node 3 goes down at commit index {commit_at_kill} while {TOPICS} admin writes \
         commit, three snapshots' worth"
    );
    cluster.kill(3)?;
    let names: Vec<String> = (0..TOPICS).map(|i| format!("snap-{i:02}")).collect();
    for name in &names {
        create_topic_until_done(
            &cluster,
            1,
            &[
                name.as_str(),
                "--partitions",
                "1",
                "--replication-factor",
                "1",
            ],
            ELECTION_DEADLINE,
        )?;
    }
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let status = cluster.status_via(leader)?;
    assert!(
        status.commit_index > TOPICS as u64,
        "every create is a committed entry, so the log passed several snapshot points: \
         {status:?}"
    );
    assert!(
        status.snapshot_index >= SNAPSHOT_ENTRIES,
        "the leader snapshotted its log: {status:?}"
    );

    tracing::info!(
        "phase: the leader purges its log behind its snapshot, past everything node 3 has, so \
         only the snapshot can bring node 3 up to date"
    );
    // openraft purges behind the snapshot asynchronously, and not while a replication stream
    // still reads those entries.
    let status = wait_until(
        &format!("the leader's log purged past index {commit_at_kill}"),
        PURGE_DEADLINE,
        || {
            let status = cluster.status_via(leader).ok()?;
            (status.purged_index > commit_at_kill).then_some(status)
        },
    )?;
    tracing::info!(
        "leader {leader} purged its log through {}",
        status.purged_index
    );

    tracing::info!("phase: node 3 restarts and installs the leader's snapshot");
    cluster.restart(3)?;
    let expected: BTreeSet<String> = names.iter().cloned().collect();
    wait_for_topics(&cluster, 3, &expected, CATCH_UP_DEADLINE)?;
    wait_until(
        "node 3 to log a snapshot installed from the leader",
        PROPAGATION_DEADLINE,
        || {
            cluster
                .node(3)
                .stderr_tail()
                .iter()
                .any(|line| line.contains(INSTALLED))
                .then_some(())
        },
    )
    .with_context(|| {
        format!(
            "node 3 caught up without installing a snapshot; its last lines: {:?}",
            cluster.node(3).stderr_tail()
        )
    })?;

    tracing::info!("phase: after the snapshot node 3 follows the log again");
    create_topic_until_done(
        &cluster,
        1,
        &[
            "after-snapshot",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
        PROPAGATION_DEADLINE,
    )?;
    wait_for_topics(&cluster, 3, &set(&["after-snapshot"]), PROPAGATION_DEADLINE)?;
    Ok(())
}

#[test]
fn five_voters_tolerate_two_failures() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: five voters agree on a leader");
    let mut cluster = Cluster::start(5, &[])?;
    let (leader, _) = wait_for_agreed_leader(&cluster)?;
    let other = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("five nodes");

    tracing::info!(
        "SIGKILL of leader {leader} and node {other}: three of five are still a majority"
    );
    cluster.kill(leader)?;
    cluster.kill(other)?;
    let new_leader = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    assert!(cluster.live_ids().contains(&new_leader));

    tracing::info!("phase: admin writes commit with two voters down and reach every survivor");
    let via = cluster.live_ids()[0];
    create_topic_until_done(
        &cluster,
        via,
        &[
            "with-two-down",
            "--partitions",
            "2",
            "--replication-factor",
            "1",
        ],
        ELECTION_DEADLINE,
    )?;
    for id in cluster.live_ids() {
        wait_for_topics(&cluster, id, &set(&["with-two-down"]), PROPAGATION_DEADLINE)?;
    }
    Ok(())
}

#[test]
fn a_paused_leader_steps_down_when_it_resumes() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three voters agree on a leader");
    let mut cluster = Cluster::start(3, &[])?;
    let (old_leader, statuses) = wait_for_agreed_leader(&cluster)?;
    let old_term = statuses[&old_leader].term;

    tracing::info!(
        "phase: SIGSTOP of leader {old_leader}: it keeps its sockets but misses its heartbeats"
    );
    cluster.pause(old_leader);
    let new_leader = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    let via = cluster.live_ids()[0];
    create_topic_until_done(
        &cluster,
        via,
        &["while-paused", "--partitions", "1"],
        ELECTION_DEADLINE,
    )?;

    tracing::info!(
        "phase: on SIGCONT the old leader must learn of term > {old_term} and step down"
    );
    cluster.resume(old_leader);
    let (leader, statuses) = wait_for_agreed_leader(&cluster)?;
    for (id, status) in &statuses {
        assert!(
            status.term > old_term,
            "node {id} reports term {} after leader {old_leader} of term {old_term} was paused: \
             {status:?}",
            status.term
        );
    }
    tracing::info!(
        "paused leader {old_leader}: new leader {new_leader}, after resume leader {leader}"
    );

    tracing::info!(
        "phase: a write through the old leader is forwarded and every node has both topics"
    );
    create_topic_until_done(
        &cluster,
        old_leader,
        &["after-resume", "--partitions", "1"],
        PROPAGATION_DEADLINE,
    )?;
    for id in cluster.ids() {
        wait_for_topics(
            &cluster,
            id,
            &set(&["while-paused", "after-resume"]),
            PROPAGATION_DEADLINE,
        )?;
    }
    Ok(())
}

#[test]
fn a_controller_not_among_the_voters_is_refused() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: a node with id 4 starts as a controller, with only node 1 in its voters \
         list: it must exit, not join"
    );
    let dir = tempfile::tempdir()?;
    let ports = free_ports(2)?;
    let voters = format!("1@127.0.0.1:{}", ports[0]);
    let controller_listen = format!("127.0.0.1:{}", ports[1]);
    let mut child = Command::new(ferrolog_bin())
        .args([
            "server",
            "--node-id",
            "4",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--controller-listen",
            &controller_listen,
            "--controller-voters",
            &voters,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("node 4 kept running with voters {voters}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)?;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("not among the controller voters"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn unreachable_voters_report_waiting_for_quorum() -> anyhow::Result<()> {
    init_logging();
    let mut cluster = Cluster::configure(3, &[])?;
    tracing::info!("phase: only node 1 of three voters runs: it must wait, not lead alone");
    cluster.start_node(1)?;

    // What an operator sees: `cluster status` says it waits, or fails saying why.
    let started = Instant::now();
    let status = run_cli_within(
        cluster.address(1),
        &["cluster", "status"],
        None,
        Duration::from_secs(60),
    )?;
    tracing::info!(
        "cluster status without quorum ({:?}, {}): stdout {} stderr {}",
        started.elapsed(),
        status.status,
        stdout(&status).trim(),
        stderr(&status).trim()
    );
    if status.status.success() {
        let out = stdout(&status);
        assert!(
            out.contains("Controller leader: none (waiting for quorum)"),
            "{out}"
        );
    } else {
        let err = stderr(&status);
        assert!(
            err.contains("no controller leader") || err.contains("waiting for quorum"),
            "{err}"
        );
    }

    tracing::info!("phase: an admin write without a quorum fails within the CLI's timeout");
    let started = Instant::now();
    let create = run_cli_within(
        cluster.address(1),
        &["topic", "create", "no-quorum", "--partitions", "1"],
        None,
        Duration::from_secs(60),
    )?;
    tracing::info!(
        "topic create without quorum failed after {:?}: {}",
        started.elapsed(),
        stderr(&create).trim()
    );
    assert!(
        !create.status.success(),
        "a topic create without a quorum succeeded: {}",
        stdout(&create)
    );

    tracing::info!(
        "phase: once a second voter arrives the waiting node forms a quorum and admin works"
    );
    cluster.start_node(2)?;
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE)?;
    assert!([1, 2].contains(&leader), "leader {leader}");
    create_topic_until_done(
        &cluster,
        1,
        &[
            "with-quorum",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
        ELECTION_DEADLINE,
    )?;
    wait_for_topics(&cluster, 2, &set(&["with-quorum"]), PROPAGATION_DEADLINE)?;
    Ok(())
}
