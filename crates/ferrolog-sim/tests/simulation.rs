//! The data-path simulation under the test runner: many seeds, and one seed twice.
//! `SIM_SEEDS` sets how many seeds run (see `DEFAULT_SEEDS`); `SIM_SEED=N` runs one.

use ferrolog_sim::{Settings, run_seed, run_seeds, seeds_from_env};

/// Seeds a plain `cargo nextest run` checks.
const DEFAULT_SEEDS: u64 = 1000;

#[test]
fn replication_invariants_hold_under_crashes_partitions_and_lossy_networks() {
    let seeds = seeds_from_env(DEFAULT_SEEDS);
    let totals = run_seeds(&seeds, &Settings::default(), 2);
    eprintln!("{}", totals.summary());
    let failures: Vec<String> = totals.failures.iter().map(|f| f.to_string()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The seeds did what they are for: writes were acknowledged and crashes lost data.
    assert!(totals.acked_all > 0, "no acks=all write was acknowledged");
    assert!(
        seeds.len() < 20 || totals.truncations_by_crash > 0,
        "no crash ever lost unsynced data"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let settings = Settings::default();
    for seed in [3, 17, 42] {
        let first = run_seed(seed, &settings).unwrap_or_else(|v| panic!("{v}"));
        let again = run_seed(seed, &settings).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(
            first.trace_hash, again.trace_hash,
            "seed {seed}: two runs of one seed took different paths"
        );
        assert_eq!(first.steps, again.steps, "seed {seed}");
    }
}
