#!/usr/bin/env bash
# Runs Docker Compose on the three-node cluster of deploy/docker/docker-compose.yml, with the
# defaults that scripts/cluster-up.sh and scripts/cluster-down.sh use:
#   COMPOSE_PROJECT_NAME    [ferrolog]     several clusters may run under different names,
#   FERROLOG_SUBNET_PREFIX  [172.29.71]    each on its own /24
#   FERROLOG_IMAGE          [ferrolog:dev]
# Takes `docker compose` (v2) when the Docker CLI has it, else `docker-compose` (v1).
#   scripts/compose.sh ps
#   scripts/compose.sh logs -f ferrolog-2
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-ferrolog}"
export FERROLOG_SUBNET_PREFIX="${FERROLOG_SUBNET_PREFIX:-172.29.71}"
export FERROLOG_IMAGE="${FERROLOG_IMAGE:-ferrolog:dev}"
file="$root/deploy/docker/docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
    exec docker compose -f "$file" "$@"
elif command -v docker-compose >/dev/null 2>&1; then
    exec docker-compose -f "$file" "$@"
else
    echo "error: neither \`docker compose\` nor \`docker-compose\` is installed" >&2
    exit 1
fi
