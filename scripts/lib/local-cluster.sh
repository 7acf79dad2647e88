# Sourced by the benchmark scripts: starts three `ferrolog server` nodes (each broker and
# controller) on free loopback ports with their data under "$DATA", stops them and removes
# "$DATA" on exit, and waits for a controller leader.
#
#   start_local_cluster BIN DATA    sets: brokers (comma-separated), client[1..3], leader,
#                                   bounded_bytes (each node's memory bound, 0 if none)
#   median                          the median of numbers on standard input
#   ferrolog_binary                 prints $FERROLOG_BIN, or builds the release binary and
#                                   prints its path
#
# Each node runs in its own memory cgroup (SERVER_MEMORY_LIMIT, default 512M; "none" turns it
# off) when this user may create one, so its page cache stays bounded and recycles the way a
# long-running broker's does. Without it, every MB written needs fresh pages; on this
# project's VM the host backs those lazily and takes freed ones back (virtio-balloon free
# page reporting): `dd bs=1M count=3000` to the disk ran at 272 MB/s unbounded and
# 1.5 GB/s in a 512 MiB cgroup, in the same minute. A benchmark without the bound measures
# the host's memory provisioning, and RF=3, which writes three copies, pays it three times.
# Data on tmpfs cannot be bounded this way (its pages are not reclaimable): the limit
# applies only to data on a disk.
#
# NODE_DISKS="/mnt/n1 /mnt/n2 /mnt/n3" puts each node's data on its own file system (say, a
# loop device each), so that three copies do not share one disk's bandwidth as they do
# under "$DATA". For example, with memory-backed disks (as root):
#   for i in 1 2 3; do
#     dd if=/dev/zero of=/dev/shm/d$i bs=1M count=3072 && dev=$(losetup -f --show /dev/shm/d$i)
#     mkfs.ext4 -q "$dev" && mkdir -p /mnt/n$i && mount "$dev" /mnt/n$i
#   done

pids=()
cgroups=()
node_dirs=()
cleanup_local_cluster() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    local cg
    for cg in "${cgroups[@]}"; do rmdir "$cg" 2>/dev/null || true; done
    rm -rf "$DATA" "${node_dirs[@]}"
}

# Creates a memory cgroup limited to $2 (cgroup v2, else v1's memory controller) and prints
# the file a process joins it through; prints nothing when that is not possible here.
memory_cgroup() {
    local name="$1" limit="$2" dir
    if [[ -w /sys/fs/cgroup/cgroup.subtree_control ]] &&
        grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        dir="/sys/fs/cgroup/$name"
        mkdir -p "$dir" 2>/dev/null && echo "$limit" >"$dir/memory.max" 2>/dev/null || return 0
    elif [[ -w /sys/fs/cgroup/memory ]]; then
        dir="/sys/fs/cgroup/memory/$name"
        mkdir -p "$dir" 2>/dev/null &&
            numfmt --from=iec "$limit" >"$dir/memory.limit_in_bytes" 2>/dev/null || return 0
    else
        return 0
    fi
    echo "$dir/cgroup.procs"
}

ferrolog_binary() {
    if [[ -n "${FERROLOG_BIN:-}" ]]; then echo "$FERROLOG_BIN"; return; fi
    cargo build --release --locked --bin ferrolog >&2
    echo "$PWD/target/release/ferrolog"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_local_cluster() {
    local bin="$1"
    DATA="$2"
    trap cleanup_local_cluster EXIT
    if [[ -n "${NODE_DISKS:-}" ]]; then
        local n=1 d
        for d in $NODE_DISKS; do
            node_dirs+=("$d/ferrolog-$$-n$n")
            mkdir -p "$d/ferrolog-$$-n$n" && ln -s "$d/ferrolog-$$-n$n" "$DATA/n$n"
            n=$((n + 1))
        done
    fi
    declare -ga client ctrl
    local i
    for i in 1 2 3; do client[$i]=$(free_port); ctrl[$i]=$(free_port); done
    local voters="1@127.0.0.1:${ctrl[1]},2@127.0.0.1:${ctrl[2]},3@127.0.0.1:${ctrl[3]}"
    local limit="${SERVER_MEMORY_LIMIT:-512M}" procs
    [[ "$(stat -f -c %T "$DATA")" == tmpfs ]] && limit=none
    bounded_bytes=0
    for i in 1 2 3; do
        procs=""
        if [[ "$limit" != none ]]; then
            procs=$(memory_cgroup "ferrolog-bench-$$-n$i" "$limit")
            if [[ -n "$procs" ]]; then
                cgroups+=("$(dirname "$procs")")
                bounded_bytes=$(numfmt --from=iec "$limit")
            else echo "no memory cgroup for node $i: its page cache is unbounded" >&2; fi
        fi
        # The subshell joins the cgroup, then becomes the server.
        ( [[ -z "$procs" ]] || echo "$BASHPID" >"$procs"
        RUST_LOG=warn exec "$bin" server --node-id "$i" --data-dir "$DATA/n$i" \
            --listen "127.0.0.1:${client[$i]}" --http-listen 127.0.0.1:0 \
            --controller-listen "127.0.0.1:${ctrl[$i]}" --controller-voters "$voters" \
            >/dev/null 2>"$DATA/n$i.err" ) &
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
