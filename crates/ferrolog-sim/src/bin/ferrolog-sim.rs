//! Runs simulation seeds: `ferrolog-sim [SEEDS]` runs seeds 1..=SEEDS (default 1000), or
//! `SIM_SEED=N` exactly that one. Prints the simulated steps per second, each failing seed
//! with how to replay it, and last `N seeds passed`. Exits non-zero if any seed failed.

use ferrolog_sim::{Settings, run_seeds, seeds_from_env};

/// Seeds run when neither an argument nor `SIM_SEEDS` says.
const DEFAULT_SEEDS: u64 = 1000;

fn main() -> std::process::ExitCode {
    let default_count = match std::env::args().nth(1) {
        Some(arg) => match arg.parse() {
            Ok(count) => count,
            Err(_) => {
                eprintln!("usage: ferrolog-sim [SEEDS]  (SIM_SEED=N replays one seed)");
                return std::process::ExitCode::from(2);
            }
        },
        None => DEFAULT_SEEDS,
    };
    let seeds = seeds_from_env(default_count);
    let lanes = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = Settings::default();
    let totals = run_seeds(&seeds, &settings, lanes);
    for failure in &totals.failures {
        eprintln!("{failure}");
    }
    println!("{}", totals.summary());
    println!(
        "{:.0} simulated steps per second ({} steps in {:.1} s)",
        totals.steps_per_second(),
        totals.steps,
        totals.elapsed_secs
    );
    if totals.failures.is_empty() {
        println!("{} seeds passed", totals.seeds);
        std::process::ExitCode::SUCCESS
    } else {
        let failed: Vec<String> = totals.failures.iter().map(|f| f.seed.to_string()).collect();
        println!(
            "{} seeds passed, {} failed: {}",
            totals.seeds,
            failed.len(),
            failed.join(" ")
        );
        std::process::ExitCode::FAILURE
    }
}
