#!/usr/bin/env bash
# Measures create-topic latency through a 3-voter metadata quorum on loopback (release
# build): every create is forwarded to the active controller, committed by Raft (each
# voter fsyncs its log), and answered once the receiving node has the topic.
# docs/performance.md ("The metadata quorum") quotes its output.
#
#   scripts/bench-quorum.sh             # COUNT=300 topics per run, RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT="${COUNT:-300}"
RUNS="${RUNS:-3}"
DATA="$(mktemp -d "${TMPDIR:-/tmp}/ferrolog-quorum-bench.XXXXXX")"
cargo build --release --locked --bin ferrolog >&2
BIN="$PWD/target/release/ferrolog"

# shellcheck source=lib/local-cluster.sh
source scripts/lib/local-cluster.sh
start_local_cluster "$BIN" "$DATA"
follower=$(( leader % 3 + 1 ))
echo "leader: node $leader; sending through node $follower (forwarded) and node $leader" >&2

run() {  # $1 = node; prints "p50 p99"
    "$BIN" bench create-topics --count "$COUNT" --prefix "n$1" --brokers "127.0.0.1:${client[$1]}" |
        awk '/^latency:/ {print $3, $6}'
}
fw50=""; fw99=""; ld50=""; ld99=""
for r in $(seq 1 "$RUNS"); do
    read -r a b < <(run "$follower"); fw50+="$a"$'\n'; fw99+="$b"$'\n'
    read -r a b < <(run "$leader"); ld50+="$a"$'\n'; ld99+="$b"$'\n'
done
m() { printf '%s' "$1" | sed '/^$/d' | median; }
echo
echo "| create-topic, 3 voters (median of $RUNS runs of $COUNT) | p50 ms | p99 ms |"
echo "|---|---|---|"
echo "| sent to a follower (forwarded to the leader) | $(m "$fw50") | $(m "$fw99") |"
echo "| sent to the leader | $(m "$ld50") | $(m "$ld99") |"
