//! A seeded, deterministic simulation of the metadata quorum: three real Raft nodes
//! (openraft with our sled log store and state machine) over an in-memory network that the
//! seed partitions, while nodes crash and restart and proposals keep coming. After every
//! step it checks:
//!
//! - at most one leader per term, ever;
//! - committed entries never change: every entry any node applies at an index is the entry
//!   every node ever applied at that index (same log id, same payload);
//! - every node's image equals the replay, from an empty image, of the committed log up to
//!   that node's applied index;
//! - the image's next producer id never decreases along the log, and every node has the same
//!   one at the same applied index (producer id blocks never overlap);
//! - at the end, after healing, every node holds the same image, and every acknowledged
//!   proposal is in it (or, for a delete, gone from it; for a producer id block, below the
//!   next producer id).
//!
//! A crash loses what was not flushed, as on a real disk. sled cannot run on a simulated
//! disk (ferrolog-sim's, which cuts segment files back to their last fsync), so each
//! node's disk is its real sled directory plus a copy of it taken at every flush the
//! stores complete: the stores report each one through their `FlushObserver` right after
//! sled does and before openraft is told, from the one path every store flush takes, so a
//! store that skipped a flush would be caught, not covered. A crash stops the node, waits
//! until nothing of it can write its files any more (see [`Sim::crash`]), and writes the
//! copy back: every write after the last flush is gone, including what sled's own Drop
//! flushes on the way out. Sometimes, when all of that lies in sled's log within one
//! segment, a seeded prefix of it stays, possibly with a zeroed (torn) end, as if the page
//! cache had written part of it back; sled's recovery must cope. What openraft was told is
//! durable (a saved vote, appended entries once the append callback ran, a truncation, a
//! purge, an installed or built snapshot) survives every crash; the invariants above then
//! test real durability: a log store that called the append callback without flushing
//! failed seed 4 (the old graceful crash kept such writes and could not tell).
//!
//! Each seed runs alone on a single-threaded tokio runtime whose clock is paused (time moves
//! only when every task waits, straight to the next timer), with openraft's election RNG
//! seeded from the seed and sled flushing on the calling thread. Nothing a seed does
//! depends on wall-clock time or thread scheduling, so a seed replays exactly:
//! `a_seed_replays_exactly` runs seeds twice and compares their traces. The one place a
//! seed waits for another thread (sled's I/O threads letting go of a crashed node's
//! database) it waits with the clock standing still. A failure prints the seed; replay it
//! with `SIM_SEED=<seed> cargo test -p ferrolog-metadata --test simulation`. `SIM_SEEDS`
//! sets how many seeds run (default 200); `SIM_TRACE=1` prints every step; the databases
//! go to `SIM_DATA_DIR`, else `/dev/shm`, else the temporary directory.
//!
//! A seed that stops making progress in wall-clock time (its thread blocked, or its tasks
//! never letting the runtime idle, which stops the virtual clock and with it the
//! virtual-time deadline) fails the test after [`SEED_WALL_DEADLINE`], naming the seed and
//! the step it was in; with `SIM_STALL_HOLD=1` the process stays alive a while first, for
//! a debugger to take its threads' stacks.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use ferrolog_metadata::ClusterImage;
use ferrolog_metadata::raft::{
    FlushMode, FlushObserver, MetadataCommand, MetadataStateMachine, NodeId, SledLogStore,
    TypeConfig, seed_election_rng,
};
use ferrolog_metadata::records::{
    CreateTopicRecord, DeleteTopicRecord, MetadataRecord, PartitionAssignment, ProducerIdsRecord,
    Record,
};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Config, Entry, EntryPayload, LogId, Raft, ServerState, Snapshot, SnapshotMeta,
    SnapshotPolicy, StorageError, StoredMembership,
};
use prost::Message;

const NODES: [NodeId; 3] = [1, 2, 3];
const STEPS_PER_SEED: usize = 60;
/// Virtual time a seed may take; far more than steps and convergence need.
const SEED_DEADLINE: Duration = Duration::from_secs(600);
/// How long an RPC over a cut link takes to fail.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
/// Wall-clock time a seed may take before the watchdog fails the test naming it. A seed
/// takes well under a second; this only has to be far beyond that on a loaded machine.
const SEED_WALL_DEADLINE: Duration = Duration::from_secs(120);
/// Virtual time a crashed node's last tasks get to let go of its database: longer than
/// any timer such a task can be waiting on (a cut link's [`CONNECT_TIMEOUT`]).
const RELEASE_GRACE: Duration = Duration::from_millis(200);
/// Wall-clock time sled's I/O threads then get to finish their last work on it.
const RELEASE_WALL_DEADLINE: Duration = Duration::from_secs(10);
const RELEASE_WALL_POLL: Duration = Duration::from_millis(1);
/// sled 0.34's default segment size: its log writes between two flushes fall in one
/// segment unless they roll over to the next.
const SLED_SEGMENT_BYTES: u64 = 512 * 1024;
/// Longest torn (zeroed) end of a kept unflushed write, as in ferrolog-sim's disk.
const MAX_TORN_BYTES: u64 = 16;

