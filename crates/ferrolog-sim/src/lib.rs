//! A seeded, deterministic simulation of Ferrolog's data path: several brokers' real
//! [`Partition`](ferrolog_broker::Partition)s (leader and follower replication, the high
//! watermark, leader epochs, divergence truncation, group commit), a controller that runs
//! the real decision functions (registration, fencing, electing leaders, ISR changes,
//! preferred-leader moves) on its own cluster image, a network of its own that drops,
//! delays, reorders and (one-way) cuts messages, and a disk that on a crash loses what no
//! fsync covered and may tear the last write (see [`disk`]). Producers write with acks=all
//! and acks=1, consumers read below the high watermark, topics are created, brokers crash,
//! restart and pause. A compacted topic takes keyed records and tombstones, and each replica
//! runs the broker's log cleaner one phase at a time, with other steps and crashes between
//! the phases.
//!
//! After every step the invariants in [`invariants`] are checked. A seed decides
//! everything: one [`rng::Rng`] picks every action, and time is tokio's paused clock, moved
//! only by the simulation; no thread runs beside a seed (partitions are opened without
//! their flusher task and the simulation runs their group-commit rounds). Two runs of one
//! seed take the same steps, which [`SeedReport::trace_hash`] shows.
//!
//! Not covered yet: the metadata quorum itself (the controller here is one model that
//! never fails; the quorum simulation in ferrolog-metadata covers one leader per term),
//! topic deletion, reassignments, retention and log-start movement, fsync errors, a crash in
//! the middle of a cleaning's swap (ferrolog-log's own tests stop the swap at every step; the
//! simulation crashes before or after it), controlled
//! shutdown, and the broker's own image-following and fetcher loops (the simulation drives
//! the partitions and the fetch-answer code directly).
//!
//! Bugs it found, fixed in the code it runs:
//! - a broker restarted within its session (same address, so it re-registers at once) led
//!   again at the same leader epoch from the image it had, with a log that lost its unsynced
//!   suffix, which followers had already fetched in that epoch: the same epoch named two
//!   different logs and two replicas committed different records at one offset (seed 4).
//!   Now the controller fences the old process when a new one registers (a new leader
//!   epoch), and a broker takes no leadership from an image without its own registration;
//! - a replica that began a leader epoch without writing in it kept that epoch's cache entry
//!   when it became a follower, so the older-epoch batches it then replicated looked like
//!   that epoch's, and a later divergence check truncated committed records below its high
//!   watermark (seed 282). Now every epoch change of an appended batch is recorded.
//!
//! This crate is a test harness: nothing in the server depends on it.

mod cluster;
pub mod disk;
pub mod invariants;
pub mod rng;

use std::time::Instant;

pub use cluster::{Settings, Violation};

/// What one seed did.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    /// Steps taken, the closing convergence included.
    pub steps: u64,
    /// A hash of every step's trace line: equal for two runs of one seed.
    pub trace_hash: u64,
    pub acked_all: u64,
    pub acked_leader: u64,
    pub crashes: u64,
    pub truncations_by_crash: u64,
    pub leader_changes: u64,
    pub isr_changes: u64,
    pub records_checked: u64,
    /// Cleanings of the compacted topic installed, and abandoned (the log changed between
    /// phases 1 and 3).
    pub cleanings: u64,
    pub cleanings_abandoned: u64,
    /// Crashes that left a cleaning's `.cleaned` files for recovery.
    pub crashes_between_cleaning_phases: u64,
    /// Whole reads of a compacted replica checked against compaction's invariants.
    pub compaction_checks: u64,
    /// Keys a replica showed with an older value where an expired tombstone was (a reader
    /// more than `delete.retention.ms` behind may miss a delete; Kafka's documented limit).
    pub deletes_missed: u64,
}

/// Runs one seed on its own single-threaded runtime with a paused clock.
pub fn run_seed(seed: u64, settings: &Settings) -> Result<SeedReport, Violation> {
    disk::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Violation::setup(seed, format!("cannot build a runtime: {e}")))?;
    runtime.block_on(cluster::run(seed, settings))
}

