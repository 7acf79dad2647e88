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

step "crate layering: the broker never depends on the controller"
# DESIGN's rule: log <- broker; metadata <- controller; both <- the binary. The broker reaches
# the control plane only through its own ControlPlane trait.
if cargo tree --locked -p ferrolog-broker -e normal --prefix none | grep -q '^ferrolog-controller '; then
    echo "ferrolog-broker depends on ferrolog-controller; route the call through ControlPlane" >&2
    exit 1
fi

step "build the ferrolog binary the cluster tests start"
cargo build --locked --bin ferrolog
export FERROLOG_BIN="$PWD/target/debug/ferrolog"

step "the Python venv of the compression cross-check (kafka-python, pinned)"
# tests/tests/compression.rs would make it on first use (tests/src/python.rs); made here so
# that no test pays for the install inside its time limit.
scripts/python-env.sh

step "validate the Kubernetes manifests (deploy/k8s)"
scripts/validate-k8s.sh

if docker info >/dev/null 2>&1; then
    # tests/tests/docker_cluster.rs runs the compose cluster from this image; built here so
    # the release build does not run beside the timing-sensitive cluster tests.
    step "build the container image (static release binary)"
    scripts/build-image.sh
fi

step "fuzz targets build and pass a short run (scripts/fuzz-smoke.sh)"
scripts/fuzz-smoke.sh

step "tests"
# Includes the seeded quorum simulation (200 seeds, about 30-45 s; see
# crates/ferrolog-metadata/tests/simulation.rs) and the data-path simulation (1,000 seeds,
# about 10 s; crates/ferrolog-sim, scripts/simulate.sh for more seeds).
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