/// Every file under `dir`, by path relative to it, with its contents.
type Files = BTreeMap<PathBuf, Vec<u8>>;

fn read_files(dir: &Path) -> std::io::Result<Files> {
    fn walk(root: &Path, dir: &Path, files: &mut Files) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(root, &path, files)?;
            } else {
                let relative = path.strip_prefix(root).map_err(std::io::Error::other)?;
                files.insert(relative.to_path_buf(), std::fs::read(&path)?);
            }
        }
        Ok(())
    }
    let mut files = Files::new();
    if dir.exists() {
        walk(dir, dir, &mut files)?;
    }
    Ok(files)
}

fn write_files(dir: &Path, files: &Files) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for (relative, contents) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, contents)?;
    }
    Ok(())
}

/// One node's disk: its sled directory, and the files as they were at the last flush the
/// stores completed. The stores report each completed flush through [`FlushObserver`]
/// (from their one flush path, so a store that skipped a flush is caught, not covered).
/// sled cannot run on a simulated disk, so the durable state is copied instead: the sim's
/// databases are small, and the copy happens on the seed's one thread, while nothing else
/// writes.
struct Disk {
    dir: PathBuf,
    durable: Mutex<Files>,
    flushes: AtomicU64,
}

impl FlushObserver for Disk {
    fn flushed(&self) {
        let files = read_files(&self.dir)
            .unwrap_or_else(|e| panic!("copy {} at a flush: {e}", self.dir.display()));
        *lock(&self.durable) = files;
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
}

/// True once no process holds sled's lock on the database in `dir` (sled takes an flock
/// on its `db` file at open and keeps it until the last handle of the database is gone).
fn released(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return true;
    };
    // SAFETY: flock on a descriptor this function owns and keeps open; no memory is
    // involved.
    #[allow(unsafe_code)]
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    // Closing `file` drops our lock, if we got it.
    locked == 0
}

/// What a crash kept of the writes after the last flush.
struct Kept {
    /// Bytes of sled's log after its last flush that survived (0: none did).
    unflushed: u64,
    /// Of those, zeroed at the end (a torn write).
    torn: u64,
}

impl Disk {
    /// Puts the files back as they were at the last completed flush: whatever the node
    /// wrote after it, and whatever sled's own Drop flushed when the node's handles went,
    /// is gone. Sometimes, when everything written since lies in sled's log (`db`) within
    /// one segment, a seeded prefix of it is kept, as if the page cache had written part
    /// of it back before the crash, and its end may be torn (zeros). Only a prefix: sled
    /// recovers its log in order up to the first gap or bad checksum, and that is the
    /// state its recovery is built for. A disk may also write back pages out of order;
    /// that is not modelled.
    fn crash(&self, rng: &mut Rng) -> std::io::Result<Kept> {
        let durable = lock(&self.durable).clone();
        let now = read_files(&self.dir)?;
        let mut restored = durable.clone();
        let mut kept = Kept {
            unflushed: 0,
            torn: 0,
        };
        let db = PathBuf::from("db");
        let others_unchanged = now
            .iter()
            .all(|(path, c)| *path == db || durable.get(path) == Some(c))
            && durable
                .keys()
                .all(|path| *path == db || now.contains_key(path));
        if let (true, Some(before), Some(after)) =
            (others_unchanged, durable.get(&db), now.get(&db))
        {
            let len = before.len().max(after.len());
            let byte = |f: &Vec<u8>, i: usize| f.get(i).copied();
            let first = (0..len).find(|&i| byte(before, i) != byte(after, i));
            let last = (0..len).rev().find(|&i| byte(before, i) != byte(after, i));
            if let (Some(first), Some(last)) = (first, last) {
                let one_segment =
                    first as u64 / SLED_SEGMENT_BYTES == last as u64 / SLED_SEGMENT_BYTES;
                // Drawn only when a prefix can be kept; sled's files, and so these draws,
                // are a function of the seed (`a_seed_replays_exactly` checks it).
                if one_segment && after.len() >= before.len() && rng.below(2) == 0 {
                    let end = first + 1 + rng.below((last - first + 1) as u64) as usize;
                    let mut file = before.clone();
                    if file.len() < end {
                        file.resize(end, 0);
                    }
                    file[first..end].copy_from_slice(&after[first..end]);
                    kept.unflushed = (end - first) as u64;
                    if rng.below(2) == 0 {
                        kept.torn = (1 + rng.below(MAX_TORN_BYTES)).min(kept.unflushed);
                        file[end - kept.torn as usize..end].fill(0);
                    }
                    restored.insert(db, file);
                }
            }
        }
        write_files(&self.dir, &restored)?;
        Ok(kept)
    }
}

