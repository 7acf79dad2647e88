#!/usr/bin/env bash
# CI's fuzzing step: runs every fuzz target of fuzz/ for a few seconds from its seed corpus, so
# that the targets keep building and the seeds keep passing. The long runs whose figures
# docs/testing.md reports use scripts/fuzz.sh directly.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE_SECONDS_PER_TARGET=5

# An unoptimised build: the smoke run checks that the targets build and the seeds pass, which
# needs no speed, and it halves the build.
FUZZ_PROFILE=dev scripts/fuzz.sh all "$SMOKE_SECONDS_PER_TARGET"
