//! No acknowledged write is lost when a single-node server is SIGKILLed while a producer is
//! running: after each of 20 kills and restarts, the history checker compares every
//! acknowledgement so far with everything read back (nothing lost, misplaced, reordered,
//! and no offset acknowledged for two records), and each partition's offsets are dense.

use std::time::Duration;

use ferrolog_tests::history::{self, Ack};
use ferrolog_tests::workload::{Outcome, Workload, read_to_high_watermark};
use ferrolog_tests::{Server, init_logging};

const TOPIC: &str = "durable";
const PARTITIONS: u32 = 3;
const KILLS: usize = 20;
/// Fewer acknowledgements than this over all rounds would prove little.
const MIN_ACKNOWLEDGED: usize = 1000;

#[test]
fn acknowledged_records_survive_repeated_sigkill() -> anyhow::Result<()> {
    init_logging();
    tracing::info!(
        "phase: a single-node server on fixed ports (a producer reaches it again after each \
         restart) and a topic of {PARTITIONS} partitions"
    );
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_keeping_ports(dir.path())?;
    let created = server.cli(
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            &PARTITIONS.to_string(),
        ],
        None,
    )?;
    ferrolog_tests::assert_ok(&created);

    let mut acks: Vec<Ack> = Vec::new();
    let mut failed_total = 0;
    for round in 0..KILLS {
        tracing::info!(
            round,
            "phase: an acks=all producer runs, then the server is SIGKILLed without warning \
             and restarted; records in flight are retried against the new process"
        );
        // Each round's ids lie above every earlier round's, so the rounds form one history.
        let first_id = round as u64 * Workload::IDS_PER_RUN;
        let workload =
            Workload::start_numbered(server.client_config(), TOPIC, PARTITIONS, first_id);
        let run = Duration::from_millis(150 + (round as u64 * 37) % 400);
        std::thread::sleep(run);
        let acked_before_kill = workload.acknowledged();
        server = server.restart_after_kill()?;
        let Outcome {
            acks: round_acks,
            failed,
        } = workload.stop()?;
        failed_total += failed;
        acks.extend(round_acks);

        tracing::info!(
            round,
            "phase: every record acknowledged so far, in any round, is read back at its offset"
        );
        let reads = read_to_high_watermark(server.client_config(), TOPIC, PARTITIONS)?;
        let report = history::check(&acks, &reads);
        anyhow::ensure!(report.is_safe(), "round {round}: {report}");
        for partition in 0..PARTITIONS {
            let mut offsets: Vec<i64> = reads
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| r.offset)
                .collect();
            offsets.sort_unstable();
            anyhow::ensure!(
                offsets.iter().zip(0..).all(|(offset, i)| *offset == i),
                "round {round}: partition {partition} has a gap or a repeated offset below its \
                 high watermark"
            );
        }
        tracing::info!(
            round,
            acked_before_kill,
            acked_total = acks.len(),
            failed,
            read = reads.len(),
            "round verified: {report}"
        );
    }
    tracing::info!(
        "{} records acknowledged over {KILLS} kills, {failed_total} sends failed",
        acks.len()
    );
    anyhow::ensure!(
        acks.len() > MIN_ACKNOWLEDGED,
        "the workload acknowledged {} records, too few to mean anything",
        acks.len()
    );
    Ok(())
}
