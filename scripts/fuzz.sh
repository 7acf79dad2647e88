#!/usr/bin/env bash
# Runs a fuzz target of fuzz/ (or all of them, one after the other) for SECONDS each, starting
# from the seed corpus in fuzz/corpus/TARGET, and prints the executions and crashes of each.
# Exits non-zero on a crash, printing the crashing input's path.
#
#   scripts/fuzz.sh TARGET SECONDS      e.g. scripts/fuzz.sh record_batch 600
#   scripts/fuzz.sh all SECONDS
#
# cargo-fuzz is installed by this script, pinned, under target/fuzz-tools. Only the stable
# toolchain is assumed: cargo-fuzz passes rustc `-Z` flags (sanitizer, coverage
# instrumentation), which stable accepts with RUSTC_BOOTSTRAP=1, set here and nowhere else.
# FUZZ_SANITIZER=none runs without AddressSanitizer (the default is `address`); extra
# libFuzzer flags can be given in FUZZ_ARGS (e.g. FUZZ_ARGS="-jobs=2 -workers=2").
# FUZZ_PROFILE=dev builds without optimisation (half the build time, a fraction of the
# executions per second): the CI smoke run's choice; the default is release.
#
# The fuzzer's own corpus grows in target/fuzz/corpus/TARGET (seeded from fuzz/corpus, which
# it never writes); crashing inputs land in target/fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TARGETS=(record_batch grpc_records metadata_record metadata_snapshot producer_snapshot txn_index)
# libFuzzer limits: an input that runs this long hangs; one allocation this large from an
# input of a few KiB is unbounded.
INPUT_TIMEOUT_SECS=10
MALLOC_LIMIT_MB=512
RSS_LIMIT_MB=2048

usage() {
    echo "usage: $0 TARGET|all SECONDS (targets: ${TARGETS[*]})" >&2
    exit 2
}

[ $# -eq 2 ] || usage
target_arg=$1
seconds=$2
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
if [ "$target_arg" = all ]; then
    targets=("${TARGETS[@]}")
else
    case " ${TARGETS[*]} " in
        *" $target_arg "*) targets=("$target_arg") ;;
        *) usage ;;
    esac
fi

tools="$PWD/target/fuzz-tools"
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$tools"
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
# --debug-assertions: overflow checks and debug_assert!s on, as in test builds.
fuzz_flags=(--fuzz-dir fuzz --target-dir target/fuzz/build --sanitizer "$sanitizer" --debug-assertions)
case "${FUZZ_PROFILE:-release}" in
    release) ;;
    dev) fuzz_flags+=(--dev) ;;
    *) echo "FUZZ_PROFILE is release or dev" >&2; exit 2 ;;
esac

# Builds every target in one cargo invocation, before any clock starts.
if [ "${#targets[@]}" -eq 1 ]; then
    cargo fuzz build "${fuzz_flags[@]}" "${targets[0]}"
else
    cargo fuzz build "${fuzz_flags[@]}"
fi

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus="target/fuzz/corpus/$target"
    artifacts="target/fuzz/artifacts/$target"
    log="target/fuzz/logs/$target.log"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    cp fuzz/corpus/"$target"/* "$corpus"/
    # Artifacts newer than this marker are this run's.
    marker="$artifacts/.started"
    touch "$marker"

    printf '\n==> fuzzing %s for %s s (sanitizer: %s)\n' "$target" "$seconds" "$sanitizer"
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags.
    cargo fuzz run "${fuzz_flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout="$INPUT_TIMEOUT_SECS" \
        -malloc_limit_mb="$MALLOC_LIMIT_MB" -rss_limit_mb="$RSS_LIMIT_MB" \
        -artifact_prefix="$artifacts/" -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$log" 2>&1 || status=$?

    execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' |
        awk '{ n += $1 } END { print n + 0 }')
    rate=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' |
        awk '{ n += $1 } END { print n + 0 }')
    crashes=$(find "$artifacts" -type f ! -name .started -newer "$marker" | sort)
    crash_count=$(printf '%s' "$crashes" | grep -c . || true)
    line="$target: $execs executions ($rate exec/s), $crash_count crashes"
    summary+=("$line")
    echo "$line"
    if [ "$status" -ne 0 ] || [ "$crash_count" -gt 0 ]; then
        failed+=("$target")
        tail -n 40 "$log" >&2
        grep -h 'Test unit written to' "$log" >&2 || true
        [ -z "$crashes" ] || printf 'crashing input: %s\n' $crashes >&2
        echo "full log: $log; replay with: RUSTC_BOOTSTRAP=1 PATH=$tools/bin:\$PATH" \
            "cargo fuzz run ${fuzz_flags[*]} $target <input>" >&2
    fi
done

printf '\n==> fuzzing summary\n'
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