/// Runs one seed, turning a panic inside it (an `expect` in the code under test, say)
/// into a violation that names the seed.
pub fn run_seed_caught(seed: u64, settings: &Settings) -> Result<SeedReport, Violation> {
    match std::panic::catch_unwind(|| run_seed(seed, settings)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(Violation::setup(seed, format!("panicked: {message}")))
        }
    }
}

/// The seeds to run: `SIM_SEED` alone if set, else `1..=SIM_SEEDS` (or `default_count`).
pub fn seeds_from_env(default_count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return match seed.trim().parse() {
            Ok(seed) => vec![seed],
            Err(_) => panic!("SIM_SEED must be a number, got {seed:?}"),
        };
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default_count);
    (1..=count).collect()
}

/// What running many seeds did.
#[derive(Debug, Default)]
pub struct Totals {
    pub seeds: u64,
    pub steps: u64,
    pub acked_all: u64,
    pub acked_leader: u64,
    pub crashes: u64,
    pub truncations_by_crash: u64,
    pub leader_changes: u64,
    pub isr_changes: u64,
    pub records_checked: u64,
    pub cleanings: u64,
    pub cleanings_abandoned: u64,
    pub crashes_between_cleaning_phases: u64,
    pub compaction_checks: u64,
    pub deletes_missed: u64,
    pub failures: Vec<Violation>,
    pub elapsed_secs: f64,
}

impl Totals {
    fn add(&mut self, report: &SeedReport) {
        self.seeds += 1;
        self.steps += report.steps;
        self.acked_all += report.acked_all;
        self.acked_leader += report.acked_leader;
        self.crashes += report.crashes;
        self.truncations_by_crash += report.truncations_by_crash;
        self.leader_changes += report.leader_changes;
        self.isr_changes += report.isr_changes;
        self.records_checked += report.records_checked;
        self.cleanings += report.cleanings;
        self.cleanings_abandoned += report.cleanings_abandoned;
        self.crashes_between_cleaning_phases += report.crashes_between_cleaning_phases;
        self.compaction_checks += report.compaction_checks;
        self.deletes_missed += report.deletes_missed;
    }

    /// Simulated steps per second of wall-clock time.
    pub fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.elapsed_secs.max(1e-9)
    }

    /// One line of what the seeds covered.
    pub fn summary(&self) -> String {
        format!(
            "{} seeds, {} steps ({:.0} steps/s): {} acks=all and {} acks=1 acknowledged, \
             {} crashes ({} cut unsynced data), {} leader changes, {} ISR changes, {} \
             committed records compared across replicas; compaction: {} cleanings installed, \
             {} abandoned, {} crashes between cleaning phases, {} compacted replicas checked \
             whole, {} deletes missed by a replica behind by more than delete.retention.ms",
            self.seeds,
            self.steps,
            self.steps_per_second(),
            self.acked_all,
            self.acked_leader,
            self.crashes,
            self.truncations_by_crash,
            self.leader_changes,
            self.isr_changes,
            self.records_checked,
            self.cleanings,
            self.cleanings_abandoned,
            self.crashes_between_cleaning_phases,
            self.compaction_checks,
            self.deletes_missed
        )
    }
}

/// Runs `seeds` on `lanes` threads (seeds are independent, each on its own runtime);
/// failures are collected, not fatal, so every failing seed is reported.
pub fn run_seeds(seeds: &[u64], settings: &Settings, lanes: usize) -> Totals {
    let started = Instant::now();
    let lanes = lanes.max(1);
    let results: Vec<Result<SeedReport, Violation>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes)
            .map(|lane| {
                scope.spawn(move || {
                    seeds
                        .iter()
                        .skip(lane)
                        .step_by(lanes)
                        .map(|seed| run_seed_caught(*seed, settings))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut totals = Totals::default();
    for result in results {
        match result {
            Ok(report) => totals.add(&report),
            Err(violation) => totals.failures.push(violation),
        }
    }
    totals.failures.sort_by_key(|v| v.seed);
    totals.elapsed_secs = started.elapsed().as_secs_f64();
    totals
}