/// xorshift64*: the seed's whole fault schedule comes from here.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which nodes are up and which are cut off; every RPC consults it.
#[derive(Default)]
struct Network {
    up: BTreeMap<NodeId, Raft<TypeConfig>>,
    isolated: BTreeSet<NodeId>,
}

#[derive(Clone)]
struct SimNetwork {
    from: NodeId,
    net: Arc<Mutex<Network>>,
}

struct SimClient {
    from: NodeId,
    target: NodeId,
    net: Arc<Mutex<Network>>,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> SimClient {
        SimClient {
            from: self.from,
            target,
            net: Arc::clone(&self.net),
        }
    }
}

impl SimClient {
    /// The target, if the link to it is up. A cut link fails like a connect timeout: after
    /// [`CONNECT_TIMEOUT`] of (virtual) time, as a network error. Not as `Unreachable`:
    /// openraft answers that with a backoff whose `select!` picks a branch at random, which
    /// would make runs unrepeatable.
    // openraft fixes the RPC error type; it is large and not ours to box.
    #[allow(clippy::result_large_err)]
    async fn reachable<E: std::error::Error>(
        &self,
    ) -> Result<Raft<TypeConfig>, RPCError<NodeId, BasicNode, E>> {
        let target = {
            let net = lock(&self.net);
            let cut = net.isolated.contains(&self.from) || net.isolated.contains(&self.target);
            net.up.get(&self.target).filter(|_| !cut).cloned()
        };
        match target {
            Some(raft) => Ok(raft),
            None => {
                tokio::time::sleep(CONNECT_TIMEOUT).await;
                Err(RPCError::Network(NetworkError::new(
                    &std::io::Error::other("partitioned or down"),
                )))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for SimClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.reachable().await?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.reachable().await?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.reachable().await?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// What one log entry carried, in a comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Applied {
    Blank,
    Command(Vec<Vec<u8>>),
    Membership(String),
}

/// Every entry any node applied, by index: the committed log as the state machines saw it.
#[derive(Default)]
struct CommittedLog {
    entries: BTreeMap<u64, (LogId<NodeId>, Applied)>,
    /// Entries applied at an index that already held a different one.
    changed: Vec<String>,
}

impl CommittedLog {
    fn record(&mut self, node: NodeId, entry: &Entry<TypeConfig>) {
        let applied = match &entry.payload {
            EntryPayload::Blank => Applied::Blank,
            EntryPayload::Normal(command) => Applied::Command(command.records.clone()),
            EntryPayload::Membership(m) => Applied::Membership(format!("{m:?}")),
        };
        let index = entry.log_id.index;
        match self.entries.get(&index) {
            Some((log_id, seen)) if (*log_id, seen) != (entry.log_id, &applied) => {
                self.changed.push(format!(
                    "node {node} applied {} at index {index}, where {log_id} was applied before",
                    entry.log_id
                ));
            }
            Some(_) => {}
            None => {
                self.entries.insert(index, (entry.log_id, applied));
            }
        }
    }

    /// The image the committed log builds up to `index`, or `None` if some entry up to
    /// there was never applied through a state machine (every node got it in a snapshot).
    fn replay(&self, index: u64) -> Option<ClusterImage> {
        let mut image = ClusterImage::default();
        for i in 1..=index {
            let (_, applied) = self.entries.get(&i)?;
            if let Applied::Command(records) = applied {
                let mut next = image.clone();
                let ok = records.iter().all(|bytes| {
                    MetadataRecord::decode(bytes.as_slice())
                        .ok()
                        .is_some_and(|record| next.apply(i, &record).is_ok())
                });
                // A refused command leaves the image as it was, as the state machine does.
                if ok {
                    image = next;
                }
            }
        }
        Some(image)
    }
}

/// The real state machine, reporting every entry it applies to the committed log.
struct RecordingStateMachine {
    node: NodeId,
    inner: MetadataStateMachine,
    log: Arc<Mutex<CommittedLog>>,
}

type StoreResult<T> = Result<T, StorageError<NodeId>>;

impl RaftStateMachine<TypeConfig> for RecordingStateMachine {
    type SnapshotBuilder = MetadataStateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        self.inner.applied_state().await
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> StoreResult<Vec<ferrolog_metadata::raft::CommandOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        {
            let mut log = lock(&self.log);
            for entry in &entries {
                log.record(self.node, entry);
            }
        }
        self.inner.apply(entries).await
    }

    async fn get_snapshot_builder(&mut self) -> MetadataStateMachine {
        self.inner.get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        self.inner.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        self.inner.get_current_snapshot().await
    }
}

struct Node {
    raft: Raft<TypeConfig>,
    state_machine: MetadataStateMachine,
}

/// What the invariants remember across steps.
#[derive(Default)]
struct History {
    leader_of_term: BTreeMap<u64, NodeId>,
    /// Topics whose creation was acknowledged, and those a delete was ever proposed for
    /// (a delete that timed out may still commit).
    created: BTreeSet<String>,
    delete_proposed: BTreeSet<String>,
    deleted: BTreeSet<String>,
    /// Node images compared against a replay of the committed log, and those that could
    /// not be (an entry below them reached every node only inside a snapshot).
    replayed: u64,
    not_replayable: u64,
    /// Crashes, and those that kept part of what was written after the last flush.
    crashes: u64,
    kept_unflushed: u64,
    /// Crashes after which sled's I/O threads still held the database for a moment.
    waited_for_sled: u64,
    /// Each node image's next producer id by its applied index, as first seen by any node;
    /// it must never decrease along the index. The largest acknowledged block's end.
    next_producer_id_at: BTreeMap<u64, i64>,
    acknowledged_next_producer_id: i64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    dir: tempfile::TempDir,
    net: Arc<Mutex<Network>>,
    log: Arc<Mutex<CommittedLog>>,
    nodes: BTreeMap<NodeId, Node>,
    /// Each node's disk; kept across its crashes.
    disks: BTreeMap<NodeId, Arc<Disk>>,
    history: History,
    next_topic: u64,
    /// One line per step: what happened and what the nodes looked like after it. Equal
    /// traces for equal seeds are what "deterministic" means here.
    trace: Vec<String>,
    /// What the seed is doing now, for the wall-clock watchdog.
    doing: Doing,
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 30,
        election_timeout_min: 100,
        election_timeout_max: 200,
        // Small, so snapshots, purges and snapshot installs happen within a seed.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(8),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid Raft config"))
}

impl Sim {
    async fn new(seed: u64, doing: Doing) -> Self {
        let mut sim = Sim {
            seed,
            rng: Rng::new(seed),
            dir: tempfile::Builder::new()
                .prefix("ferrolog-quorum-sim-")
                .tempdir_in(data_dir())
                .expect("tempdir"),
            net: Arc::default(),
            log: Arc::default(),
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            history: History::default(),
            next_topic: 0,
            trace: Vec::new(),
            doing,
        };
        for id in NODES {
            sim.start(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> = NODES
            .iter()
            .map(|id| {
                (
                    *id,
                    BasicNode {
                        addr: format!("node-{id}"),
                    },
                )
            })
            .collect();
        sim.nodes[&1]
            .raft
            .initialize(members)
            .await
            .expect("initialize");
        sim
    }

    async fn start(&mut self, id: NodeId) {
        let seed = self.seed;
        let path = self.dir.path().join(format!("node-{id}"));
        // Until its first flush, the node's durable state is what it starts from (what the
        // last crash left): whatever sled writes while opening is not durable either.
        let disk = Arc::new(Disk {
            durable: Mutex::new(
                read_files(&path).unwrap_or_else(|e| panic!("seed {seed}: read node {id}: {e}")),
            ),
            dir: path.clone(),
            flushes: AtomicU64::new(0),
        });
        self.disks.insert(id, Arc::clone(&disk));
        // No background flusher thread: every flush happens where the store asks for it,
        // on this thread.
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .unwrap_or_else(|e| panic!("seed {seed}: cannot reopen node {id}: {e}"));
        let log = SledLogStore::open(&db)
            .expect("log store")
            .with_flush_mode(FlushMode::CallingThread)
            .with_flush_observer(Arc::clone(&disk) as Arc<dyn FlushObserver>);
        let state_machine = MetadataStateMachine::open(&db)
            .unwrap_or_else(|e| panic!("seed {seed}: node {id}'s state machine: {e}"))
            .with_flush_mode(FlushMode::CallingThread)
            .with_flush_observer(disk);
        let recording = RecordingStateMachine {
            node: id,
            inner: state_machine.clone(),
            log: Arc::clone(&self.log),
        };
        let network = SimNetwork {
            from: id,
            net: Arc::clone(&self.net),
        };
        let raft = Raft::new(id, raft_config(), network, log, recording)
            .await
            .expect("start Raft");
        lock(&self.net).up.insert(id, raft.clone());
        self.nodes.insert(
            id,
            Node {
                raft,
                state_machine,
            },
        );
    }

    /// Stops the node and takes its disk back to its last completed flush (see
    /// [`Disk::crash`]). Returns what the crash kept beyond that, for the trace.
    async fn crash(&mut self, id: NodeId) -> String {
        let Some(node) = self.nodes.remove(&id) else {
            return String::new();
        };
        lock(&self.net).up.remove(&id);
        // Bounded: a crash must not wait on the node it crashes.
        let _ = tokio::time::timeout(Duration::from_secs(5), node.raft.shutdown()).await;
        drop(node);
        let disk = Arc::clone(&self.disks[&id]);
        // The files are put back only once nothing of the node can write them any more.
        // First its last tasks on this runtime end, within a fixed stretch of virtual
        // time. Then sled's own I/O threads, which may hold the last handle of the
        // database for a moment (a buffer write, a file truncation), finish in wall-clock
        // time, with this thread and so the virtual clock standing still: polling them in
        // virtual time would let the clock run on by however long they took, and a seed
        // would no longer replay.
        tokio::time::sleep(RELEASE_GRACE).await;
        let waiting = Instant::now();
        let mut waited = false;
        while !released(&disk.dir) {
            waited = true;
            assert!(
                waiting.elapsed() < RELEASE_WALL_DEADLINE,
                "seed {}: crashed node {id} still holds its database {RELEASE_GRACE:?} \
                 (virtual) and {RELEASE_WALL_DEADLINE:?} (wall-clock) after it stopped",
                self.seed
            );
            std::thread::sleep(RELEASE_WALL_POLL);
        }
        if waited {
            self.history.waited_for_sled += 1;
        }
        let kept = disk
            .crash(&mut self.rng)
            .unwrap_or_else(|e| panic!("seed {}: crash node {id}: {e}", self.seed));
        self.history.crashes += 1;
        if kept.unflushed > 0 {
            self.history.kept_unflushed += 1;
        }
        format!(
            "after flush {}, kept {} unflushed bytes ({} torn)",
            disk.flushes.load(Ordering::Relaxed),
            kept.unflushed,
            kept.torn
        )
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes.iter().find_map(|(id, node)| {
            (node.raft.metrics().borrow().state == ServerState::Leader).then_some(*id)
        })
    }

    /// Proposes `records` through the current leader; true if it was acknowledged.
    async fn propose(&mut self, record: Record) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let command = MetadataCommand {
            records: vec![
                MetadataRecord {
                    record: Some(record),
                }
                .encode_to_vec(),
            ],
        };
        let raft = self.nodes[&leader].raft.clone();
        matches!(
            tokio::time::timeout(Duration::from_millis(300), raft.client_write(command)).await,
            Ok(Ok(response)) if response.data.error.is_none()
        )
    }

    async fn create_topic(&mut self) -> String {
        self.next_topic += 1;
        let name = format!("t{}", self.next_topic);
        let record = Record::CreateTopic(CreateTopicRecord {
            name: name.clone(),
            topic_id: format!("{:032x}", self.next_topic),
            assignments: vec![PartitionAssignment {
                partition: 0,
                replicas: vec![1],
            }],
            configs: Default::default(),
        });
        let acknowledged = self.propose(record).await;
        if acknowledged {
            self.history.created.insert(name.clone());
        }
        format!("create {name}: {}", if acknowledged { "ok" } else { "no" })
    }

    async fn delete_topic(&mut self) -> String {
        if self.next_topic == 0 {
            return "delete: nothing yet".into();
        }
        let n = 1 + self.rng.below(self.next_topic);
        let name = format!("t{n}");
        self.history.delete_proposed.insert(name.clone());
        let record = Record::DeleteTopic(DeleteTopicRecord {
            name: name.clone(),
            topic_id: format!("{n:032x}"),
        });
        let acknowledged = self.propose(record).await;
        if acknowledged {
            self.history.deleted.insert(name.clone());
        }
        format!("delete {name}: {}", if acknowledged { "ok" } else { "no" })
    }

    /// Proposes the next block of producer ids for broker `broker`, decided on the leader's
    /// image as the controller decides it; a block decided on an image that has not applied
    /// an earlier one yet overlaps that one and is refused.
    async fn allocate_producer_ids(&mut self, broker: NodeId) -> String {
        let Some(leader) = self.leader() else {
            return "allocate producer ids: no leader".into();
        };
        let first_producer_id = self.nodes[&leader].state_machine.image().next_producer_id;
        let next_producer_id = first_producer_id + 1000;
        let record = Record::ProducerIds(ProducerIdsRecord {
            broker_id: broker as i32,
            incarnation_id: broker,
            first_producer_id,
            next_producer_id,
        });
        let acknowledged = self.propose(record).await;
        if acknowledged {
            let acked = &mut self.history.acknowledged_next_producer_id;
            *acked = (*acked).max(next_producer_id);
        }
        format!(
            "producer ids up to {next_producer_id} for {broker}: {}",
            if acknowledged { "ok" } else { "no" }
        )
    }

    /// One random fault or action, then time passes.
    async fn step(&mut self) {
        let step = self.trace.len() + 1;
        let target = NODES[self.rng.below(NODES.len() as u64) as usize];
        let choice = self.rng.below(11);
        self.doing
            .set(format!("step {step}, action {choice} on node {target}"));
        let action = match choice {
            0..=3 => self.create_topic().await,
            4 => self.delete_topic().await,
            9 => self.allocate_producer_ids(target).await,
            5 => {
                lock(&self.net).isolated.insert(target);
                format!("isolate {target}")
            }
            6 => {
                lock(&self.net).isolated.clear();
                "heal".into()
            }
            7 if self.nodes.len() == NODES.len() => {
                let kept = self.crash(target).await;
                format!("crash {target} {kept}")
            }
            8 if !self.nodes.contains_key(&target) => {
                self.start(target).await;
                format!("restart {target}")
            }
            _ => "idle".into(),
        };
        self.doing
            .set(format!("step {step}, time passing after: {action}"));
        tokio::time::sleep(Duration::from_millis(10 + self.rng.below(90))).await;
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, node)| {
                let m = node.raft.metrics().borrow().clone();
                format!(
                    "{id}:{:?}/t{}/a{}",
                    m.state,
                    m.current_term,
                    m.last_applied.map_or(0, |l| l.index)
                )
            })
            .collect();
        let line = format!("{action} | {}", nodes.join(" "));
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("seed {}: {line}", self.seed);
        }
        self.trace.push(line);
    }

