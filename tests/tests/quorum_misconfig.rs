//! Misconfigured quorums get a clear error instead of a split brain: a node whose
//! `--controller-voters` list differs from the others' is refused by them, and the rest of
//! the cluster keeps working.

use std::time::Duration;

use ferrolog_tests::{Cluster, Server, free_ports, init_logging, wait_until};

#[test]
fn a_node_with_a_different_voters_list_is_refused() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("nodes 1 and 2 are started with the cluster's voters list");
    let mut cluster = Cluster::configure(3, &[])?;
    cluster.start_nodes(&[1, 2])?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30))?;
    assert!(leader == 1 || leader == 2, "leader {leader}");

    tracing::info!("node 3 is started with a list that names a fourth voter");
    let ports = free_ports(3)?;
    let wrong_voters = format!("{},4@127.0.0.1:{}", cluster.voters(), ports[2]);
    let dir = tempfile::tempdir()?;
    let controller = cluster.controller_address(3).to_owned();
    let listen = format!("127.0.0.1:{}", ports[0]);
    let http = format!("127.0.0.1:{}", ports[1]);
    let odd_one = Server::start_exact(
        dir.path(),
        &[
            "--node-id",
            "3",
            "--listen",
            &listen,
            "--http-listen",
            &http,
            "--controller-listen",
            &controller,
            "--controller-voters",
            &wrong_voters,
        ],
        "node 3 (wrong voters)",
    )?;

    tracing::info!("its Raft traffic and theirs is refused both ways, and both sides say why");
    let mentions = |server: &Server| {
        server.stderr_tail().iter().any(|l| {
            l.contains("cluster id mismatch")
                || l.contains("refusing Raft traffic from another cluster")
        })
    };
    wait_until(
        "a refusal naming the cluster mismatch",
        Duration::from_secs(30),
        || {
            (mentions(&odd_one) && [1, 2].into_iter().any(|id| mentions(cluster.node(id))))
                .then_some(())
        },
    )?;

    tracing::info!("the well-configured majority still commits admin changes");
    let created = cluster.cli(
        1,
        &["topic", "create", "still-works", "--partitions", "1"],
        None,
    )?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let status = cluster.status_via(1)?;
    assert!(
        status["controller_leader"] == 1 || status["controller_leader"] == 2,
        "the leader must stay among the well-configured nodes: {status}"
    );
    Ok(())
}

#[test]
fn a_second_node_with_an_id_in_use_is_refused_at_start() -> anyhow::Result<()> {
    init_logging();
    let cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(Duration::from_secs(30))?;

    tracing::info!("a fourth process claims node id 2 with its own ports");
    let ports = free_ports(3)?;
    let dir = tempfile::tempdir()?;
    let output = std::process::Command::new(ferrolog_tests::ferrolog_bin())
        .arg("server")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--node-id", "2", "--controller-voters", cluster.voters()])
        .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
        .args(["--http-listen", &format!("127.0.0.1:{}", ports[1])])
        .args(["--controller-listen", &format!("127.0.0.1:{}", ports[2])])
        .output()?;
    assert!(
        !output.status.success(),
        "a duplicate node id must not start"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no other node uses id 2"), "{stderr}");

    tracing::info!("the real node 2 is unaffected");
    let status = cluster.status_via(1)?;
    assert!(
        status["controller_leader"].as_i64().is_some_and(|l| l >= 1),
        "{status}"
    );
    Ok(())
}
