#!/usr/bin/env bash
# Measures the log cleaner's throughput against `dd` copying the same segment files on the
# same disk, in one run, and prints the ratio (target >= 0.25). docs/performance.md
# ("Compaction") quotes its output.
#
#   scripts/bench-cleaner.sh            # MIB=512 of log, in TMPDIR (or DIR=...)
#
# Both read what was just written, so both read from the page cache, and both fsync what
# they write: dd with conv=fsync, the cleaner before it swaps its output in. The cleaner's
# MB/s counts the log's size before cleaning over the whole cleaning (map the keys, rewrite,
# fsync, swap); dd's counts the bytes copied.
set -euo pipefail
cd "$(dirname "$0")/.."

MIB="${MIB:-512}"
BASE="${DIR:-${TMPDIR:-/tmp}}"
WORK="$(mktemp -d "$BASE/ferrolog-cleaner-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cargo build --release --locked -p ferrolog-log --example clean_bench >&2
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/clean_bench"

"$BIN" prepare "$WORK/log" "$MIB" >&2
bytes=$(cat "$WORK"/log/*.log | wc -c)
start=$(date +%s.%N)
for f in "$WORK"/log/*.log; do
    dd if="$f" of="$WORK/copy-$(basename "$f")" bs=1M conv=fsync status=none
done
end=$(date +%s.%N)
rm -f "$WORK"/copy-*
dd_mbs=$(echo "$bytes $start $end" | awk '{printf "%.1f", $1 / ($3 - $2) / 1e6}')

line=$("$BIN" clean "$WORK/log")
echo "$line"
cleaner_mbs=$(echo "$line" | awk '{print $7}')
echo "dd copied $bytes bytes: $dd_mbs MB/s"
echo "cleaner/dd: $(echo "$cleaner_mbs $dd_mbs" | awk '{printf "%.2f", $1 / $2}') (target >= 0.25)"
