#!/usr/bin/env bash
# Measures single-node throughput and latency with `ferrolog bench`, beside the disk's own
# sequential-write-with-fsync limit (dd ... conv=fdatasync) measured in the same run, and
# prints the medians of RUNS runs. docs/performance.md ("One node") quotes its output.
#
# The server runs in a memory cgroup (SERVER_MEMORY_LIMIT, default 512M; "none" turns it
# off) and a warm-up fills it before the measured runs, so its page cache recycles as on a
# long-running broker; dd runs in a cgroup of the same size. Why: scripts/lib/local-cluster.sh.
# One server serves every run (each run writes new topics): a restart on a fresh data
# directory would free the warmed pages and hand them back to this VM's host.
#
#   scripts/bench.sh            # RUNS=3, release build
#   RUNS=5 DATA=/mnt/fast scripts/bench.sh
#   FERROLOG_BIN=/tmp/ferrolog-old scripts/bench.sh   # another build (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
DATA="${DATA:-$(mktemp -d "${TMPDIR:-/tmp}/ferrolog-bench.XXXXXX")}"
BIN="${FERROLOG_BIN:-}"
if [[ -z "$BIN" ]]; then
    cargo build --release --locked --bin ferrolog >&2
    BIN="$PWD/target/release/ferrolog"
fi

# shellcheck source=lib/local-cluster.sh
source scripts/lib/local-cluster.sh # memory_cgroup, median

server_pid=""
cgroup_procs=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [[ -n "$cgroup_procs" ]] && rmdir "$(dirname "$cgroup_procs")" 2>/dev/null
    rm -rf "$DATA"
}
trap cleanup EXIT

limit="${SERVER_MEMORY_LIMIT:-512M}"
[[ "$(stat -f -c %T "$DATA")" == tmpfs ]] && limit=none # tmpfs pages cannot be reclaimed
bounded_bytes=0
if [[ "$limit" != none ]]; then
    cgroup_procs=$(memory_cgroup "ferrolog-bench-$$" "$limit")
    if [[ -n "$cgroup_procs" ]]; then
        bounded_bytes=$(numfmt --from=iec "$limit")
    else
        echo "no memory cgroup: the server's page cache is unbounded" >&2
    fi
fi
# Runs a command inside the cgroup, if there is one.
bounded() { ( [[ -z "$cgroup_procs" ]] || echo "$BASHPID" >"$cgroup_procs"; exec "$@" ); }

start_server() {
    mkdir -p "$DATA/server"
    coproc SERVER { [[ -z "$cgroup_procs" ]] || echo "$BASHPID" >"$cgroup_procs"
        RUST_LOG=warn exec "$BIN" server --data-dir "$DATA/server" \
        --listen 127.0.0.1:0 --http-listen 127.0.0.1:0; }
    server_pid=$SERVER_PID
    local line
    read -r -t 30 line <&"${SERVER[0]}"
    BROKER=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' <<<"$line")
    export FERROLOG_BROKERS="$BROKER"
}

# One produce benchmark; prints "records/s MB/s p50 p99 p99.9". Extra args go to the bench.
produce_once() {
    local size=$1 records=$2 topic=$3
    shift 3
    "$BIN" bench produce --topic "$topic" --records "$records" --record-size "$size" "$@" |
        awk '/^throughput:/ {rps=$2; mbs=$4} /^latency:/ {p50=$3; p99=$6; p999=$9}
             END {print rps, mbs, p50, p99, p999}'
}

dd_once() {
    bounded dd if=/dev/zero of="$DATA/dd.tmp" bs=1M count=2048 conv=fdatasync 2>&1 |
        awk '/copied/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/ && $(i+1) ~ /B\/s/) {v=$i; u=$(i+1)}}
             END { if (u=="GB/s") v*=1000; if (u=="kB/s") v/=1000; print v }'
    rm -f "$DATA/dd.tmp"
}

