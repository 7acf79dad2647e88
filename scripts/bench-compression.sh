#!/usr/bin/env bash
# Measures what batch compression buys on one node: `ferrolog bench produce` of text-like
# 1 KiB records (`--payload text`: JSON-like events, every record different) with each codec,
# reporting records/s and the bytes the partition takes on disk, both as ratios to no
# compression measured in the same run, interleaved run by run, medians of RUNS.
# docs/performance.md ("Compression") quotes its output. Targets (issue 20): zstd's bytes
# on disk at most a third of none's, and records/s not lower than none's.
#
#   scripts/bench-compression.sh                 # RUNS=3, release build
#   RECORDS=500000 CODECS="none lz4 zstd" scripts/bench-compression.sh
#   FERROLOG_BIN=/tmp/ferrolog-old scripts/bench-compression.sh
#   PIN=1 scripts/bench-compression.sh          # server on CPU 0, client on CPU 1
#
# Client and server share this machine's cores: compressing costs the client CPU that the
# server then does not get. PIN=1 gives each its own core, the nearest this machine comes to
# a producer on another host, which is how compression is deployed.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
RECORDS="${RECORDS:-300000}"
RECORD_SIZE="${RECORD_SIZE:-1024}"
CODECS="${CODECS:-none gzip snappy lz4 zstd}"
DATA="${DATA:-$(mktemp -d "${TMPDIR:-/tmp}/ferrolog-bench-compression.XXXXXX")}"

# shellcheck source=lib/local-cluster.sh
source scripts/lib/local-cluster.sh # median, ferrolog_binary
BIN=$(ferrolog_binary)

server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$DATA"
}
trap cleanup EXIT

server_cpu=()
client_cpu=()
if [[ "${PIN:-0}" == 1 ]]; then
    server_cpu=(taskset -c 0)
    client_cpu=(taskset -c 1)
fi

mkdir -p "$DATA/server"
coproc SERVER { RUST_LOG=warn exec "${server_cpu[@]}" "$BIN" server --data-dir "$DATA/server" \
    --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --controller-listen 127.0.0.1:0; }
server_pid=$SERVER_PID
read -r -t 30 line <&"${SERVER[0]}"
export FERROLOG_BROKERS
FERROLOG_BROKERS=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' <<<"$line")

declare -A rps bytes
for run in $(seq 1 "$RUNS"); do
    for codec in $CODECS; do
        topic="text-$codec-$run"
        echo "run $run/$RUNS: $codec" >&2
        out=$("${client_cpu[@]}" "$BIN" bench produce --topic "$topic" --records "$RECORDS" \
            --record-size "$RECORD_SIZE" --payload text --compression "$codec")
        rps[$codec]+="$(awk '/^throughput:/ {print $2}' <<<"$out")"$'\n'
        # The segment files of the one partition: what the log stores, indexes excluded.
        bytes[$codec]+="$(cat "$DATA/server/$topic-0/"*.log | wc -c)"$'\n'
    done
done

m() { printf '%s' "$1" | sed '/^$/d' | median; }
base_rps=$(m "${rps[none]}")
base_bytes=$(m "${bytes[none]}")
echo
echo "| codec (median of $RUNS, $RECORDS records of $RECORD_SIZE B text) | records/s | vs none | bytes on disk | vs none |"
echo "|---|---|---|---|---|"
for codec in $CODECS; do
    r=$(m "${rps[$codec]}")
    b=$(m "${bytes[$codec]}")
    awk -v c="$codec" -v r="$r" -v b="$b" -v r0="$base_rps" -v b0="$base_bytes" \
        'BEGIN { printf "| %s | %d | %.2f | %d | %.3f |\n", c, r, r / r0, b, b / b0 }'
done
