#!/usr/bin/env bash
# Builds the container image: a statically linked release `ferrolog` (its own target
# directory, target/static, so it never disturbs the debug build), then `docker build` of
# deploy/docker/Dockerfile around it. Prints the image's size and the build times.
#   FERROLOG_IMAGE  tag to build [ferrolog:dev]
# Both steps are incremental: with nothing changed this takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${FERROLOG_IMAGE:-ferrolog:dev}"
target=x86_64-unknown-linux-gnu
binary="target/static/$target/release/ferrolog"
context=target/image-context

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "error: the Rust target $target is not installed (rustup target add $target)" >&2
    exit 1
fi

started=$(date +%s)
# crt-static on the gnu target links glibc statically: the image has no libc to load. Build
# scripts and proc macros are built for the host without these flags (--target is given).
# `nice` keeps a machine that also runs tests or another build responsive.
nice -n 19 env RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/static \
    cargo build --release --locked --target "$target" --bin ferrolog
built=$(date +%s)
if ldd "$binary" 2>&1 | grep -q '=>'; then
    echo "error: $binary is dynamically linked; the FROM scratch image cannot run it" >&2
    ldd "$binary" >&2
    exit 1
fi

rm -rf "$context"
mkdir -p "$context/data"
cp "$binary" "$context/ferrolog"
# The release profile keeps line tables for backtraces on the host; the image does without.
if command -v strip >/dev/null 2>&1; then
    strip "$context/ferrolog"
fi

# The legacy builder: BuildKit (buildx) is not installed everywhere, and a FROM scratch image
# needs nothing it adds.
DOCKER_BUILDKIT=0 docker build --quiet -f deploy/docker/Dockerfile -t "$image" "$context" >/dev/null
finished=$(date +%s)
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "built $image: $((size / 1024 / 1024)) MiB ($size bytes); static build $((built - started)) s, image $((finished - built)) s"