    fn check(&mut self) {
        let seed = self.seed;
        {
            let log = lock(&self.log);
            assert!(
                log.changed.is_empty(),
                "seed {seed}: a committed entry changed: {}",
                log.changed.join("; ")
            );
        }
        for (id, node) in &self.nodes {
            let metrics = node.raft.metrics().borrow().clone();
            if metrics.state == ServerState::Leader {
                let first = *self
                    .history
                    .leader_of_term
                    .entry(metrics.current_term)
                    .or_insert(*id);
                assert_eq!(
                    first, *id,
                    "seed {seed}: two leaders in term {}: {first} and {id}",
                    metrics.current_term
                );
            }
            let image = node.state_machine.image();
            let (index, next) = (image.applied_index, image.next_producer_id);
            let seen = &mut self.history.next_producer_id_at;
            if let Some((at, earlier)) = seen.range(..index).next_back() {
                assert!(
                    *earlier <= next,
                    "seed {seed}: node {id}'s next producer id is {next} at applied index \
                     {index}, below {earlier} at index {at}"
                );
            }
            if let Some((at, later)) = seen.range(index..).next() {
                assert!(
                    if *at == index {
                        *later == next
                    } else {
                        *later >= next
                    },
                    "seed {seed}: node {id}'s next producer id is {next} at applied index \
                     {index}, but {later} at index {at}"
                );
            }
            seen.insert(index, next);
            match lock(&self.log).replay(image.applied_index) {
                Some(replayed) => {
                    assert_eq!(
                        replayed, *image,
                        "seed {seed}: node {id}'s image at applied index {} is not the replay \
                         of the committed log",
                        image.applied_index
                    );
                    self.history.replayed += 1;
                }
                None => self.history.not_replayable += 1,
            }
        }
    }

