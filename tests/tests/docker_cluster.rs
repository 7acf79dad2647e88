//! Network faults against the three-node Docker Compose cluster (deploy/docker): while an
//! acks=all producer writes uniquely numbered records to an RF=3 topic from the host, one
//! node is killed (`docker kill`) and started again, one is frozen (`docker pause`) and
//! thawed, and one is cut off its network (`docker network disconnect`) and reconnected,
//! each time waiting until the cluster has recovered (every partition led by a live broker
//! and fully in sync, the node ready again). The history checker then reads everything back:
//! zero lost, zero misplaced, zero reordered.
//!
//! Runs only when a Docker engine answers (`docker info`); otherwise it says why and passes.
//! It builds the image with scripts/build-image.sh (a no-op when scripts/test.sh has built
//! it already; the first static release build takes several minutes), starts the cluster
//! under a compose project name of its own, and removes containers, network and volumes at
//! the end, also when it fails. Every wait has a deadline.
//!
//! `FERROLOG_TEST_SUBNET_PREFIX` (three octets) picks the cluster's /24 when the default
//! one, derived from the process id, collides with a network on the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferrolog_client::ClientConfig;
use ferrolog_tests::workload::{Outcome, Workload, read_all};
use ferrolog_tests::{describe, history};
use ferrolog_tests::{http_get, init_logging, run_cli_within, stdout, wait_until};

const TOPIC: &str = "docker-faults";
const PARTITIONS: u32 = 3;
const NODES: [i32; 3] = [1, 2, 3];
/// Building the image when scripts/test.sh has not: a static release build from scratch.
const IMAGE_BUILD_LIMIT: Duration = Duration::from_secs(900);
const CLUSTER_UP_LIMIT: Duration = Duration::from_secs(150);
const CLUSTER_DOWN_LIMIT: Duration = Duration::from_secs(120);
const DOCKER_LIMIT: Duration = Duration::from_secs(60);
const CLI_LIMIT: Duration = Duration::from_secs(15);
/// A fault's leaderships must have moved within this long (the session timeout is 1.2 s).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// A recovered node must be back in every ISR and ready within this long.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);
/// How long a recovered cluster must look recovered before the next fault.
const STABLE_FOR: Duration = Duration::from_secs(2);
/// How long each fault lasts once its leaderships have moved: writes go on meanwhile.
const FAULT_HOLD: Duration = Duration::from_secs(3);
/// Acknowledgements that must arrive after each recovery: the workload did not stall.
const PROGRESS_RECORDS: u64 = 100;
const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository root")
        .to_path_buf()
}

/// Runs a command to completion within `limit`, SIGKILLing it past that.
fn run_bounded(command: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let what = format!("{command:?}");
    ferrolog_tests::run_bounded(command, limit, &what)
}

fn ensure_success(output: &Output, what: &str) -> anyhow::Result<()> {
    ensure!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = run_bounded(Command::new("docker").args(args), DOCKER_LIMIT)?;
    ensure_success(&output, &format!("docker {}", args.join(" ")))?;
    Ok(stdout(&output).trim().to_owned())
}

/// The compose cluster of this test: its project name and subnet, torn down on drop.
struct ComposeCluster {
    project: String,
    subnet_prefix: String,
    passed: bool,
}

impl ComposeCluster {
    fn script(&self, name: &str) -> Command {
        let mut command = Command::new(repo_root().join("scripts").join(name));
        command
            .current_dir(repo_root())
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("FERROLOG_SUBNET_PREFIX", &self.subnet_prefix)
            .env("FERROLOG_LOG", "info,ferrolog_broker=warn");
        command
    }

    fn ip(&self, node: i32) -> String {
        format!("{}.1{node}", self.subnet_prefix)
    }

    fn address(&self, node: i32) -> String {
        format!("{}:9290", self.ip(node))
    }

