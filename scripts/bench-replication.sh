#!/usr/bin/env bash
# Measures produce throughput and latency against three local nodes (release build): a
# replication-factor-3 topic with acks=all beside a replication-factor-1 topic in the same
# run, 1 KiB records, medians of RUNS alternating runs. All three nodes share this
# machine's one disk and two cores, so RF=3 pays for three fsynced copies on one disk;
# on separate machines each copy has its own. The last column is the CPU time the three
# servers spent per MB produced (RF=3 does the work of three brokers, so about three
# times RF=1 is the floor). With one request in flight, it ends with what the disk alone
# allows: `ferrolog bench fsync` on the same disk, and the ratio that leaves room for.
# docs/performance.md ("Replication") quotes it.
#
#   scripts/bench-replication.sh        # RECORDS=200000 per run, RUNS=3
#   MAX_IN_FLIGHT=5 scripts/bench-replication.sh   # requests in flight per partition
#   FERROLOG_BIN=/tmp/ferrolog-old scripts/bench-replication.sh   # another build (A/B)
#   PARTITIONS=3 scripts/bench-replication.sh      # partitions per topic (leaders spread)
#   NODE_DISKS="/mnt/n1 /mnt/n2 /mnt/n3" scripts/bench-replication.sh   # a disk per node
#                                                  # (see scripts/lib/local-cluster.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS="${RECORDS:-200000}"
RUNS="${RUNS:-3}"
MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-1}"
PARTITIONS="${PARTITIONS:-1}"
DATA="$(mktemp -d "${TMPDIR:-/tmp}/ferrolog-replication-bench.XXXXXX")"
# shellcheck source=lib/local-cluster.sh
source scripts/lib/local-cluster.sh
BIN="$(ferrolog_binary)"
start_local_cluster "$BIN" "$DATA"
sleep 2 # brokers register right after the controller is elected
if [[ "$bounded_bytes" -gt 0 ]]; then
    # Fills each node's bounded page cache first (RF=3 writes on all three), so every
    # measured run sees the steady state in which pages recycle.
    warmup=$((bounded_bytes * 5 / 4 / 1024))
    echo "warm-up: $warmup records of 1 KiB to fill each node's ${bounded_bytes}-byte bound" >&2
    "$BIN" bench produce --topic warmup --replication-factor 3 --acks all --records "$warmup" \
        --record-size 1024 --brokers "$brokers" >/dev/null 2>&1
fi

# CPU time (user + system, in clock ticks) of the three server processes so far: what a
# run costs the brokers, whatever else the machine is doing meanwhile.
server_ticks() { local p t=0; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
TICKS_PER_S=$(getconf CLK_TCK)

run() {  # $1 = replication factor, $2 = run; prints "records/s MB/s p50 p99 server-CPU-ms-per-MB"
    local before after
    before=$(server_ticks)
    "$BIN" bench produce --topic "rf$1-run$2" --replication-factor "$1" --acks all \
        --records "$RECORDS" --record-size 1024 --max-in-flight "$MAX_IN_FLIGHT" \
        --partitions "$PARTITIONS" --brokers "$brokers" 2>/dev/null |
        awk '/^throughput:/ {r=$2; m=$4} /^latency:/ {p50=$3; p99=$6} END {print r, m, p50, p99}' |
        { read -r a b c d; after=$(server_ticks)
          awk -v a="$a" -v b="$b" -v c="$c" -v d="$d" -v t=$((after - before)) -v hz="$TICKS_PER_S" \
              -v mb="$(awk -v n="$RECORDS" 'BEGIN { print n * 1024 / 1e6 }')" \
              'BEGIN { printf "%s %s %s %s %.2f\n", a, b, c, d, t * 1000 / hz / mb }'; }
}
declare -A rec mb p50 p99 cpu
for r in $(seq 1 "$RUNS"); do
    for rf in 1 3; do
        read -r a b c d e < <(run "$rf" "$r")
        echo "run $r RF=$rf: $a records/s, $b MB/s, p50 $c ms, p99 $d ms, servers' CPU $e ms/MB" >&2
        rec[$rf]+="$a"$'\n'; mb[$rf]+="$b"$'\n'; p50[$rf]+="$c"$'\n'; p99[$rf]+="$d"$'\n'
        cpu[$rf]+="$e"$'\n'
    done
done
m() { printf '%s' "$1" | sed '/^$/d' | median; }
r1=$(m "${rec[1]}"); r3=$(m "${rec[3]}")
echo
echo "| 1 KiB records, acks=all, $MAX_IN_FLIGHT in flight, 3 local nodes (median of $RUNS) | records/s | MB/s | p50 ms | p99 ms | servers' CPU ms/MB |"
echo "|---|---|---|---|---|---|"
echo "| replication factor 1 | $r1 | $(m "${mb[1]}") | $(m "${p50[1]}") | $(m "${p99[1]}") | $(m "${cpu[1]}") |"
echo "| replication factor 3 | $r3 | $(m "${mb[3]}") | $(m "${p50[3]}") | $(m "${p99[3]}") | $(m "${cpu[3]}") |"
awk -v a="$r3" -v b="$r1" 'BEGIN { printf "\nRF=3 / RF=1 throughput: %.2f\n", a / b }'

# What the disk alone allows (one request in flight to one partition, the three nodes on one
# disk): an RF=1 request waits for one fsync; an RF=3 request waits for its followers'
# fsyncs, which run while the other replicas' do. Giving RF=3 the fsync of two or three writers at once, and
# adding nothing else (no transfer to the followers, no follower write), bounds its speed.
if [[ "$MAX_IN_FLIGHT" == 1 && "$PARTITIONS" == 1 && -z "${NODE_DISKS:-}" ]]; then
    disk=$("$BIN" bench fsync --dir "$DATA" --writers 1,2,3 --writes 300)
    fsync_p50() { awk -v w="$1" '$1 == "writers:" && $2 == w { print $5 }' <<<"$disk"; }
    f1=$(fsync_p50 1); f2=$(fsync_p50 2); f3=$(fsync_p50 3)
    [[ -n "$f1" && -n "$f2" && -n "$f3" ]] || { echo "ferrolog bench fsync printed no figures: $disk" >&2; exit 1; }
    echo
    echo "The disk alone (ferrolog bench fsync, 1 MiB appends, p50): fdatasync $f1 ms with one writer, $f2 ms with two at once, $f3 ms with three."
    awk -v mb="$(m "${mb[1]}")" -v f1="$f1" -v f2="$f2" -v f3="$f3" 'BEGIN {
        t1 = 1.048576 / mb * 1000
        printf "An RF=1 request of 1 MiB takes %.2f ms. With the fsync of two or three writers in place of one and nothing else added, RF=3 would take %.2f-%.2f ms: at most %.2f-%.2f of RF=1 on this disk.\n",
            t1, t1 - f1 + f2, t1 - f1 + f3, t1 / (t1 - f1 + f3), t1 / (t1 - f1 + f2)
    }'
fi