    /// Heals everything, waits (bounded) for all nodes to agree, and checks that every
    /// acknowledged proposal took effect.
    async fn converge(&mut self) {
        self.doing.set("healing and restarting every node".into());
        lock(&self.net).isolated.clear();
        for id in NODES {
            if !self.nodes.contains_key(&id) {
                self.start(id).await;
            }
        }
        // One more write through a leader commits everything before it in the new term.
        self.doing
            .set("converging: committing a write in the new term".into());
        let mut committed_in_new_term = false;
        for _ in 0..100 {
            if self.leader().is_some() && self.create_topic().await.ends_with("ok") {
                committed_in_new_term = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            committed_in_new_term,
            "seed {}: no write committed after healing",
            self.seed
        );
        self.doing
            .set("converging: waiting for equal images".into());
        let mut agreed = false;
        for _ in 0..200 {
            let images: Vec<Arc<ClusterImage>> = self
                .nodes
                .values()
                .map(|n| n.state_machine.image())
                .collect();
            if images.windows(2).all(|w| w[0] == w[1]) {
                agreed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.check();
        assert!(
            agreed,
            "seed {}: nodes did not converge on one image after healing",
            self.seed
        );
        let image = self.nodes[&1].state_machine.image();
        for name in self
            .history
            .created
            .difference(&self.history.delete_proposed)
        {
            assert!(
                image.topic(name).is_some(),
                "seed {}: acknowledged topic {name} is missing from the converged image",
                self.seed
            );
        }
        for name in &self.history.deleted {
            assert!(
                image.topic(name).is_none(),
                "seed {}: topic {name}, whose delete was acknowledged, is still there",
                self.seed
            );
        }
        assert!(
            image.next_producer_id >= self.history.acknowledged_next_producer_id,
            "seed {}: an acknowledged producer id block up to {} is missing: the next producer \
             id is {}",
            self.seed,
            self.history.acknowledged_next_producer_id,
            image.next_producer_id
        );
        self.trace.push(format!(
            "converged at applied index {} with {} topics, next producer id {}",
            image.applied_index,
            image.topics.len(),
            image.next_producer_id
        ));
        self.doing.set("stopping every node".into());
        for id in NODES {
            self.crash(id).await;
        }
    }
}

/// What one seed did.
struct SeedRun {
    trace: Vec<String>,
    history: History,
}

/// What a seed is doing now, shared with the wall-clock watchdog so that a stall names
/// the step it stalled in.
#[derive(Clone, Default)]
struct Doing(Arc<Mutex<String>>);

impl Doing {
    fn set(&self, what: String) {
        *lock(&self.0) = what;
    }

    fn get(&self) -> String {
        lock(&self.0).clone()
    }
}

/// Where seeds put their nodes' databases: `SIM_DATA_DIR`, else a tmpfs when there is one
/// (sled's flushes are then cheap, and a seed's wall time does not depend on how busy the
/// machine's disk is), else the temporary directory.
fn data_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    std::env::var_os("SIM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        })
}

/// Runs one seed on its own single-threaded runtime with a paused clock.
fn run_seed(seed: u64, doing: &Doing) -> SeedRun {
    seed_election_rng(seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let run = async {
            doing.set("starting the nodes".into());
            let mut sim = Sim::new(seed, doing.clone()).await;
            for _ in 0..STEPS_PER_SEED {
                sim.step().await;
                sim.check();
            }
            sim.converge().await;
            SeedRun {
                trace: sim.trace,
                history: sim.history,
            }
        };
        match tokio::time::timeout(SEED_DEADLINE, run).await {
            Ok(done) => done,
            Err(_) => panic!(
                "seed {seed}: no progress within {SEED_DEADLINE:?} of virtual time; replay \
                 with SIM_SEED={seed}"
            ),
        }
    })
}

/// How often the watchdog looks at the lanes.
const WATCHDOG_POLL: Duration = Duration::from_millis(500);
/// With `SIM_STALL_HOLD` set, how long the watchdog keeps a stalled process alive before
/// failing, so that its threads' stacks can be taken (`gdb -p <pid> -batch -ex 'thread
/// apply all bt'`): a stall's cause is in those stacks, not in the trace.
const STALL_HOLD: Duration = Duration::from_secs(600);

/// Runs `seeds` on `lanes` threads (seeds are independent, each on its own runtime) and
/// returns their runs in completion order. The calling thread is the watchdog: a seed
/// that runs past [`SEED_WALL_DEADLINE`] of wall-clock time fails the test with its seed
/// and the step it was in. The virtual-time [`SEED_DEADLINE`] cannot catch that: a seed
/// whose thread blocks, or whose tasks never let the runtime idle, stops virtual time too.
fn run_seeds(seeds: &[u64], lanes: usize) -> Vec<(u64, SeedRun)> {
    type Outcome = (u64, std::thread::Result<SeedRun>);
    let (done, results) = mpsc::channel::<Outcome>();
    let mut watched = Vec::new();
    for lane in 0..lanes {
        let current: Arc<Mutex<Option<(u64, Instant)>>> = Arc::default();
        let doing = Doing::default();
        watched.push((Arc::clone(&current), doing.clone()));
        let lane_seeds: Vec<u64> = seeds.iter().copied().skip(lane).step_by(lanes).collect();
        let done = done.clone();
        // Not scoped: a stalled lane must not keep the watchdog from failing the test.
        std::thread::Builder::new()
            .name(format!("quorum-sim-lane-{lane}"))
            .spawn(move || {
                for seed in lane_seeds {
                    *lock(&current) = Some((seed, Instant::now()));
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_seed(seed, &doing)
                    }));
                    let failed = run.is_err();
                    *lock(&current) = None;
                    if done.send((seed, run)).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawn a simulation lane");
    }
    drop(done);
    let mut runs = Vec::new();
    while runs.len() < seeds.len() {
        match results.recv_timeout(WATCHDOG_POLL) {
            Ok((seed, Ok(run))) => runs.push((seed, run)),
            Ok((_, Err(panic))) => std::panic::resume_unwind(panic),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                for (lane, (current, doing)) in watched.iter().enumerate() {
                    let Some((seed, since)) = *lock(current) else {
                        continue;
                    };
                    if since.elapsed() < SEED_WALL_DEADLINE {
                        continue;
                    }
                    let stalled = format!(
                        "seed {seed}: still running after {SEED_WALL_DEADLINE:?} of wall-clock \
                         time, at: {}; its thread is quorum-sim-lane-{lane} of process {}; \
                         replay with SIM_SEED={seed}",
                        doing.get(),
                        std::process::id()
                    );
                    if std::env::var_os("SIM_STALL_HOLD").is_some() {
                        eprintln!("{stalled}; holding for {STALL_HOLD:?}");
                        std::thread::sleep(STALL_HOLD);
                    }
                    panic!("{stalled}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a simulation lane ended without reporting its seeds")
            }
        }
    }
    runs
}

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (1..=count).collect()
        }
    }
}

