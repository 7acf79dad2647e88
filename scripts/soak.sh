#!/usr/bin/env bash
# The soak: three nodes at about half of their measured throughput for MINUTES, a fault every
# SOAK_FAULT_EVERY_SECS (default 120), every node's RSS, open fds and threads sampled every
# 10 s, and the acks=all history checked after every fault and at the end
# (tests/tests/soak.rs says how). Not part of CI; docs/testing.md has the last hour's figures.
#
#   scripts/soak.sh MINUTES          e.g. scripts/soak.sh 60
#
# Soaks a release build of `ferrolog` (FERROLOG_BIN when set, e.g. the static binary
# scripts/build-image.sh builds for the image). Output in target/soak: samples.csv, faults.csv,
# summary.txt, load.log and soak.png (RSS and fds over time; gnuplot is installed from
# Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

GNUPLOT_VERSION=5.4.4+dfsg1-2+b2

[ $# -eq 1 ] && [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] || {
    echo "usage: $0 MINUTES" >&2
    exit 2
}
minutes=$1
out="$PWD/target/soak"
rm -rf "$out"
mkdir -p "$out/tmp"

if [ -z "${FERROLOG_BIN:-}" ]; then
    cargo build --release --locked --bin ferrolog
    FERROLOG_BIN="$PWD/target/release/ferrolog"
fi
export FERROLOG_BIN
echo "soaking $FERROLOG_BIN for $minutes min; output in $out"

# The cluster's data directories live under target/, not in a small /tmp.
TMPDIR="$out/tmp" SOAK_MINUTES="$minutes" SOAK_OUT="$out" \
    cargo test --locked -p ferrolog-tests --test soak -- --ignored --nocapture

if ! command -v gnuplot >/dev/null; then
    apt-get update -qq && apt-get install -y -qq "gnuplot-nox=$GNUPLOT_VERSION" >/dev/null
fi
# One file per node: gnuplot draws a line through consecutive rows only.
for n in 1 2 3; do
    awk -F, -v n="$n" 'NR > 1 && $2 == n' "$out/samples.csv" >"$out/node-$n.csv"
done
# A vertical gray line at every fault.
fault_lines=$(awk -F, 'NR > 1 { printf "set arrow from %f, graph 0 to %f, graph 1 nohead lc \"gray\"\n", $1 / 60, $1 / 60 }' "$out/faults.csv")
gnuplot <<EOF
set terminal pngcairo size 1200,900 font ",10"
set output "$out/soak.png"
set datafile separator ","
set key outside right
set xlabel "minutes (gray lines: faults)"
set multiplot layout 3,1 title "Ferrolog soak: $minutes min, 3 nodes at half their measured throughput"
set yrange [0:*]
$fault_lines
set ylabel "RSS (MiB)"
plot for [n=1:3] "$out/node-".n.".csv" using (\$1/60):(\$4/1024) with lines lw 2 title "node ".n
set ylabel "open fds (dashed: sockets)"
plot for [n=1:3] "$out/node-".n.".csv" using (\$1/60):5 with lines lw 2 lc n title "node ".n, \
     for [n=1:3] "$out/node-".n.".csv" using (\$1/60):6 with lines dt 2 lc n notitle
set ylabel "threads"
plot for [n=1:3] "$out/node-".n.".csv" using (\$1/60):7 with lines lw 2 title "node ".n
unset multiplot
EOF
echo "plot: $out/soak.png"
cat "$out/summary.txt"
