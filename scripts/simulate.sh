#!/usr/bin/env bash
# Runs the data-path simulation (crates/ferrolog-sim) in release mode.
#
#   scripts/simulate.sh [SEEDS]      runs seeds 1..=SEEDS (default 1000)
#   SIM_SEED=N scripts/simulate.sh   replays seed N exactly
#   SIM_TRACE=1                      prints every step of every seed
#
# Prints each failing seed with its last steps and how to replay it, the simulated steps per
# second, and ends with the line `N seeds passed`; exits non-zero if any seed failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p ferrolog-sim --bin ferrolog-sim
exec target/release/ferrolog-sim "${1:-1000}"