    fn brokers_csv(&self) -> String {
        NODES
            .iter()
            .map(|n| self.address(*n))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn service(node: i32) -> String {
        format!("ferrolog-{node}")
    }

    fn container(&self, node: i32) -> anyhow::Result<String> {
        let output = run_bounded(
            self.script("compose.sh")
                .args(["ps", "-q"])
                .arg(Self::service(node)),
            DOCKER_LIMIT,
        )?;
        ensure_success(&output, "compose ps")?;
        let id = stdout(&output).trim().to_owned();
        ensure!(!id.is_empty(), "node {node} has no container");
        Ok(id)
    }

    /// The one network the node's container is attached to.
    fn network(&self, container: &str) -> anyhow::Result<String> {
        let networks = docker(&[
            "inspect",
            "-f",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
            container,
        ])?;
        networks
            .split_whitespace()
            .find(|n| n.ends_with("_ferrolog"))
            .map(str::to_owned)
            .with_context(|| format!("container {container} is on no *_ferrolog network"))
    }

    /// `GET /ready` on the node's HTTP port: `Ok(body)` on 200, `Err(reason)` otherwise.
    fn ready(&self, node: i32) -> Result<String, String> {
        let address = format!("{}:9280", self.ip(node));
        match http_get(&address, "/ready") {
            Ok((200, body)) => Ok(body.trim().to_owned()),
            Ok((_, body)) => Err(body.trim().to_owned()),
            Err(error) => Err(format!("{error:#}")),
        }
    }

    fn cli(&self, via: i32, args: &[&str]) -> anyhow::Result<Output> {
        run_cli_within(&self.address(via), args, None, CLI_LIMIT)
    }

    /// (leader, ISR size) of every partition of TOPIC, as node `via` sees it.
    fn describe(&self, via: i32) -> Option<Vec<(i32, usize)>> {
        let described = describe::topic(&self.address(via), TOPIC).ok()?;
        Some(
            described
                .partitions
                .iter()
                .map(|p| (p.leader, p.isr.len()))
                .collect(),
        )
    }

    /// Waits until every partition has a live leader and all three replicas in sync, and
    /// every node answers ready, without a break for `STABLE_FOR` (a restarted node may look
    /// ready on its old image for a moment before the controller fences it).
    fn wait_all_in_sync(&self, via: i32, deadline: Duration) -> anyhow::Result<()> {
        let mut last = String::new();
        let mut since: Option<Instant> = None;
        let waited = wait_until(
            "every partition fully in sync, every node ready",
            deadline,
            || {
                let partitions = self.describe(via);
                let in_sync = partitions.as_ref().is_some_and(|ps| {
                    ps.len() == PARTITIONS as usize && ps.iter().all(|(l, isr)| *l > 0 && *isr == 3)
                });
                if !in_sync {
                    last = format!("partitions (leader, ISR size): {partitions:?}");
                    since = None;
                    return None;
                }
                for node in NODES {
                    if let Err(reason) = self.ready(node) {
                        last = format!("node {node}: {reason}");
                        since = None;
                        return None;
                    }
                }
                let since = *since.get_or_insert_with(Instant::now);
                (since.elapsed() >= STABLE_FOR).then_some(())
            },
        );
        waited.with_context(|| format!("last seen: {last}"))
    }

    /// Waits until no partition is led by `node` and each has a leader.
    fn wait_leaders_moved_off(&self, node: i32, via: i32) -> anyhow::Result<Duration> {
        let started = Instant::now();
        wait_until(
            "the partitions to have leaders other than the faulted node",
            FAILOVER_DEADLINE,
            || {
                self.describe(via)
                    .filter(|ps| {
                        ps.len() == PARTITIONS as usize
                            && ps.iter().all(|(l, _)| *l > 0 && *l != node)
                    })
                    .map(|_| ())
            },
        )?;
        Ok(started.elapsed())
    }

    fn dump_logs(&self) {
        match run_bounded(
            self.script("compose.sh")
                .args(["logs", "--no-color", "--tail", "60"]),
            DOCKER_LIMIT,
        ) {
            Ok(output) => eprintln!(
                "--- compose logs of {} ---\n{}{}",
                self.project,
                stdout(&output),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("cannot read the compose logs: {error:#}"),
        }
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        if !self.passed {
            self.dump_logs();
        }
        match run_bounded(
            self.script("cluster-down.sh").env("STOP_TIMEOUT_S", "10"),
            CLUSTER_DOWN_LIMIT,
        ) {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "cluster-down.sh failed for {}: {}",
                self.project,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("cluster-down.sh for {}: {error:#}", self.project),
        }
    }
}

/// Whether a Docker engine answers; `Err` says why not.
fn docker_available() -> Result<(), String> {
    match run_bounded(
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(20),
    ) {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(error) => Err(format!("{error:#}")),
    }
}

/// The leader of partition `partition` of TOPIC, as node `via` sees it.
fn leader_of(cluster: &ComposeCluster, via: i32, partition: usize) -> anyhow::Result<i32> {
    let partitions = cluster.describe(via).context("describe the topic")?;
    let leader = partitions.get(partition).context("no such partition")?.0;
    ensure!(leader > 0, "partition {partition} has no leader");
    Ok(leader)
}

fn any_other(node: i32) -> i32 {
    NODES.into_iter().find(|n| *n != node).expect("three nodes")
}

#[test]
fn kill_pause_and_disconnect_under_acks_all_lose_and_reorder_nothing() -> anyhow::Result<()> {
    init_logging();
    if let Err(reason) = docker_available() {
        eprintln!("skipped: no Docker engine answers `docker info` ({reason})");
        return Ok(());
    }
    let test_started = Instant::now();

    tracing::info!("phase: the image must contain the code under test: build it (incremental)");
    let started = Instant::now();
    let output = run_bounded(
        Command::new(repo_root().join("scripts/build-image.sh")).current_dir(repo_root()),
        IMAGE_BUILD_LIMIT,
    )?;
    ensure_success(&output, "scripts/build-image.sh")?;
    tracing::info!(
        "{} ({:.0} s)",
        stdout(&output).trim(),
        started.elapsed().as_secs_f64()
    );

    let pid = std::process::id();
    let mut cluster = ComposeCluster {
        project: format!("ferrolog-test-{pid}"),
        subnet_prefix: std::env::var("FERROLOG_TEST_SUBNET_PREFIX")
            .unwrap_or_else(|_| format!("172.29.{}", 100 + pid % 150)),
        passed: false,
    };
    tracing::info!(project = %cluster.project, subnet = %cluster.subnet_prefix,
        "phase: three nodes come up healthy and ready");
    let started = Instant::now();
    let output = run_bounded(
        cluster
            .script("cluster-up.sh")
            .env("SKIP_IMAGE_BUILD", "1")
            .env("HEALTHY_DEADLINE_S", "120"),
        CLUSTER_UP_LIMIT,
    )?;
    ensure_success(&output, "scripts/cluster-up.sh")?;
    tracing::info!(
        "compose cluster {} healthy after {:.1} s",
        cluster.project,
        started.elapsed().as_secs_f64()
    );

    tracing::info!("phase: an RF=3 topic, every replica in sync, before any fault");
    wait_until("the topic is created", Duration::from_secs(30), || {
        cluster
            .cli(
                1,
                &[
                    "topic",
                    "create",
                    TOPIC,
                    "--partitions",
                    &PARTITIONS.to_string(),
                    "--replication-factor",
                    "3",
                ],
            )
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    })?;
    cluster.wait_all_in_sync(1, RECOVERY_DEADLINE)?;

    let mut client = ClientConfig::with_brokers(NODES.iter().map(|n| cluster.address(*n)));
    // A frozen or cut-off node answers nothing; give up on it quickly and retry elsewhere
    // rather than after the 30 s default.
    client.request_timeout_ms = 5_000;
    client.connect_timeout_ms = 2_000;
    tracing::info!("phase: the acks=all workload writes through every fault below");
    let workload = Workload::start_with(client, TOPIC, PARTITIONS);
    let wait_progress = |from: u64, phase: &str| {
        workload.wait_progress(from, PROGRESS_RECORDS, PROGRESS_DEADLINE, phase)
    };
    let mut progress = wait_progress(0, "before any fault")?;

    let faults = (|| -> anyhow::Result<()> {
        tracing::info!("phase: docker kill: the leader of partition 0 dies, then starts again");
        let target = leader_of(&cluster, 1, 0)?;
        let observer = any_other(target);
        let container = cluster.container(target)?;
        docker(&["kill", &container])?;
        let moved = cluster.wait_leaders_moved_off(target, observer)?;
        tracing::info!("kill: node {target} killed; leaderships moved after {moved:.1?}");
        progress = wait_progress(progress, "while a node is dead")?;
        std::thread::sleep(FAULT_HOLD);
        docker(&["start", &container])?;
        let started = Instant::now();
        cluster.wait_all_in_sync(observer, RECOVERY_DEADLINE)?;
        tracing::info!(
            "kill: node {target} back in every ISR and ready {:.1?} after docker start",
            started.elapsed()
        );
        progress = wait_progress(progress, "after the killed node returned")?;

        tracing::info!("phase: docker pause: the leader of partition 1 freezes, then thaws");
        let target = leader_of(&cluster, 1, 1)?;
        let observer = any_other(target);
        let container = cluster.container(target)?;
        docker(&["pause", &container])?;
        let moved = cluster.wait_leaders_moved_off(target, observer);
        let moved = match moved {
            Ok(moved) => moved,
            Err(error) => {
                let _ = docker(&["unpause", &container]);
                return Err(error);
            }
        };
        tracing::info!("pause: node {target} frozen; leaderships moved after {moved:.1?}");
        let during = wait_progress(progress, "while a node is frozen");
        std::thread::sleep(FAULT_HOLD);
        docker(&["unpause", &container])?;
        progress = during?;
        let started = Instant::now();
        cluster.wait_all_in_sync(observer, RECOVERY_DEADLINE)?;
        tracing::info!(
            "pause: node {target} back in every ISR and ready {:.1?} after docker unpause",
            started.elapsed()
        );
        progress = wait_progress(progress, "after the frozen node thawed")?;

        tracing::info!("phase: docker network disconnect: the leader of partition 2 is cut off");
        let target = leader_of(&cluster, 1, 2)?;
        let observer = any_other(target);
        let container = cluster.container(target)?;
        let network = cluster.network(&container)?;
        docker(&["network", "disconnect", &network, &container])?;
        let reconnect = || {
            // The same address, and the service name as a DNS alias: the voters list and
            // the advertised address name them.
            docker(&[
                "network",
                "connect",
                "--ip",
                &cluster.ip(target),
                "--alias",
                &ComposeCluster::service(target),
                &network,
                &container,
            ])
        };
        let moved = match cluster.wait_leaders_moved_off(target, observer) {
            Ok(moved) => moved,
            Err(error) => {
                let _ = reconnect();
                return Err(error);
            }
        };
        tracing::info!("disconnect: node {target} cut off; leaderships moved after {moved:.1?}");
        let during = wait_progress(progress, "while a node is cut off");
        std::thread::sleep(FAULT_HOLD);
        reconnect()?;
        progress = during?;
        let started = Instant::now();
        cluster.wait_all_in_sync(observer, RECOVERY_DEADLINE)?;
        tracing::info!(
            "disconnect: node {target} back in every ISR and ready {:.1?} after reconnecting",
            started.elapsed()
        );
        progress = wait_progress(progress, "after the node was reconnected")?;
        Ok(())
    })();

    let Outcome { acks, failed } = workload.stop()?;
    faults?;

    tracing::info!("phase: every acknowledged record is read back at its offset, in order");
    let reads = read_all(&cluster.brokers_csv(), TOPIC, PARTITIONS)?;
    let report = history::check(&acks, &reads);
    tracing::info!(
        "history after kill, pause and disconnect: {report}; {failed} sends failed; \
         {progress} acknowledged while watching; {:.0} s in all",
        test_started.elapsed().as_secs_f64()
    );
    // Zero lost, zero misplaced, zero reordered; duplicates (retried sends that had landed)
    // are allowed without idempotent producers.
    ensure!(report.is_safe(), "{report}");
    ensure!(report.acknowledged > 0, "nothing was acknowledged");
    cluster.passed = true;
    Ok(())
}
