#!/usr/bin/env bash
# Removes the Docker Compose cluster that scripts/cluster-up.sh started: containers, network
# and volumes (all data). Paused containers are resumed first so that they can be stopped.
#   COMPOSE_PROJECT_NAME  [ferrolog]
#   STOP_TIMEOUT_S        [30]   how long each node gets for its controlled shutdown
set -euo pipefail
cd "$(dirname "$0")/.."
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-ferrolog}"
for id in $(scripts/compose.sh ps -q 2>/dev/null || true); do
    if [ "$(docker inspect -f '{{.State.Paused}}' "$id" 2>/dev/null)" = true ]; then
        docker unpause "$id" >/dev/null || true
    fi
done
scripts/compose.sh down -v --remove-orphans --timeout "${STOP_TIMEOUT_S:-30}"
