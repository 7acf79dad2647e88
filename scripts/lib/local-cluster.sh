# Sourced by the benchmark scripts: starts three `ferrolog server` nodes (each broker and
# controller) on free loopback ports with their data under "$DATA", stops them and removes
# "$DATA" on exit, and waits for a controller leader.
#
#   start_local_cluster BIN DATA    sets: brokers (comma-separated), client[1..3], leader
#   median                          the median of numbers on standard input

pids=()
cleanup_local_cluster() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$DATA"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_local_cluster() {
    local bin="$1"
    DATA="$2"
    trap cleanup_local_cluster EXIT
    declare -ga client ctrl
    local i
    for i in 1 2 3; do client[$i]=$(free_port); ctrl[$i]=$(free_port); done
    local voters="1@127.0.0.1:${ctrl[1]},2@127.0.0.1:${ctrl[2]},3@127.0.0.1:${ctrl[3]}"
    for i in 1 2 3; do
        RUST_LOG=warn "$bin" server --node-id "$i" --data-dir "$DATA/n$i" \
            --listen "127.0.0.1:${client[$i]}" --http-listen 127.0.0.1:0 \
            --controller-listen "127.0.0.1:${ctrl[$i]}" --controller-voters "$voters" \
            >/dev/null 2>"$DATA/n$i.err" &
        pids+=("$!")
    done
    brokers="127.0.0.1:${client[1]},127.0.0.1:${client[2]},127.0.0.1:${client[3]}"
    leader=-1
    for _ in $(seq 1 100); do
        leader=$("$bin" cluster status --json --brokers "$brokers" 2>/dev/null |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["controller_leader"])' 2>/dev/null || echo -1)
        [[ "$leader" -ge 1 ]] && break
        sleep 0.2
    done
    [[ "$leader" -ge 1 ]] || { echo "no controller leader" >&2; exit 1; }
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