#[test]
fn quorum_invariants_hold_under_partitions_crashes_and_restarts() {
    let seeds = seeds();
    let started = Instant::now();
    let runs = run_seeds(&seeds, 2);
    let elapsed = started.elapsed().as_secs_f64();
    let total = |f: fn(&History) -> u64| runs.iter().map(|(_, run)| f(&run.history)).sum::<u64>();
    let created = total(|h| h.created.len() as u64);
    let replayed = total(|h| h.replayed);
    let not_replayable = total(|h| h.not_replayable);
    let crashes = total(|h| h.crashes);
    let kept_unflushed = total(|h| h.kept_unflushed);
    let waited_for_sled = total(|h| h.waited_for_sled);
    let steps: usize = runs.iter().map(|(_, run)| run.trace.len()).sum();
    eprintln!(
        "{} seeds in {elapsed:.1} s ({:.1} seeds/s, {:.0} simulated steps/s): {created} \
         acknowledged topic creations; {crashes} crashes back to the last flush \
         ({kept_unflushed} keeping part of the unflushed rest, {waited_for_sled} waiting for \
         sled's I/O threads to let go); node images checked against \
         a replay of the committed log {replayed} times ({not_replayable} skipped: an entry \
         below them was only ever delivered in a snapshot)",
        runs.len(),
        runs.len() as f64 / elapsed,
        steps as f64 / elapsed,
    );
    assert!(
        replayed > not_replayable,
        "most images must be checkable against a replay"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let seeds = [3, 17, 42];
    let twice: Vec<u64> = seeds.iter().flat_map(|s| [*s, *s]).collect();
    let runs = run_seeds(&twice, 1);
    for seed in seeds {
        let traces: Vec<&Vec<String>> = runs
            .iter()
            .filter(|(s, _)| *s == seed)
            .map(|(_, run)| &run.trace)
            .collect();
        assert_eq!(
            traces[0], traces[1],
            "seed {seed}: two runs of one seed took different paths"
        );
    }
}
