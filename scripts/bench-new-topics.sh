#!/usr/bin/env bash
# Measures the first produces to new topics (release build): three local nodes, TOPICS
# fresh replication-factor-3 topics one after another, 100 acks=all produces of 100 bytes
# to each at 1,000 records/s, and prints the slowest produce of each topic. A follower
# that asks the leader for a partition the leader has not opened yet gets an error and
# asks again later; every acks=all produce to the topic waits for that retry.
# docs/performance.md ("First produces to a new topic") quotes its output.
#
#   scripts/bench-new-topics.sh                # TOPICS=16
#   FERROLOG_BIN=/tmp/ferrolog-old scripts/bench-new-topics.sh   # another build (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."

TOPICS="${TOPICS:-16}"
DATA="$(mktemp -d "${TMPDIR:-/tmp}/ferrolog-new-topics-bench.XXXXXX")"
# shellcheck source=lib/local-cluster.sh
source scripts/lib/local-cluster.sh
BIN="$(ferrolog_binary)"
start_local_cluster "$BIN" "$DATA"
sleep 2 # brokers register right after the controller is elected

slowest=()
for i in $(seq 1 "$TOPICS"); do
    max=$("$BIN" bench produce --topic "new-topic-$i-$RANDOM" --replication-factor 3 \
        --acks all --records 100 --record-size 100 --throughput 1000 --brokers "$brokers" \
        2>/dev/null | awk '/^latency:/ { for (f = 1; f < NF; f++) if ($f == "max") print $(f + 1) }')
    slowest+=("$max")
done
echo "slowest acks=all produce per new RF=3 topic (ms): ${slowest[*]}"
printf '%s\n' "${slowest[@]}" | awk '{ if ($1 > m) m = $1; if ($1 > 100) n++ } END {
    printf "worst %.2f ms; %d of %d topics over 100 ms\n", m, n, NR }'