declare -A results
# The disk's own limit first: deleting dd's file frees its pages, which must not happen
# between the warm-up and the measured runs.
for run in $(seq 1 "$RUNS"); do results[dd]+="$(dd_once)"$'\n'; done
start_server
if [[ "$bounded_bytes" -gt 0 ]]; then
    warmup=$((bounded_bytes * 5 / 4 / 1024))
    echo "warm-up: $warmup records of 1 KiB to fill the server's ${bounded_bytes}-byte bound" >&2
    "$BIN" bench produce --topic warmup --records "$warmup" --record-size 1024 >/dev/null 2>&1
fi
for run in $(seq 1 "$RUNS"); do
    echo "run $run/$RUNS" >&2
    read -r rps mbs p50 p99 p999 < <(produce_once 100 2000000 "small$run")
    results[small_rps]+="$rps"$'\n'; results[small_mbs]+="$mbs"$'\n'
    results[small_p50]+="$p50"$'\n'; results[small_p99]+="$p99"$'\n'; results[small_p999]+="$p999"$'\n'
    read -r rps mbs p50 p99 p999 < <(produce_once 1024 500000 "large$run")
    results[large_rps]+="$rps"$'\n'; results[large_mbs]+="$mbs"$'\n'
    results[large_p50]+="$p50"$'\n'; results[large_p99]+="$p99"$'\n'; results[large_p999]+="$p999"$'\n'
    read -r rps mbs p50 p99 p999 < <(produce_once 1024 500000 "inflight$run" --max-in-flight 5)
    results[inflight_rps]+="$rps"$'\n'; results[inflight_mbs]+="$mbs"$'\n'
    results[inflight_p50]+="$p50"$'\n'; results[inflight_p99]+="$p99"$'\n'; results[inflight_p999]+="$p999"$'\n'
    read -r rps mbs p50 p99 p999 < <(produce_once 100 500000 "paced$run" --throughput 100000)
    results[paced_rps]+="$rps"$'\n'; results[paced_mbs]+="$mbs"$'\n'
    results[paced_p50]+="$p50"$'\n'; results[paced_p99]+="$p99"$'\n'; results[paced_p999]+="$p999"$'\n'
    consume=$("$BIN" bench consume --topic "small$run" | awk '/^throughput:/ {print $2, $4}')
    results[consume_rps]+="${consume% *}"$'\n'; results[consume_mbs]+="${consume#* }"$'\n'
done

m() { printf '%s' "${results[$1]}" | sed '/^$/d' | median; }
dd_mbs=$(m dd)
echo
echo "| benchmark (median of $RUNS) | records/s | MB/s | p50 ms | p99 ms | p99.9 ms |"
echo "|---|---|---|---|---|---|"
echo "| produce 100 B, acks=all, 1 producer | $(m small_rps) | $(m small_mbs) | $(m small_p50) | $(m small_p99) | $(m small_p999) |"
echo "| produce 1 KiB, acks=all, 1 producer | $(m large_rps) | $(m large_mbs) | $(m large_p50) | $(m large_p99) | $(m large_p999) |"
echo "| produce 1 KiB, acks=all, 1 producer, 5 requests in flight | $(m inflight_rps) | $(m inflight_mbs) | $(m inflight_p50) | $(m inflight_p99) | $(m inflight_p999) |"
echo "| produce 100 B, acks=all, paced at 100k records/s | $(m paced_rps) | $(m paced_mbs) | $(m paced_p50) | $(m paced_p99) | $(m paced_p999) |"
echo "| consume 100 B records | $(m consume_rps) | $(m consume_mbs) | | | |"
echo "| dd bs=1M count=2048 conv=fdatasync | | $dd_mbs | | | |"
awk -v a="$(m large_mbs)" -v b="$(m inflight_mbs)" -v d="$dd_mbs" \
    'BEGIN { printf "\n1 KiB produce / dd = %.2f (1 in flight), %.2f (5 in flight)\n", a / d, b / d }'
