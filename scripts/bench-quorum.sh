#!/usr/bin/env bash
# Measures create-topic latency through a 3-voter metadata quorum on loopback (release
# build): every create is forwarded to the active controller, committed by Raft (each
# voter fsyncs its log), and answered once the receiving node has the topic. README.md's
# "Performance" section quotes its output.
#
#   scripts/bench-quorum.sh             # COUNT=300 topics per run, RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT="${COUNT:-300}"
RUNS="${RUNS:-3}"
DATA="$(mktemp -d "${TMPDIR:-/tmp}/ferrolog-quorum-bench.XXXXXX")"
cargo build --release --locked --bin ferrolog >&2
BIN="$PWD/target/release/ferrolog"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$DATA"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a client ctrl
for i in 1 2 3; do client[$i]=$(free_port); ctrl[$i]=$(free_port); done
voters="1@127.0.0.1:${ctrl[1]},2@127.0.0.1:${ctrl[2]},3@127.0.0.1:${ctrl[3]}"
for i in 1 2 3; do
    RUST_LOG=warn "$BIN" server --node-id "$i" --data-dir "$DATA/n$i" \
        --listen "127.0.0.1:${client[$i]}" --http-listen 127.0.0.1:0 \
        --controller-listen "127.0.0.1:${ctrl[$i]}" --controller-voters "$voters" \
        >/dev/null 2>"$DATA/n$i.err" &
    pids+=("$!")
done
brokers="127.0.0.1:${client[1]},127.0.0.1:${client[2]},127.0.0.1:${client[3]}"
for _ in $(seq 1 100); do
    leader=$("$BIN" cluster status --json --brokers "$brokers" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["controller_leader"])' 2>/dev/null || echo -1)
    [[ "$leader" -ge 1 ]] && break
    sleep 0.2
done
[[ "$leader" -ge 1 ]] || { echo "no controller leader" >&2; exit 1; }
follower=$(( leader % 3 + 1 ))
echo "leader: node $leader; sending through node $follower (forwarded) and node $leader" >&2

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
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
