#!/usr/bin/env bash
# Starts the three-node Docker Compose cluster (deploy/docker/docker-compose.yml) and waits,
# for at most HEALTHY_DEADLINE_S seconds, until every node is healthy (its container health
# check passes) and ready (GET /ready on its HTTP port: a controller leader answers, the node
# has applied the committed metadata, its broker is registered and in sync).
#   COMPOSE_PROJECT_NAME    [ferrolog]
#   FERROLOG_SUBNET_PREFIX  [172.29.71]   nodes are PREFIX.11, .12, .13
#   FERROLOG_IMAGE          [ferrolog:dev]
#   SKIP_IMAGE_BUILD=1      use the image as it is (scripts/build-image.sh builds it)
#   HEALTHY_DEADLINE_S      [120]
# scripts/cluster-down.sh removes containers, network and volumes.
set -euo pipefail
cd "$(dirname "$0")/.."
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-ferrolog}"
export FERROLOG_SUBNET_PREFIX="${FERROLOG_SUBNET_PREFIX:-172.29.71}"
export FERROLOG_IMAGE="${FERROLOG_IMAGE:-ferrolog:dev}"
deadline_s="${HEALTHY_DEADLINE_S:-120}"
nodes=(ferrolog-1 ferrolog-2 ferrolog-3)

if [ "${SKIP_IMAGE_BUILD:-0}" != 1 ]; then
    scripts/build-image.sh
fi

started=$(date +%s)
scripts/compose.sh up -d

# Prints why a node is not yet healthy and ready, or nothing when it is.
not_ready() {
    local node=$1 index=$2 id health body
    id=$(scripts/compose.sh ps -q "$node" 2>/dev/null || true)
    if [ -z "$id" ]; then
        echo "$node: no container"
        return
    fi
    health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo unknown)
    if [ "$health" != healthy ]; then
        echo "$node: $health"
        return
    fi
    if command -v curl >/dev/null 2>&1; then
        if ! body=$(curl -sS --max-time 5 --fail "http://$FERROLOG_SUBNET_PREFIX.1$index:9280/ready" 2>&1); then
            echo "$node: $body"
        fi
    fi
}

while :; do
    pending=()
    for i in 1 2 3; do
        reason=$(not_ready "${nodes[$((i - 1))]}" "$i")
        [ -z "$reason" ] || pending+=("$reason")
    done
    [ ${#pending[@]} -eq 0 ] && break
    if [ $(($(date +%s) - started)) -ge "$deadline_s" ]; then
        echo "error: the cluster was not healthy within $deadline_s s:" >&2
        printf '  %s\n' "${pending[@]}" >&2
        scripts/compose.sh ps >&2 || true
        scripts/compose.sh logs --tail 30 >&2 || true
        exit 1
    fi
    sleep 1
done

brokers="$FERROLOG_SUBNET_PREFIX.11:9290,$FERROLOG_SUBNET_PREFIX.12:9290,$FERROLOG_SUBNET_PREFIX.13:9290"
echo "cluster $COMPOSE_PROJECT_NAME healthy after $(($(date +%s) - started)) s; brokers: $brokers"
echo "  export FERROLOG_BROKERS=$brokers"
