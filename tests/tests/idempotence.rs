//! The idempotent producer (the client's default with acks=all) through ten faults of
//! partition leaders on three nodes, SIGKILLs and SIGSTOPs in turn, under a steady workload
//! of uniquely numbered records: the history checker finds nothing lost, misplaced or
//! reordered, and, unlike a plain producer's retries, nothing duplicated.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferrolog_tests::history;
use ferrolog_tests::workload::{Outcome, Workload, read_all};
use ferrolog_tests::{Cluster, init_logging, wait_until};

const TOPIC: &str = "exactly-once";
const PARTITIONS: u32 = 3;
const FAULTS: usize = 10;
const DEADLINE: Duration = Duration::from_secs(30);
/// Acknowledgements the workload must add between two faults, so every fault lands on a
/// producer with batches in flight.
const PROGRESS_BETWEEN_FAULTS: u64 = 20;

/// (leader, ISR size) of every partition, as node `via` sees it.
fn partitions(cluster: &Cluster, via: i32) -> Option<Vec<(i32, usize)>> {
    let described = cluster.describe(via, TOPIC).ok()?;
    Some(
        described
            .partitions
            .iter()
            .map(|p| (p.leader, p.isr.len()))
            .collect(),
    )
}

fn all_in_sync(cluster: &Cluster, via: i32) -> Option<()> {
    partitions(cluster, via)
        .filter(|ps| {
            ps.len() == PARTITIONS as usize && ps.iter().all(|(l, isr)| *l > 0 && *isr == 3)
        })
        .map(|_| ())
}

#[test]
fn an_idempotent_producer_through_ten_leader_kills_and_pauses_loses_duplicates_and_reorders_nothing()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes and {PARTITIONS} RF=3 partitions, all in sync");
    let mut cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(DEADLINE)?;
    cluster.create_topic(1, TOPIC, PARTITIONS, 3)?;
    wait_until("every partition in sync", DEADLINE, || {
        all_in_sync(&cluster, 1)
    })?;

    tracing::info!("phase: an idempotent acks=all workload writes through every fault");
    let brokers: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.address(id).to_owned())
        .collect();
    let workload = Workload::start(brokers, TOPIC, PARTITIONS);

    for fault in 0..FAULTS {
        let before = workload.acknowledged();
        wait_until("the workload makes progress", DEADLINE, || {
            (workload.acknowledged() >= before + PROGRESS_BETWEEN_FAULTS).then_some(())
        })?;
        let observer = cluster.live_ids()[0];
        let leaders = partitions(&cluster, observer).context("describe")?;
        let target = leaders[fault % PARTITIONS as usize].0;
        let observer = cluster
            .live_ids()
            .into_iter()
            .find(|id| *id != target)
            .context("another live node")?;
        let started = Instant::now();
        if fault % 2 == 0 {
            tracing::info!("phase: fault {fault}: SIGKILL of broker {target}, a partition leader");
            cluster.kill(target)?;
        } else {
            tracing::info!(
                "phase: fault {fault}: SIGSTOP of broker {target}, a partition leader, until \
                 its partitions have new leaders; then it wakes up as a zombie"
            );
            cluster.pause(target);
        }
        wait_until("a new leader for every partition", DEADLINE, || {
            partitions(&cluster, observer)
                .filter(|ps| ps.iter().all(|(l, _)| *l > 0 && *l != target))
                .map(|_| ())
        })?;
        tracing::info!(
            "fault {fault}: new leaders after {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        if fault % 2 == 0 {
            cluster.restart(target)?;
        } else {
            cluster.resume(target);
        }
        wait_until("every partition in sync again", DEADLINE, || {
            all_in_sync(&cluster, observer)
        })?;
    }

    tracing::info!("phase: the history checker compares every acknowledgement with the log");
    let Outcome { acks, failed } = workload.stop()?;
    let reads = read_all(cluster.address(1), TOPIC, PARTITIONS)?;
    let report = history::check(&acks, &reads);
    tracing::info!("history after {FAULTS} faults: {report}; {failed} sends failed");
    ensure!(report.is_safe(), "{report}");
    ensure!(
        report.duplicated.is_empty(),
        "an idempotent producer must not duplicate: {report}"
    );
    ensure!(report.acknowledged > 0, "nothing was acknowledged");
    Ok(())
}
