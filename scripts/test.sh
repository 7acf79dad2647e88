#!/usr/bin/env bash
# Runs Ferrolog's whole test suite: format and lint checks, unit tests, and the
# whole-cluster tests that start real `ferrolog server` processes. README.md names this
# script; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the ferrolog binary the cluster tests start"
cargo build --locked --bin ferrolog
export FERROLOG_BIN="$PWD/target/debug/ferrolog"

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast -E 'not binary(simulation)'
else
    cargo test --workspace --locked --no-fail-fast -- --skip quorum_invariants_hold
fi

# The seeded quorum simulation (200 seeds, about 2.5 minutes) runs on its own under
# libtest: under nextest it has twice stalled past 10 minutes for a reason not yet found
# (see the closing note of issue 3), while every run under `cargo test` finished.
step "quorum simulation (200 seeds)"
cargo test --locked -p ferrolog-metadata --test simulation --no-run
# A violated invariant fails the run. A stall (the unexplained one above, which leaves
# the process idle) is bounded and reported loudly, but does not hide the rest of the
# suite's result; it is tracked as an open item of issue 3.
status=0
timeout -k 10 480 cargo test --locked -p ferrolog-metadata --test simulation || status=$?
if [ "$status" -eq 124 ]; then
    echo "WARNING: the quorum simulation stalled past 480 s (known open issue, see issue 3)" >&2
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi
