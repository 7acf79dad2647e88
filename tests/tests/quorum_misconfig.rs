//! Misconfigured quorums get a clear error instead of a split brain: a node whose
//! `--controller-voters` list differs from the others' is refused by them, a second process
//! with a node id in use is refused (as a controller and as a broker), and the rest of the
//! cluster keeps working.

use std::time::Duration;

use ferrolog_tests::{Cluster, Server, free_ports, init_logging, wait_until};

#[test]
fn a_node_with_a_different_voters_list_is_refused() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: nodes 1 and 2 are started with the cluster's voters list");
    let mut cluster = Cluster::configure(3, &[])?;
    cluster.start_nodes(&[1, 2])?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30))?;
    assert!(leader == 1 || leader == 2, "leader {leader}");

    tracing::info!("phase: node 3 is started with a list that names a fourth voter");
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

    tracing::info!(
        "phase: its Raft traffic and theirs is refused both ways, and both sides say why"
    );
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

    tracing::info!("phase: the well-configured majority still commits admin changes");
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
        [1, 2].contains(&status.controller_leader),
        "the leader must stay among the well-configured nodes: {status:?}"
    );
    Ok(())
}

#[test]
fn a_second_node_with_an_id_in_use_is_refused_at_start() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes form a quorum");
    let cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(Duration::from_secs(30))?;

    tracing::info!("phase: a fourth process claims node id 2 with its own ports");
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

    tracing::info!("phase: the real node 2 is unaffected");
    let status = cluster.status_via(1)?;
    assert!(status.controller_leader >= 1, "{status:?}");
    Ok(())
}

#[test]
fn a_cloned_node_on_another_host_with_the_same_port_is_refused() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes form a quorum");
    let mut cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(Duration::from_secs(30))?;

    // The dangerous duplicate is a clone (a copied volume or VM image): it has node 2's
    // log and membership, so it campaigns in node 2's name. Fresh copies never do.
    tracing::info!("phase: node 2 stops, its data directory is copied, and it starts again");
    cluster.terminate(2)?;
    let clone_dir = tempfile::tempdir()?;
    copy_dir(cluster.data_dir(2), clone_dir.path())?;
    cluster.start_node(2)?;

    // 127.0.0.2 is another address of this machine: the clone listens on node 2's
    // controller port there, exactly as a clone on a second host would, so nothing about
    // its addresses gives it away.
    tracing::info!("phase: the clone starts on 127.0.0.2 with node 2's id and port");
    let controller_port = cluster
        .controller_address(2)
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("node 2's controller address has no port"))?;
    let ports = free_ports(2)?;
    let clone = Server::start_exact(
        clone_dir.path(),
        &[
            "--node-id",
            "2",
            "--listen",
            &format!("127.0.0.2:{}", ports[0]),
            "--http-listen",
            &format!("127.0.0.2:{}", ports[1]),
            "--controller-listen",
            &format!("127.0.0.2:{controller_port}"),
            "--controller-voters",
            cluster.voters(),
        ],
        "clone of node 2",
    )?;

    tracing::info!("phase: nodes 1 or 3 see two incarnations of node 2 at once and say so");
    let noticed = |id: i32| {
        cluster
            .node(id)
            .stderr_tail()
            .iter()
            .any(|l| l.contains("two running processes use node id 2"))
    };
    wait_until(
        "a refusal naming the duplicate node id",
        Duration::from_secs(30),
        || (noticed(1) || noticed(3)).then_some(()),
    )?;

    tracing::info!("phase: nodes 1 and 3 still commit admin changes");
    let created = cluster.cli(
        1,
        &["topic", "create", "despite-the-clone", "--partitions", "1"],
        None,
    )?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    drop(clone);
    Ok(())
}

#[test]
fn a_second_broker_process_with_a_registered_id_is_refused_until_the_first_stops()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes form a quorum and broker 3 registers");
    let mut cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(Duration::from_secs(30))?;
    let registered_at = |cluster: &Cluster| -> Option<String> {
        let status = cluster.status_via(1).ok()?;
        status
            .brokers
            .iter()
            .find(|b| b.broker_id == 3 && b.state == "registered")
            .map(|b| b.address.clone())
    };
    let original = wait_until("broker 3 registered", Duration::from_secs(30), || {
        registered_at(&cluster)
    })?;

    tracing::info!(
        "phase: a broker-only process reuses id 3 (a copy-pasted config) on its own ports: it \
         is told why it cannot register"
    );
    let dir = tempfile::tempdir()?;
    let ports = free_ports(2)?;
    let duplicate_address = format!("127.0.0.1:{}", ports[0]);
    let duplicate = Server::start_exact(
        dir.path(),
        &[
            "--node-id",
            "3",
            "--roles",
            "broker",
            "--listen",
            &duplicate_address,
            "--http-listen",
            &format!("127.0.0.1:{}", ports[1]),
            "--controller-voters",
            cluster.voters(),
        ],
        "second broker 3",
    )?;
    wait_until(
        "the duplicate is told why it cannot register",
        Duration::from_secs(30),
        || {
            duplicate
                .stderr_tail()
                .iter()
                .any(|l| l.contains("is registered by another running process"))
                .then_some(())
        },
    )?;
    tracing::info!(
        "phase: for a few seconds (several sessions) the registered process keeps its id"
    );
    for _ in 0..10 {
        let now = registered_at(&cluster);
        assert_eq!(now.as_deref(), Some(original.as_str()), "broker 3 moved");
        std::thread::sleep(Duration::from_millis(300));
    }

    tracing::info!("phase: once the first process is gone (and fenced), the second one registers");
    cluster.kill(3)?;
    wait_until(
        "the second process registered as broker 3",
        Duration::from_secs(30),
        || (registered_at(&cluster)? == duplicate_address).then_some(()),
    )?;
    drop(duplicate);
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
