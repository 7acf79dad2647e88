//! The simulated cluster: brokers holding real partitions, a controller model running the
//! real decisions, the network between them, and the workload and faults a seed picks.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ferrolog_broker::{
    BrokerError, BrokerMetrics, FlushRound, FollowerAssignment, Partition, PartitionShared,
    apply_replica_fetch_answer, replica::Role,
};
use ferrolog_controller::decisions::{
    decide_alter_partition, decide_create_topic, decide_elect_offline, decide_fence_broker,
    decide_preferred_leaders, decide_register_broker,
};
use ferrolog_controller::{AlterPartitionRequest, CreateTopicRequest};
use ferrolog_log::{
    AppendInfo, BatchIter, CleanOutcome, CleanTask, CleanedLog, CleanerOptions,
    CompactEveryDataBatch, CompactionConfig, Header, LogConfig, LogError, Offset,
    PARTITION_RECENT_MAX_BYTES, RecentBatchBudget, RecordBatchBuilder, Throttle, decode_records,
};
use ferrolog_metadata::records::MetadataRecord;
use ferrolog_metadata::{BrokerId, ClusterImage, PartitionId, TopicConfig};
use ferrolog_proto::v1::{self, Acks};

use crate::SeedReport;
use crate::disk;
use crate::invariants::{self, Acked, CommittedLog, Entry, Leaders, TopicPartition};
use crate::rng::Rng;

/// The controller's node id on the simulated network; brokers are 1..=N.
const CONTROLLER: u32 = 0;
/// `min.insync.replicas` of every topic.
const MIN_INSYNC: usize = 2;
/// How long a broker may go unheard before the controller fences it (simulated time).
const SESSION_TIMEOUT_MS: u64 = 600;
const HEARTBEAT_INTERVAL_MS: u64 = 100;
const CONTROLLER_TICK_MS: u64 = 100;
/// How often the controller sends its latest image again (images may be lost).
const REPUBLISH_INTERVAL_MS: u64 = 200;
const ISR_CHECK_INTERVAL_MS: u64 = 100;
/// `replica.lag.time.max.ms`, scaled to the simulation's seconds.
const REPLICA_MAX_LAG: Duration = Duration::from_millis(500);
/// A follower whose fetch got no answer within this fetches again (the first is lost).
const FETCH_TIMEOUT_MS: u64 = 300;
const PRODUCE_TIMEOUT: Duration = Duration::from_millis(1500);
const FETCH_MAX_BYTES: u32 = 4096;
/// Longest a message may take on the network.
const MAX_DELAY_MS: u64 = 40;
/// Longest one step moves the clock.
const MAX_STEP_MS: u64 = 20;
/// Steps the closing convergence may take before the cluster counts as stuck.
const CONVERGE_STEPS_MAX: u64 = 3000;
/// The trace lines a failure prints.
const TRACE_TAIL: usize = 40;
/// The compacted topic (`cleanup.policy=compact`, one partition), beside the `t*` topics.
const COMPACTED_TOPIC: &str = "c0";
/// Keys of the compacted topic: few, so that keys repeat and compaction removes records.
const KEY_SPACE: u64 = 6;
/// Share of the compacted topic's records that are tombstones.
const TOMBSTONE_PERCENT: u64 = 15;
/// The compacted topic's `delete.retention.ms`, in simulated time (a seed runs a few
/// simulated seconds), so that tombstones expire within seeds.
const DELETE_RETENTION_MS: u64 = 1000;
/// The compacted topic's `segment.bytes`: a few batches, so segments roll (and close, and
/// become cleanable) within a seed.
const COMPACTED_SEGMENT_BYTES: u64 = 512;

/// What a seed runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub brokers: u32,
    /// Steps of workload and faults before the closing convergence.
    pub steps: u64,
    /// Where seeds put their brokers' data; a tmpfs keeps fsyncs cheap.
    pub data_dir: PathBuf,
    /// Prints every step.
    pub trace: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let shm = PathBuf::from("/dev/shm");
        let data_dir = std::env::var_os("SIM_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if shm.is_dir() {
                    shm
                } else {
                    std::env::temp_dir()
                }
            });
        Settings {
            brokers: 3,
            steps: 300,
            data_dir,
            trace: std::env::var_os("SIM_TRACE").is_some(),
        }
    }
}

/// A broken invariant (or a seed that could not run), with the seed and how to replay it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub message: String,
    /// The last steps before it.
    pub trace_tail: Vec<String>,
}

impl Violation {
    pub fn setup(seed: u64, message: String) -> Self {
        Violation {
            seed,
            step: 0,
            message,
            trace_tail: Vec::new(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay with: SIM_SEED={} scripts/simulate.sh (SIM_TRACE=1 prints every step)",
            self.seed
        )
    }
}

impl std::error::Error for Violation {}

type Produce = Pin<Box<dyn Future<Output = Result<AppendInfo, BrokerError>>>>;

/// Records as a trace shows them.
fn list(entries: &[Entry]) -> String {
    let items: Vec<String> = entries.iter().map(Entry::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Polls `future` once, outside tokio's cooperative budget: the simulation polls its
/// futures itself, after every step, instead of spawning them.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    let mut context = Context::from_waker(Waker::noop());
    future.poll(&mut context)
}

/// What travels on the simulated network.
#[derive(Clone)]
enum Payload {
    Fetch {
        tp: TopicPartition,
        request: u64,
        leader_epoch: i32,
        fetch_offset: Offset,
        durable: Offset,
        last_fetched_epoch: i32,
    },
    FetchAnswer {
        tp: TopicPartition,
        request: u64,
        data: v1::ReplicaFetchPartitionData,
    },
    AlterIsr(AlterPartitionRequest),
    Heartbeat {
        incarnation: u64,
    },
    Register {
        incarnation: u64,
    },
    Image(Arc<ClusterImage>),
}

impl Payload {
    fn name(&self) -> &'static str {
        match self {
            Payload::Fetch { .. } => "fetch",
            Payload::FetchAnswer { .. } => "fetch-answer",
            Payload::AlterIsr(_) => "alter-isr",
            Payload::Heartbeat { .. } => "heartbeat",
            Payload::Register { .. } => "register",
            Payload::Image(_) => "image",
        }
    }
}

struct Message {
    from: u32,
    to: u32,
    /// Answers go to the process that asked; a restarted one never sees them.
    to_incarnation: Option<u64>,
    ready_at_ms: u64,
    payload: Payload,
}

/// A follower's fetch in flight.
struct Outstanding {
    request: u64,
    sent_ms: u64,
    generation: u64,
    fetch_offset: Offset,
    last_fetched_epoch: i32,
}

/// A broker process: what it loses in a crash.
struct Process {
    incarnation: u64,
    partitions: BTreeMap<TopicPartition, Arc<Partition>>,
    following: BTreeMap<TopicPartition, FollowerAssignment>,
    outstanding: BTreeMap<TopicPartition, Outstanding>,
    /// One group-commit round at a time per partition, as the flusher task runs them.
    flushing: BTreeMap<TopicPartition, FlushRound>,
    image_index: u64,
    /// A cleaning in progress per compacted partition, between its phases.
    cleanings: BTreeMap<TopicPartition, Cleaning>,
    shared: PartitionShared,
    last_heartbeat_ms: u64,
    last_isr_check_ms: u64,
}

/// A cleaning between its phases, as the broker's cleaner holds it: a snapshot taken under
/// the read lock (phase 1 done), or cleaned segments written as `.cleaned` files and waiting
/// for the write lock (phase 2 done).
enum Cleaning {
    Prepared(CleanTask),
    Built(CleanedLog),
}

struct Broker {
    id: BrokerId,
    dir: PathBuf,
    process: Option<Process>,
    paused: bool,
    incarnations: u64,
    /// The metadata this broker has applied: it survives a crash (the local metadata log).
    image: Option<Arc<ClusterImage>>,
}

impl Broker {
    fn serving(&self) -> Option<&Process> {
        self.process.as_ref().filter(|_| !self.paused)
    }
}

/// The controller model: the image it decides on and the brokers' sessions.
struct ControllerModel {
    image: ClusterImage,
    /// Last heartbeat by broker: (incarnation, simulated ms).
    sessions: BTreeMap<BrokerId, (u64, u64)>,
    last_tick_ms: u64,
    last_publish_ms: u64,
}

struct PendingProduce {
    broker: BrokerId,
    incarnation: u64,
    tp: TopicPartition,
    acks: Acks,
    entries: Vec<Entry>,
    future: Produce,
}

struct Sim<'a> {
    seed: u64,
    settings: &'a Settings,
    rng: Rng,
    _dir: tempfile::TempDir,
    now_ms: u64,
    step: u64,
    brokers: BTreeMap<BrokerId, Broker>,
    controller: ControllerModel,
    network: Vec<Message>,
    /// One-way cuts: messages from the first node to the second are lost.
    cut: BTreeSet<(u32, u32)>,
    next_request: u64,
    next_value: u64,
    topics_created: u32,
    producing: Vec<PendingProduce>,
    /// Each partition's consumer position.
    consumers: BTreeMap<TopicPartition, i64>,
    // What the invariants remember.
    committed: CommittedLog,
    leaders: Leaders,
    acked: Vec<Acked>,
    high_watermarks: BTreeMap<(BrokerId, u64, TopicPartition), i64>,
    /// How far each replica process's committed prefix has been compared.
    compared_to: BTreeMap<(BrokerId, u64, TopicPartition), i64>,
    /// Replica processes of the compacted topic to read whole and check against compaction's
    /// invariants at the end of this step: each after a cleaning installs, and once when it
    /// opens (after recovery finished or undid an interrupted cleaning).
    compaction_unchecked: BTreeSet<(BrokerId, u64, TopicPartition)>,
    hasher: DefaultHasher,
    tail: Vec<String>,
    report: SeedReport,
}

/// Runs one seed: setup, the steps, the closing convergence and its checks.
pub async fn run(seed: u64, settings: &Settings) -> Result<SeedReport, Violation> {
    let mut sim = Sim::new(seed, settings)?;
    for _ in 0..settings.steps {
        sim.step(true).await?;
    }
    sim.converge().await?;
    sim.report.trace_hash = sim.hasher.finish();
    Ok(sim.report)
}

/// The log settings of `topic`'s replicas: what the broker's `PartitionManager::log_config`
/// would derive from its topic config, with segments small enough to roll within a seed.
fn log_config(topic: &str) -> LogConfig {
    let base = LogConfig {
        // Small, so segments roll (and rolls fsync) within a seed.
        segment_bytes: 2048,
        index_interval_bytes: 256,
        retention_ms: None,
        ..LogConfig::default()
    };
    if topic != COMPACTED_TOPIC {
        return base;
    }
    LogConfig {
        segment_bytes: COMPACTED_SEGMENT_BYTES,
        index_interval_bytes: 128,
        retention_bytes: None,
        compaction: Some(CompactionConfig {
            min_compaction_lag_ms: 0,
            delete_retention_ms: DELETE_RETENTION_MS,
            ..CompactionConfig::default()
        }),
        ..base
    }
}

/// The `id` header that carries a compacted record's identity (a tombstone has no value).
const ID_HEADER: &str = "id";

/// What identifies `record`: see [`Entry`].
fn entry_of(record: &ferrolog_log::Record) -> Result<Entry, String> {
    let number = |bytes: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(bytes.try_into().ok()?)) };
    let key = match &record.key {
        Some(key) => Some(u32::from_be_bytes(key.as_ref().try_into().map_err(
            |_| {
                format!(
                    "offset {} holds a key of {} bytes",
                    record.offset,
                    key.len()
                )
            },
        )?)),
        None => None,
    };
    let id = record
        .headers
        .iter()
        .find(|h| h.key == ID_HEADER)
        .and_then(|h| h.value.as_deref())
        .or(record.value.as_deref())
        .and_then(number)
        .ok_or_else(|| format!("offset {} holds no record id", record.offset))?;
    Ok(Entry {
        id,
        key,
        tombstone: record.value.is_none(),
    })
}

/// One record a read returned, with the high watermark of the read that returned it.
struct Seen {
    offset: i64,
    entry: Entry,
    high_watermark: i64,
}

/// Reads the records of `partition` in `from..to`, below its high watermark, as a consumer
/// would. A compacted log has gaps and may hold empty batches: the read goes on after each
/// batch it gets.
fn read_records(partition: &Partition, from: i64, to: i64) -> Result<Vec<Seen>, String> {
    let mut out = Vec::new();
    let mut offset = from;
    // Bounded: each round moves on by at least one batch or stops.
    for _ in 0..10_000 {
        if offset >= to {
            break;
        }
        let mut fetch =
            std::pin::pin!(partition.fetch(Offset(offset), FETCH_MAX_BYTES, Duration::ZERO));
        let outcome = match poll_once(fetch.as_mut()) {
            Poll::Ready(Ok(outcome)) => outcome,
            Poll::Ready(Err(error)) => return Err(format!("read at {offset}: {error}")),
            Poll::Pending => return Err(format!("a read at {offset} did not answer at once")),
        };
        let mut moved = false;
        for batch in BatchIter::new(&outcome.read.batches) {
            let (header, batch) = batch.map_err(|e| format!("read at {offset}: {e}"))?;
            let records = decode_records(batch).map_err(|e| format!("decode: {e}"))?;
            for record in records {
                let entry = entry_of(&record)?;
                if record.offset.0 >= offset {
                    out.push(Seen {
                        offset: record.offset.0,
                        entry,
                        high_watermark: outcome.high_watermark.0,
                    });
                    offset = record.offset.0 + 1;
                    moved = true;
                }
            }
            if header.next_offset().0 > offset {
                offset = header.next_offset().0;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    Ok(out)
}

impl<'a> Sim<'a> {
    fn new(seed: u64, settings: &'a Settings) -> Result<Self, Violation> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| Violation::setup(seed, format!("data dir: {e}")))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrolog-sim-{seed}-"))
            .tempdir_in(&settings.data_dir)
            .map_err(|e| Violation::setup(seed, format!("temp dir: {e}")))?;
        let brokers = (1..=settings.brokers as i32)
            .map(|id| {
                let id = BrokerId(id);
                (
                    id,
                    Broker {
                        id,
                        dir: dir.path().join(format!("broker-{}", id.0)),
                        process: None,
                        paused: false,
                        incarnations: 0,
                        image: None,
                    },
                )
            })
            .collect();
        let mut sim = Sim {
            seed,
            settings,
            rng: Rng::new(seed),
            _dir: dir,
            now_ms: 0,
            step: 0,
            brokers,
            controller: ControllerModel {
                image: ClusterImage::default(),
                sessions: BTreeMap::new(),
                last_tick_ms: 0,
                last_publish_ms: 0,
            },
            network: Vec::new(),
            cut: BTreeSet::new(),
            next_request: 0,
            next_value: 0,
            topics_created: 0,
            producing: Vec::new(),
            consumers: BTreeMap::new(),
            committed: CommittedLog::default(),
            leaders: Leaders::default(),
            acked: Vec::new(),
            high_watermarks: BTreeMap::new(),
            compared_to: BTreeMap::new(),
            compaction_unchecked: BTreeSet::new(),
            hasher: DefaultHasher::new(),
            tail: Vec::new(),
            report: SeedReport {
                seed,
                steps: 0,
                trace_hash: 0,
                acked_all: 0,
                acked_leader: 0,
                crashes: 0,
                truncations_by_crash: 0,
                leader_changes: 0,
                isr_changes: 0,
                records_checked: 0,
                cleanings: 0,
                cleanings_abandoned: 0,
                crashes_between_cleaning_phases: 0,
                compaction_checks: 0,
                deletes_missed: 0,
            },
        };
        // Every broker registers, then the first topic is created: both committed before
        // the first step, as a cluster that has just started.
        let ids: Vec<BrokerId> = sim.brokers.keys().copied().collect();
        for id in &ids {
            sim.start(*id)?;
            let incarnation = sim.brokers[id].incarnations;
            let live = sim.live_brokers();
            let records = decide_register_broker(
                &sim.controller.image,
                *id,
                &format!("broker-{}", id.0),
                incarnation,
                &live,
            );
            sim.commit(records);
            sim.controller.sessions.insert(*id, (incarnation, 0));
        }
        sim.create_topic(2);
        sim.create_compacted_topic();
        let image = Arc::new(sim.controller.image.clone());
        for id in &ids {
            sim.apply_image(*id, Arc::clone(&image))?;
        }
        Ok(sim)
    }

    fn violation(&self, message: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            message,
            trace_tail: self.tail.clone(),
        }
    }

    fn trace(&mut self, line: String) {
        let line = format!("{:>5} t={}ms {line}", self.step, self.now_ms);
        line.hash(&mut self.hasher);
        if self.settings.trace {
            eprintln!("seed {}: {line}", self.seed);
        }
        if self.tail.len() == TRACE_TAIL {
            self.tail.remove(0);
        }
        self.tail.push(line);
    }

    // ---- The controller model ----

    /// Applies decided records to the controller's image, as the quorum would commit them,
    /// and sends the new image to every broker.
    fn commit(&mut self, records: Vec<MetadataRecord>) {
        if records.is_empty() {
            return;
        }
        let before = self.controller.image.clone();
        for record in &records {
            let index = self.controller.image.applied_index + 1;
            if let Err(error) = self.controller.image.apply(index, record) {
                self.trace(format!("controller: record refused by the image: {error}"));
            }
        }
        for topic in self.controller.image.topics.values() {
            for p in &topic.partitions {
                let old = before
                    .topic(&topic.name)
                    .and_then(|t| t.partition(p.partition));
                if old.is_some_and(|o| o.leader_epoch != p.leader_epoch) {
                    self.report.leader_changes += 1;
                }
                if old.is_some_and(|o| o.isr != p.isr) {
                    self.report.isr_changes += 1;
                }
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        let image = Arc::new(self.controller.image.clone());
        let ids: Vec<BrokerId> = self.brokers.keys().copied().collect();
        for id in ids {
            self.send(
                CONTROLLER,
                id.0 as u32,
                None,
                Payload::Image(Arc::clone(&image)),
            );
        }
        self.controller.last_publish_ms = self.now_ms;
    }

    fn create_topic(&mut self, partitions: i64) {
        let name = format!("t{}", self.topics_created);
        self.topics_created += 1;
        let request = CreateTopicRequest {
            name: name.clone(),
            partitions,
            replication_factor: 3.min(i64::from(self.settings.brokers)),
            configs: BTreeMap::new(),
        };
        match decide_create_topic(&self.controller.image, &request, &TopicConfig::default()) {
            Ok(records) => {
                self.commit(records);
                self.trace(format!("create topic {name} with {partitions} partitions"));
            }
            Err(error) => self.trace(format!("create topic {name} refused: {error}")),
        }
    }

    /// Creates the compacted topic: one partition, `cleanup.policy=compact`, tombstones kept
    /// for `DELETE_RETENTION_MS` of simulated time.
    fn create_compacted_topic(&mut self) {
        let request = CreateTopicRequest {
            name: COMPACTED_TOPIC.to_owned(),
            partitions: 1,
            replication_factor: 3.min(i64::from(self.settings.brokers)),
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), "compact".to_owned()),
                ("min.compaction.lag.ms".to_owned(), "0".to_owned()),
                (
                    "delete.retention.ms".to_owned(),
                    DELETE_RETENTION_MS.to_string(),
                ),
            ]),
        };
        match decide_create_topic(&self.controller.image, &request, &TopicConfig::default()) {
            Ok(records) => {
                self.commit(records);
                self.trace(format!("create compacted topic {COMPACTED_TOPIC}"));
            }
            Err(error) => self.trace(format!("create topic {COMPACTED_TOPIC} refused: {error}")),
        }
    }

    /// The brokers whose registered process was heard within the session.
    fn live_brokers(&self) -> BTreeSet<BrokerId> {
        self.controller
            .image
            .brokers
            .values()
            .filter(|b| {
                self.controller
                    .sessions
                    .get(&b.id)
                    .is_some_and(|(incarnation, at)| {
                        *incarnation == b.incarnation_id
                            && self.now_ms.saturating_sub(*at) <= SESSION_TIMEOUT_MS
                    })
            })
            .map(|b| b.id)
            .collect()
    }

    /// Fences brokers that missed their session and elects leaders for offline partitions,
    /// as the active controller's liveness loop does; sometimes moves leaders back to their
    /// preferred replicas.
    fn controller_tick(&mut self) {
        self.controller.last_tick_ms = self.now_ms;
        let live = self.live_brokers();
        let silent: Vec<BrokerId> = self
            .controller
            .image
            .brokers
            .values()
            .filter(|b| !b.fenced && !live.contains(&b.id))
            .map(|b| b.id)
            .collect();
        for broker in silent {
            let records = decide_fence_broker(&self.controller.image, broker, &live);
            self.trace(format!("controller: fence broker {broker}"));
            self.commit(records);
        }
        let records = decide_elect_offline(&self.controller.image, &live);
        if !records.is_empty() {
            self.trace("controller: elect leaders for offline partitions".into());
            self.commit(records);
        }
        if self.rng.chance(5) {
            let records = decide_preferred_leaders(&self.controller.image, &live);
            if !records.is_empty() {
                self.trace("controller: move leaders to preferred replicas".into());
                self.commit(records);
            }
        }
    }

    fn controller_receive(&mut self, from: BrokerId, payload: Payload) {
        match payload {
            Payload::Heartbeat { incarnation } => {
                self.controller
                    .sessions
                    .insert(from, (incarnation, self.now_ms));
            }
            Payload::Register { incarnation } => {
                // Every restart is at the broker's own address: the controller takes the
                // new process at once (see `refuse_duplicate_broker`).
                self.controller
                    .sessions
                    .insert(from, (incarnation, self.now_ms));
                // The real decision: a new process of an unfenced broker fences the old one
                // (its leaderships move to a new epoch) and registers, in one command.
                let live = self.live_brokers();
                let records = decide_register_broker(
                    &self.controller.image,
                    from,
                    &format!("broker-{}", from.0),
                    incarnation,
                    &live,
                );
                if !records.is_empty() {
                    self.trace(format!("controller: register broker {from} #{incarnation}"));
                    self.commit(records);
                }
            }
            Payload::AlterIsr(request) => {
                match decide_alter_partition(&self.controller.image, &request) {
                    Ok(records) => {
                        if !records.is_empty() {
                            self.trace(format!(
                                "controller: {}-{} ISR -> {:?}",
                                request.topic,
                                request.partition,
                                request.new_isr.iter().map(|b| b.0).collect::<Vec<_>>()
                            ));
                        }
                        self.commit(records);
                    }
                    Err(error) => self.trace(format!("controller: ISR change refused: {error}")),
                }
            }
            other => self.trace(format!("controller: ignored {}", other.name())),
        }
    }

    // ---- The network ----

    fn send(&mut self, from: u32, to: u32, to_incarnation: Option<u64>, payload: Payload) {
        if self.cut.contains(&(from, to)) {
            return;
        }
        let delay = self.rng.below(MAX_DELAY_MS + 1);
        self.network.push(Message {
            from,
            to,
            to_incarnation,
            ready_at_ms: self.now_ms + delay,
            payload,
        });
    }

    /// Whether `node` can take a message now: the controller always, a broker when it runs
    /// and is not paused.
    fn receiving(&self, node: u32) -> bool {
        node == CONTROLLER
            || self
                .brokers
                .get(&BrokerId(node as i32))
                .is_some_and(|b| b.serving().is_some())
    }

    /// Delivers (or drops) one message that is due, chosen at random among them: that is
    /// the reordering.
    fn deliver_one(&mut self, drop_percent: u64) -> Result<bool, Violation> {
        let due: Vec<usize> = self
            .network
            .iter()
            .enumerate()
            .filter(|(_, m)| m.ready_at_ms <= self.now_ms && self.receiving(m.to))
            .map(|(i, _)| i)
            .collect();
        let Some(&index) = self.rng.pick(&due) else {
            // Messages to a broker that is down are lost.
            self.network.retain(|m| {
                m.to == CONTROLLER
                    || self
                        .brokers
                        .get(&BrokerId(m.to as i32))
                        .is_some_and(|b| b.process.is_some())
            });
            return Ok(false);
        };
        let message = self.network.remove(index);
        if self.rng.chance(drop_percent) || self.cut.contains(&(message.from, message.to)) {
            return Ok(true);
        }
        if message.to == CONTROLLER {
            self.controller_receive(BrokerId(message.from as i32), message.payload);
            return Ok(true);
        }
        let to = BrokerId(message.to as i32);
        let incarnation = self.brokers[&to].process.as_ref().map(|p| p.incarnation);
        if message.to_incarnation.is_some() && message.to_incarnation != incarnation {
            return Ok(true);
        }
        self.broker_receive(to, BrokerId(message.from as i32), message.payload)?;
        Ok(true)
    }

    // ---- Brokers ----

    /// Starts a broker process: it applies the image it had (as `Broker::start` does
    /// before it registers), and registers its new incarnation.
    fn start(&mut self, id: BrokerId) -> Result<(), Violation> {
        let broker = self.brokers.get_mut(&id).expect("a simulated broker");
        broker.incarnations += 1;
        broker.paused = false;
        broker.process = Some(Process {
            incarnation: broker.incarnations,
            partitions: BTreeMap::new(),
            following: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            flushing: BTreeMap::new(),
            image_index: 0,
            cleanings: BTreeMap::new(),
            shared: PartitionShared {
                metrics: Arc::new(BrokerMetrics::unregistered()),
                recent_budget: RecentBatchBudget::new(PARTITION_RECENT_MAX_BYTES),
            },
            last_heartbeat_ms: self.now_ms,
            last_isr_check_ms: self.now_ms,
        });
        let incarnation = broker.incarnations;
        if let Some(image) = broker.image.clone() {
            self.open_assigned(id, &image)?;
        }
        self.send(
            id.0 as u32,
            CONTROLLER,
            None,
            Payload::Register { incarnation },
        );
        Ok(())
    }

    /// A crash: the process and everything in memory go, and the disk keeps only what was
    /// fsynced, maybe with a torn rest.
    fn crash(&mut self, id: BrokerId) -> Result<(), Violation> {
        self.producing.retain(|p| p.broker != id);
        let broker = self.brokers.get_mut(&id).expect("a simulated broker");
        let Some(process) = broker.process.take() else {
            return Ok(());
        };
        broker.paused = false;
        let dir = broker.dir.clone();
        let built = process
            .cleanings
            .values()
            .any(|c| matches!(c, Cleaning::Built(_)));
        if built {
            // A crash runs no destructor: the `.cleaned` files stay for recovery to remove,
            // which dropping the cleaning here would do instead.
            self.report.crashes_between_cleaning_phases += 1;
            let keep = disk::keep_cleaned_files(&dir)
                .map_err(|e| self.violation(format!("crash of broker {id}: {e}")))?;
            drop(process);
            disk::restore_cleaned_files(&keep)
                .map_err(|e| self.violation(format!("crash of broker {id}: {e}")))?;
            self.trace(format!(
                "crash broker {id} between cleaning phases: {} cleaned files left",
                keep.len()
            ));
        } else {
            drop(process);
        }
        let cuts = disk::crash(&dir, &mut self.rng)
            .map_err(|e| self.violation(format!("crash of broker {id}: {e}")))?;
        self.report.crashes += 1;
        if !cuts.is_empty() {
            self.report.truncations_by_crash += 1;
        }
        let cut: Vec<String> = cuts
            .iter()
            .map(|c| {
                format!(
                    "{} {}->{} (durable {}, torn {})",
                    c.file, c.length, c.kept, c.durable, c.torn_bytes
                )
            })
            .collect();
        self.trace(format!("crash broker {id}: {}", cut.join(", ")));
        Ok(())
    }

    /// Opens the partitions `image` assigns to `id` and gives each its role.
    fn open_assigned(&mut self, id: BrokerId, image: &Arc<ClusterImage>) -> Result<(), Violation> {
        let broker = self.brokers.get_mut(&id).expect("a simulated broker");
        let dir = broker.dir.clone();
        let Some(process) = broker.process.as_mut() else {
            return Ok(());
        };
        process.image_index = image.applied_index;
        // The real broker's rule: an image without this process's registration holds its
        // previous process's leaderships, which it must not take.
        let image = ferrolog_broker::replica::image_for_incarnation(image, id, process.incarnation);
        let mut lines = Vec::new();
        for topic in image.topics.values() {
            for p in &topic.partitions {
                if !p.replicas.contains(&id) {
                    continue;
                }
                let tp = (topic.name.clone(), p.partition.0);
                if !process.partitions.contains_key(&tp) {
                    let path = dir.join(format!("{}-{}", tp.0, tp.1));
                    match Partition::open_without_flusher(
                        &topic.name,
                        PartitionId(tp.1),
                        &topic.topic_id,
                        id,
                        &path,
                        log_config(&topic.name),
                        process.shared.clone(),
                    ) {
                        Ok(partition) => {
                            process.partitions.insert(tp.clone(), partition);
                        }
                        Err(error) => {
                            return Err(Violation {
                                seed: self.seed,
                                step: self.step,
                                message: format!(
                                    "broker {id} cannot open {}-{} (log recovery failed): \
                                     {error}",
                                    tp.0, tp.1
                                ),
                                trace_tail: self.tail.clone(),
                            });
                        }
                    }
                }
                let partition = &process.partitions[&tp];
                match partition.apply_assignment(p, MIN_INSYNC) {
                    Ok(Some(assignment)) => {
                        process.following.insert(tp.clone(), assignment);
                        process.outstanding.remove(&tp);
                    }
                    Ok(None) => {
                        let follows = matches!(
                            partition.current_role(),
                            Role::Follower { leader: Some(l), .. } if l != id
                        );
                        if !follows {
                            process.following.remove(&tp);
                            process.outstanding.remove(&tp);
                        }
                    }
                    Err(error) => lines.push(format!("{}-{}: {error}", tp.0, tp.1)),
                }
            }
        }
        for line in lines {
            self.trace(format!("broker {id} cannot take its role: {line}"));
        }
        Ok(())
    }

    fn apply_image(&mut self, id: BrokerId, image: Arc<ClusterImage>) -> Result<(), Violation> {
        let broker = self.brokers.get_mut(&id).expect("a simulated broker");
        let current = broker.process.as_ref().map_or(0, |p| p.image_index);
        if image.applied_index <= current {
            return Ok(());
        }
        broker.image = Some(Arc::clone(&image));
        self.open_assigned(id, &image)
    }

    fn broker_receive(
        &mut self,
        id: BrokerId,
        from: BrokerId,
        payload: Payload,
    ) -> Result<(), Violation> {
        match payload {
            Payload::Image(image) => self.apply_image(id, image)?,
            Payload::Fetch {
                tp,
                request,
                leader_epoch,
                fetch_offset,
                durable,
                last_fetched_epoch,
            } => {
                let data = self.answer_fetch(
                    id,
                    from,
                    &tp,
                    leader_epoch,
                    fetch_offset,
                    durable,
                    last_fetched_epoch,
                );
                let incarnation = self.brokers[&from].process.as_ref().map(|p| p.incarnation);
                self.send(
                    id.0 as u32,
                    from.0 as u32,
                    incarnation,
                    Payload::FetchAnswer { tp, request, data },
                );
            }
            Payload::FetchAnswer { tp, request, data } => {
                self.take_fetch_answer(id, &tp, request, data);
            }
            other => self.trace(format!("broker {id}: ignored {}", other.name())),
        }
        Ok(())
    }

    /// The leader's side of a replica fetch, as the replication service answers it.
    #[allow(clippy::too_many_arguments)]
    fn answer_fetch(
        &mut self,
        id: BrokerId,
        follower: BrokerId,
        tp: &TopicPartition,
        leader_epoch: i32,
        fetch_offset: Offset,
        durable: Offset,
        last_fetched_epoch: i32,
    ) -> v1::ReplicaFetchPartitionData {
        let error_data = |error: &BrokerError| v1::ReplicaFetchPartitionData {
            error_code: error.code() as i32,
            error_message: error.to_string(),
            log_start_offset: match error {
                BrokerError::Log(LogError::OffsetOutOfRange { log_start, .. }) => log_start.0,
                _ => 0,
            },
            ..Default::default()
        };
        let partition = self.brokers[&id]
            .process
            .as_ref()
            .and_then(|p| p.partitions.get(tp).cloned());
        let Some(partition) = partition else {
            return error_data(&BrokerError::NotLeader {
                topic: tp.0.clone(),
                partition: tp.1,
                leader: None,
            });
        };
        match partition.begin_replica_fetch(
            follower,
            leader_epoch,
            fetch_offset,
            durable,
            last_fetched_epoch,
        ) {
            Ok(None) => {}
            Ok(Some(divergence)) => {
                return v1::ReplicaFetchPartitionData {
                    high_watermark: partition.high_watermark().0,
                    log_start_offset: partition.log_start_offset().0,
                    diverging_epoch: Some(v1::DivergingEpoch {
                        epoch: divergence.epoch,
                        end_offset: divergence.end_offset.0,
                    }),
                    ..Default::default()
                };
            }
            Err(error) => return error_data(&error),
        }
        match partition.read_for_follower(leader_epoch, fetch_offset, FETCH_MAX_BYTES) {
            Ok(outcome) => v1::ReplicaFetchPartitionData {
                high_watermark: outcome.high_watermark.0,
                log_start_offset: outcome.read.log_start_offset.0,
                log_end_offset: outcome.read.log_end_offset.0,
                record_batches: outcome.read.batches,
                ..Default::default()
            },
            Err(error) => error_data(&error),
        }
    }

    /// The follower acts on the answer to its outstanding fetch, as its fetcher does.
    fn take_fetch_answer(
        &mut self,
        id: BrokerId,
        tp: &TopicPartition,
        request: u64,
        data: v1::ReplicaFetchPartitionData,
    ) {
        let Some(process) = self.brokers.get_mut(&id).and_then(|b| b.process.as_mut()) else {
            return;
        };
        let Some(asked) = process.outstanding.get(tp) else {
            return;
        };
        if asked.request != request {
            return;
        }
        let asked = process.outstanding.remove(tp).expect("just found");
        let Some(partition) = process.partitions.get(tp).cloned() else {
            return;
        };
        let (end_before, _) = partition.follower_position();
        if let Some(diverging) = &data.diverging_epoch {
            self.trace(format!(
                "broker {id} {}-{}: fetched at {} (last epoch {}), told it diverges: epoch {} \
                 ends at {}",
                tp.0,
                tp.1,
                asked.fetch_offset,
                asked.last_fetched_epoch,
                diverging.epoch,
                diverging.end_offset
            ));
        }
        let applied = apply_replica_fetch_answer(
            &partition,
            asked.generation,
            asked.fetch_offset,
            asked.last_fetched_epoch,
            data,
        );
        if let Err(error) = applied {
            self.trace(format!(
                "broker {id} {}-{}: fetch answer: {error}",
                tp.0, tp.1
            ));
        }
        let (end_after, _) = partition.follower_position();
        if end_after < end_before {
            self.trace(format!(
                "broker {id} {}-{}: truncated from {end_before} to {end_after} (high watermark \
                 {})",
                tp.0,
                tp.1,
                partition.high_watermark()
            ));
        }
    }

    /// A follower sends a fetch for one partition it follows and has no fetch out for.
    fn send_fetch(&mut self, id: BrokerId, tp: &TopicPartition) {
        let now = self.now_ms;
        let request = self.next_request;
        let Some(process) = self.brokers.get_mut(&id).and_then(|b| b.process.as_mut()) else {
            return;
        };
        let Some(assignment) = process.following.get(tp).copied() else {
            return;
        };
        if process
            .outstanding
            .get(tp)
            .is_some_and(|o| now.saturating_sub(o.sent_ms) < FETCH_TIMEOUT_MS)
        {
            return;
        }
        let Some(partition) = process.partitions.get(tp) else {
            return;
        };
        if partition.generation() != assignment.generation {
            return;
        }
        let (fetch_offset, last_fetched_epoch) = partition.follower_position();
        let durable = partition.durable_offset();
        process.outstanding.insert(
            tp.clone(),
            Outstanding {
                request,
                sent_ms: now,
                generation: assignment.generation,
                fetch_offset,
                last_fetched_epoch,
            },
        );
        self.next_request += 1;
        self.send(
            id.0 as u32,
            assignment.leader.0 as u32,
            None,
            Payload::Fetch {
                tp: tp.clone(),
                request,
                leader_epoch: assignment.leader_epoch,
                fetch_offset,
                durable,
                last_fetched_epoch,
            },
        );
    }

    // ---- Workload ----

    fn topic_partitions(&self) -> Vec<TopicPartition> {
        self.controller
            .image
            .topics
            .values()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.partition.0)))
            .collect()
    }

    /// A producer sends one batch to the leader that some broker's image names (clients
    /// learn leaders from brokers, so the view may be stale), with acks=all or acks=1.
    fn produce(&mut self) -> Result<(), Violation> {
        let tps = self.topic_partitions();
        let Some(tp) = self.rng.pick(&tps).cloned() else {
            return Ok(());
        };
        let ids: Vec<BrokerId> = self.brokers.keys().copied().collect();
        let Some(view_of) = self.rng.pick(&ids).copied() else {
            return Ok(());
        };
        let leader = self.brokers[&view_of]
            .image
            .as_ref()
            .and_then(|i| i.topic(&tp.0).and_then(|t| t.partition(PartitionId(tp.1))))
            .and_then(|p| p.leader);
        let Some(leader) = leader else {
            return Ok(());
        };
        let Some(process) = self.brokers.get(&leader).and_then(Broker::serving) else {
            return Ok(());
        };
        let Some(partition) = process.partitions.get(&tp).cloned() else {
            return Ok(());
        };
        let incarnation = process.incarnation;
        let acks = if self.rng.chance(65) {
            Acks::All
        } else {
            Acks::Leader
        };
        let count = 1 + self.rng.below(3);
        let mut builder = RecordBatchBuilder::new(self.now_ms as i64);
        let mut entries = Vec::new();
        let compacted = tp.0 == COMPACTED_TOPIC;
        for _ in 0..count {
            self.next_value += 1;
            let id = self.next_value.to_be_bytes();
            if compacted {
                // Keyed, from a small key space; the value is the record's id, or none for a
                // tombstone; the id header names a tombstone too.
                let key = self.rng.below(KEY_SPACE) as u32;
                let tombstone = self.rng.chance(TOMBSTONE_PERCENT);
                builder.push(
                    self.now_ms as i64,
                    Some(&key.to_be_bytes()),
                    (!tombstone).then_some(&id[..]),
                    &[Header {
                        key: ID_HEADER.to_owned(),
                        value: Some(id.to_vec().into()),
                    }],
                );
                entries.push(Entry {
                    id: self.next_value,
                    key: Some(key),
                    tombstone,
                });
            } else {
                builder.push(self.now_ms as i64, None, Some(&id), &[]);
                entries.push(Entry {
                    id: self.next_value,
                    key: None,
                    tombstone: false,
                });
            }
        }
        let batch = builder.build();
        let mut future: Produce =
            Box::pin(async move { partition.append(batch, acks, PRODUCE_TIMEOUT).await });
        // The first poll appends (or refuses); the wait for acks goes on after each step.
        let first = poll_once(future.as_mut());
        self.trace(format!(
            "produce {:?} {}-{} to broker {leader}: {}",
            acks,
            tp.0,
            tp.1,
            list(&entries)
        ));
        let pending = PendingProduce {
            broker: leader,
            incarnation,
            tp,
            acks,
            entries,
            future,
        };
        match first {
            Poll::Ready(result) => self.produce_done(&pending, result),
            Poll::Pending => {
                self.producing.push(pending);
                Ok(())
            }
        }
    }

    /// A produce has its answer: an acks=all acknowledgement fixes its records' offsets.
    fn produce_done(
        &mut self,
        pending: &PendingProduce,
        result: Result<AppendInfo, BrokerError>,
    ) -> Result<(), Violation> {
        let tp = &pending.tp;
        match result {
            Ok(info) => {
                self.trace(format!(
                    "ack {:?} {}-{} from broker {}: {} at {}",
                    pending.acks,
                    tp.0,
                    tp.1,
                    pending.broker,
                    list(&pending.entries),
                    info.base_offset
                ));
                if pending.acks != Acks::All {
                    self.report.acked_leader += 1;
                    return Ok(());
                }
                self.report.acked_all += 1;
                for (i, entry) in pending.entries.iter().enumerate() {
                    let acked = Acked {
                        tp: tp.clone(),
                        offset: info.base_offset.0 + i as i64,
                        entry: *entry,
                    };
                    let replica = format!("the acknowledgement from broker {}", pending.broker);
                    self.committed
                        .committed_prefix_is_identical_on_every_replica(
                            tp,
                            acked.offset,
                            acked.entry,
                            &replica,
                            self.now_ms,
                        )
                        .map_err(|m| self.violation(m))?;
                    self.acked.push(acked);
                }
            }
            Err(error) => self.trace(format!(
                "produce {:?} {}-{} to broker {} failed: {error}",
                pending.acks, tp.0, tp.1, pending.broker
            )),
        }
        Ok(())
    }

    /// Polls every produce waiting for its acks (those on a paused broker wait too: a
    /// paused process answers nothing).
    fn poll_producing(&mut self) -> Result<(), Violation> {
        let mut waiting = std::mem::take(&mut self.producing);
        let mut done = Vec::new();
        waiting.retain_mut(|pending| {
            let paused = self.brokers.get(&pending.broker).is_none_or(|b| {
                b.paused || b.process.as_ref().map(|p| p.incarnation) != Some(pending.incarnation)
            });
            if paused {
                return true;
            }
            match poll_once(pending.future.as_mut()) {
                Poll::Ready(result) => {
                    done.push((
                        PendingProduce {
                            broker: pending.broker,
                            incarnation: pending.incarnation,
                            tp: pending.tp.clone(),
                            acks: pending.acks,
                            entries: pending.entries.clone(),
                            future: Box::pin(std::future::pending()),
                        },
                        result,
                    ));
                    false
                }
                Poll::Pending => true,
            }
        });
        self.producing = waiting;
        for (pending, result) in done {
            self.produce_done(&pending, result)?;
        }
        Ok(())
    }

    /// A consumer reads on from its position on a broker that leads the partition.
    fn consume(&mut self) -> Result<(), Violation> {
        let tps = self.topic_partitions();
        let Some(tp) = self.rng.pick(&tps).cloned() else {
            return Ok(());
        };
        let leaders: Vec<(BrokerId, Arc<Partition>)> = self
            .brokers
            .values()
            .filter_map(|b| {
                let partition = b.serving()?.partitions.get(&tp)?;
                matches!(partition.current_role(), Role::Leader(_))
                    .then(|| (b.id, Arc::clone(partition)))
            })
            .collect();
        let Some((broker, partition)) = self.rng.pick(&leaders).cloned() else {
            return Ok(());
        };
        let position = *self.consumers.get(&tp).unwrap_or(&0);
        let end = partition.log_end_offset().0;
        if position > end {
            // A stale leader (not yet told it was replaced) may end below what the
            // consumer read from the new one; the consumer tries elsewhere.
            return Ok(());
        }
        let records = read_records(&partition, position, end)
            .map_err(|m| self.violation(format!("consumer on broker {broker}: {m}")))?;
        let replica = format!("a consumer of broker {broker}");
        let count = records.len();
        for seen in records {
            invariants::no_read_above_high_watermark(&tp, seen.offset, seen.high_watermark)
                .map_err(|m| self.violation(m))?;
            self.committed
                .committed_prefix_is_identical_on_every_replica(
                    &tp,
                    seen.offset,
                    seen.entry,
                    &replica,
                    self.now_ms,
                )
                .map_err(|m| self.violation(m))?;
            self.consumers.insert(tp.clone(), seen.offset + 1);
        }
        self.trace(format!(
            "consume {}-{} from broker {broker} at {position}: {count} records",
            tp.0, tp.1
        ));
        Ok(())
    }

    // ---- The disk ----

    /// Starts a group-commit round on a partition with unsynced data.
    fn begin_flush(&mut self, id: BrokerId) {
        let Some(process) = self.brokers.get_mut(&id).and_then(|b| b.process.as_mut()) else {
            return;
        };
        let candidates: Vec<TopicPartition> = process
            .partitions
            .iter()
            .filter(|(tp, p)| {
                !process.flushing.contains_key(*tp) && p.log_end_offset() > p.durable_offset()
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        let Some(tp) = self.rng.pick(&candidates).cloned() else {
            return;
        };
        if let Some(round) = process.partitions[&tp].begin_flush() {
            process.flushing.insert(tp, round);
        }
    }

    /// Ends a group-commit round: the fsync, then what it made durable. The time between
    /// begin and finish is a slow disk.
    fn finish_flush(&mut self, id: BrokerId) {
        let Some(process) = self.brokers.get_mut(&id).and_then(|b| b.process.as_mut()) else {
            return;
        };
        let rounds: Vec<TopicPartition> = process.flushing.keys().cloned().collect();
        let Some(tp) = self.rng.pick(&rounds).cloned() else {
            return;
        };
        let Some(round) = process.flushing.remove(&tp) else {
            return;
        };
        let Some(partition) = process.partitions.get(&tp) else {
            return;
        };
        let synced = round.sync();
        let end = round.end();
        if !partition.finish_flush(round, synced) {
            self.trace(format!("broker {id} {}-{}: fsync failed", tp.0, tp.1));
        } else {
            self.trace(format!("broker {id} {}-{}: fsynced to {end}", tp.0, tp.1));
        }
    }

    // ---- The log cleaner ----

    /// The broker's log cleaner, one phase at a time, on `id`'s replica of the compacted
    /// partition: phase 1 (snapshot under the read lock), phase 2 (the offset map and the
    /// `.cleaned` files, without a lock), phase 3 (the swap under the write lock, abandoned
    /// if the log changed). Each call takes the next phase and may go on to the following
    /// one, so other steps (appends, truncations, crashes) fall between phases or not.
    fn clean(&mut self, id: BrokerId) -> Result<(), Violation> {
        let tp: TopicPartition = (COMPACTED_TOPIC.to_owned(), 0);
        let Some(partition) = self.brokers[&id]
            .serving()
            .and_then(|p| p.partitions.get(&tp))
            .cloned()
        else {
            return Ok(());
        };
        // The model sees every record now below a high watermark before any can be
        // compacted away: what was committed is known, whatever the cleaner removes.
        self.check()?;
        let name = format!("broker {id} {}-{}", tp.0, tp.1);
        loop {
            let process = self
                .brokers
                .get_mut(&id)
                .and_then(|b| b.process.as_mut())
                .expect("a serving broker has a process");
            let incarnation = process.incarnation;
            match process.cleanings.remove(&tp) {
                None => match partition.prepare_cleaning(self.now_ms as i64) {
                    Ok(Some(task)) => {
                        process
                            .cleanings
                            .insert(tp.clone(), Cleaning::Prepared(task));
                        self.trace(format!(
                            "{name}: cleaning prepared below the high watermark {} (first \
                             dirty {})",
                            partition.high_watermark(),
                            partition.cleaner_first_dirty()
                        ));
                    }
                    Ok(None) => return Ok(()),
                    Err(error) => {
                        self.trace(format!("{name}: cleaning cannot start: {error}"));
                        return Ok(());
                    }
                },
                Some(Cleaning::Prepared(task)) => {
                    // Sometimes a dedupe buffer of a few keys: the map fills, and the
                    // cleaning stops inside the dirty part.
                    let dedupe_buffer_bytes = if self.rng.chance(30) {
                        32 * (3 + self.rng.below(4) as usize)
                    } else {
                        64 * 1024
                    };
                    let options = CleanerOptions {
                        dedupe_buffer_bytes,
                    };
                    match task.run(&options, &CompactEveryDataBatch, &Throttle::unlimited()) {
                        Ok(cleaned) => {
                            self.trace(format!(
                                "{name}: cleaned segments written ({} of {} records kept, \
                                 {} keys mapped)",
                                cleaned.stats.records_kept,
                                cleaned.stats.records_read,
                                cleaned.stats.keys_mapped
                            ));
                            let process = self
                                .brokers
                                .get_mut(&id)
                                .and_then(|b| b.process.as_mut())
                                .expect("a serving broker has a process");
                            process
                                .cleanings
                                .insert(tp.clone(), Cleaning::Built(cleaned));
                        }
                        Err(error) => {
                            self.trace(format!("{name}: cleaning failed: {error}"));
                            return Ok(());
                        }
                    }
                }
                Some(Cleaning::Built(cleaned)) => {
                    match partition.install_cleaned(cleaned) {
                        Ok(CleanOutcome::Installed { first_dirty, stats }) => {
                            self.report.cleanings += 1;
                            self.trace(format!(
                                "{name}: cleaned segments installed ({} -> {} segments), first \
                                 dirty {first_dirty}",
                                stats.segments_before, stats.segments_after
                            ));
                        }
                        Ok(CleanOutcome::Abandoned) => {
                            self.report.cleanings_abandoned += 1;
                            self.trace(format!("{name}: the log changed; cleaning abandoned"));
                        }
                        Err(error) => {
                            self.trace(format!("{name}: installing the cleaning failed: {error}"))
                        }
                    }
                    self.compaction_unchecked
                        .insert((id, incarnation, tp.clone()));
                    return Ok(());
                }
            }
            if !self.rng.chance(60) {
                return Ok(());
            }
        }
    }

    // ---- Steps ----

    /// Runs what each process does on a timer: heartbeats, ISR checks, the controller's
    /// liveness tick and image republishing.
    fn timers(&mut self) {
        let ids: Vec<BrokerId> = self.brokers.keys().copied().collect();
        for id in ids {
            let now = self.now_ms;
            let Some(process) = self.brokers[&id].serving() else {
                continue;
            };
            let incarnation = process.incarnation;
            if now.saturating_sub(process.last_heartbeat_ms) >= HEARTBEAT_INTERVAL_MS {
                let image = self.brokers[&id].image.clone();
                let registered = image
                    .as_ref()
                    .and_then(|i| i.brokers.get(&id))
                    .is_some_and(|b| !b.fenced && b.incarnation_id == incarnation);
                self.send(
                    id.0 as u32,
                    CONTROLLER,
                    None,
                    Payload::Heartbeat { incarnation },
                );
                if !registered {
                    // Told it is fenced (or not this process), a broker registers again.
                    self.send(
                        id.0 as u32,
                        CONTROLLER,
                        None,
                        Payload::Register { incarnation },
                    );
                }
                if let Some(p) = self.brokers.get_mut(&id).and_then(|b| b.process.as_mut()) {
                    p.last_heartbeat_ms = now;
                }
            }
            let Some(process) = self.brokers[&id].serving() else {
                continue;
            };
            if now.saturating_sub(process.last_isr_check_ms) >= ISR_CHECK_INTERVAL_MS {
                let wanted: Vec<AlterPartitionRequest> = process
                    .partitions
                    .iter()
                    .filter_map(|(tp, p)| {
                        let (state, isr) = p.wanted_isr_change(REPLICA_MAX_LAG)?;
                        Some(AlterPartitionRequest {
                            topic: tp.0.clone(),
                            partition: tp.1 as i32,
                            leader: id,
                            leader_epoch: state.leader_epoch,
                            partition_epoch: state.partition_epoch,
                            new_isr: isr,
                        })
                    })
                    .collect();
                if let Some(p) = self.brokers.get_mut(&id).and_then(|b| b.process.as_mut()) {
                    p.last_isr_check_ms = now;
                }
                for request in wanted {
                    self.send(id.0 as u32, CONTROLLER, None, Payload::AlterIsr(request));
                }
            }
        }
        if self.now_ms.saturating_sub(self.controller.last_tick_ms) >= CONTROLLER_TICK_MS {
            self.controller_tick();
        }
        if self.now_ms.saturating_sub(self.controller.last_publish_ms) >= REPUBLISH_INTERVAL_MS {
            self.publish();
        }
    }

    /// A random broker id.
    fn any_broker(&mut self) -> BrokerId {
        let ids: Vec<BrokerId> = self.brokers.keys().copied().collect();
        *self.rng.pick(&ids).expect("a cluster has brokers")
    }

    /// One fault, picked by the seed.
    fn fault(&mut self) -> Result<(), Violation> {
        let id = self.any_broker();
        let node = id.0 as u32;
        let down = self
            .brokers
            .values()
            .filter(|b| b.process.is_none())
            .count();
        match self.rng.below(9) {
            0 if down == 0 => self.crash(id)?,
            1 | 2 if self.brokers[&id].process.is_none() => {
                self.start(id)?;
                self.trace(format!("restart broker {id}"));
            }
            3 if self.brokers[&id].process.is_some() && !self.brokers[&id].paused => {
                self.brokers.get_mut(&id).expect("exists").paused = true;
                self.trace(format!("pause broker {id}"));
            }
            4 if self.brokers[&id].paused => {
                self.brokers.get_mut(&id).expect("exists").paused = false;
                self.trace(format!("resume broker {id}"));
            }
            5 => {
                for other in 0..=self.settings.brokers {
                    if other != node {
                        self.cut.insert((node, other));
                        self.cut.insert((other, node));
                    }
                }
                self.trace(format!("isolate broker {id}"));
            }
            6 => {
                let other = self.rng.below(u64::from(self.settings.brokers) + 1) as u32;
                if other != node {
                    self.cut.insert((node, other));
                    self.trace(format!("cut messages from {node} to {other}"));
                }
            }
            7 | 8 => {
                self.cut.clear();
                self.trace("heal the network".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// One step: time moves, timers run, then one action the seed picks (or, converging,
    /// the actions that make progress), then the invariants.
    async fn step(&mut self, faults: bool) -> Result<(), Violation> {
        self.step += 1;
        let advance = self.rng.below(MAX_STEP_MS + 1);
        self.now_ms += advance;
        tokio::time::advance(Duration::from_millis(advance)).await;
        self.timers();
        let deliveries = 1 + self.rng.below(4);
        for _ in 0..deliveries {
            if !self.deliver_one(if faults { 3 } else { 0 })? {
                break;
            }
        }
        let id = self.any_broker();
        let roll = self.rng.below(100);
        match roll {
            0..=24 => {
                let followed: Vec<TopicPartition> = self.brokers[&id]
                    .serving()
                    .map(|p| p.following.keys().cloned().collect())
                    .unwrap_or_default();
                for tp in followed {
                    self.send_fetch(id, &tp);
                }
            }
            25..=39 if faults => self.produce()?,
            40..=51 if self.brokers[&id].serving().is_some() => self.begin_flush(id),
            52..=65 if self.brokers[&id].serving().is_some() => self.finish_flush(id),
            66..=73 => self.consume()?,
            74..=76 => {
                let partitions: Vec<Arc<Partition>> = self.brokers[&id]
                    .serving()
                    .map(|p| p.partitions.values().cloned().collect())
                    .unwrap_or_default();
                for partition in partitions {
                    // Upkeep checkpoints the high watermark, which a restart loads.
                    let _ = partition.maintain();
                }
            }
            77 if faults && self.topics_created < 3 && self.rng.chance(10) => self.create_topic(1),
            78..=84 if faults => self.fault()?,
            85..=90 => self.clean(id)?,
            _ => {}
        }
        self.poll_producing()?;
        self.check()?;
        self.report.steps += 1;
        Ok(())
    }

    /// The invariants, after every step.
    fn check(&mut self) -> Result<(), Violation> {
        let mut replicas: Vec<(BrokerId, u64, TopicPartition, Arc<Partition>)> = Vec::new();
        for broker in self.brokers.values() {
            let Some(process) = broker.process.as_ref() else {
                continue;
            };
            for (tp, partition) in &process.partitions {
                replicas.push((
                    broker.id,
                    process.incarnation,
                    tp.clone(),
                    Arc::clone(partition),
                ));
            }
        }
        for (id, incarnation, tp, partition) in replicas {
            let name = format!("broker {id} (process {incarnation}) {}-{}", tp.0, tp.1);
            if let Role::Leader(state) = partition.current_role() {
                self.leaders
                    .one_leader_per_partition_epoch(&tp, state.leader_epoch, id)
                    .map_err(|m| self.violation(m))?;
            }
            let high_watermark = partition.high_watermark().0;
            let key = (id, incarnation, tp.clone());
            let previous = self.high_watermarks.insert(key.clone(), high_watermark);
            invariants::high_watermark_never_moves_back(&name, previous, high_watermark)
                .map_err(|m| self.violation(m))?;
            let from = match self.compared_to.get(&key) {
                Some(from) => *from,
                None => {
                    if tp.0 == COMPACTED_TOPIC {
                        // A replica process opened its log: recovery may have finished or
                        // undone an interrupted cleaning.
                        self.compaction_unchecked.insert(key.clone());
                    }
                    let start = partition.log_start_offset().0;
                    self.compared_to.insert(key.clone(), start);
                    start
                }
            };
            if from < high_watermark {
                let records = read_records(&partition, from, high_watermark)
                    .map_err(|m| self.violation(format!("{name}: {m}")))?;
                for seen in records {
                    self.committed
                        .committed_prefix_is_identical_on_every_replica(
                            &tp,
                            seen.offset,
                            seen.entry,
                            &name,
                            self.now_ms,
                        )
                        .map_err(|m| self.violation(m))?;
                    self.report.records_checked += 1;
                }
                self.compared_to.insert(key, high_watermark);
            }
        }
        for key in std::mem::take(&mut self.compaction_unchecked) {
            self.check_compacted(&key)?;
        }
        Ok(())
    }

    /// Reads one replica of the compacted topic whole, from its log start to its high
    /// watermark, and checks compaction's invariants on it: every record is the committed
    /// one at its offset (none moved), the newest committed record of every key is there
    /// (a tombstone may have expired), and the cleaned part holds one record per key.
    fn check_compacted(&mut self, key: &(BrokerId, u64, TopicPartition)) -> Result<(), Violation> {
        let (id, incarnation, tp) = key;
        let Some(partition) = self.brokers[id]
            .process
            .as_ref()
            .filter(|p| p.incarnation == *incarnation)
            .and_then(|p| p.partitions.get(tp))
            .cloned()
        else {
            return Ok(());
        };
        let name = format!("broker {id} (process {incarnation}) {}-{}", tp.0, tp.1);
        let high_watermark = partition.high_watermark().0;
        let first_dirty = partition.cleaner_first_dirty().0;
        let from = partition.log_start_offset().0;
        let records = read_records(&partition, from, high_watermark)
            .map_err(|m| self.violation(format!("{name}: {m}")))?;
        let mut entries = Vec::with_capacity(records.len());
        for seen in records {
            self.committed
                .committed_prefix_is_identical_on_every_replica(
                    tp,
                    seen.offset,
                    seen.entry,
                    &name,
                    self.now_ms,
                )
                .map_err(|m| self.violation(m))?;
            if seen.offset < high_watermark {
                entries.push((seen.offset, seen.entry));
            }
        }
        let empty = BTreeMap::new();
        let committed = self.committed.of(tp).unwrap_or(&empty);
        let mut missed = Vec::new();
        invariants::latest_value_per_key_survives(
            &name,
            committed,
            &entries,
            high_watermark,
            partition.log_end_offset().0,
            self.now_ms,
            DELETE_RETENTION_MS,
            &mut missed,
        )
        .map_err(|m| self.violation(m))?;
        invariants::cleaned_part_holds_one_record_per_key(
            &name,
            first_dirty.min(high_watermark),
            &entries,
        )
        .map_err(|m| self.violation(m))?;
        self.report.compaction_checks += 1;
        if !missed.is_empty() {
            self.trace(format!(
                "{name}: an older value where an expired tombstone was: {}",
                missed.join("; ")
            ));
        }
        self.report.deletes_missed += missed.len() as u64;
        Ok(())
    }

    /// Heals everything, lets the cluster settle without faults, and checks that it did:
    /// every partition led, every replica caught up, every acks=all record in place.
    async fn converge(&mut self) -> Result<(), Violation> {
        self.trace("converge: heal, resume and restart everything".into());
        self.cut.clear();
        let ids: Vec<BrokerId> = self.brokers.keys().copied().collect();
        for id in &ids {
            self.brokers.get_mut(id).expect("exists").paused = false;
            if self.brokers[id].process.is_none() {
                self.start(*id)?;
            }
        }
        let mut settled = false;
        for _ in 0..CONVERGE_STEPS_MAX {
            self.step(false).await?;
            if self.producing.is_empty() && self.settled() {
                settled = true;
                break;
            }
        }
        if !settled {
            return Err(self.violation(format!(
                "the cluster did not settle within {CONVERGE_STEPS_MAX} steps after healing: \
                 {}",
                self.describe()
            )));
        }
        // Every acks=all record is on the leader, below its high watermark, where it was
        // acknowledged.
        let image = self.controller.image.clone();
        let mut logs: BTreeMap<TopicPartition, (BTreeMap<i64, Entry>, i64)> = BTreeMap::new();
        for topic in image.topics.values() {
            for p in &topic.partitions {
                let tp = (topic.name.clone(), p.partition.0);
                let Some(leader) = p.leader else { continue };
                let Some(partition) = self.brokers[&leader]
                    .process
                    .as_ref()
                    .and_then(|process| process.partitions.get(&tp))
                else {
                    continue;
                };
                let high_watermark = partition.high_watermark().0;
                let records = read_records(partition, 0, high_watermark)
                    .map_err(|m| self.violation(format!("final read of {}-{}: {m}", tp.0, tp.1)))?;
                logs.insert(
                    tp,
                    (
                        records.into_iter().map(|s| (s.offset, s.entry)).collect(),
                        high_watermark,
                    ),
                );
            }
        }
        for acked in self.acked.clone() {
            let (found, high_watermark) = logs
                .get(&acked.tp)
                .map(|(records, hw)| (records.get(&acked.offset).copied(), *hw))
                .unwrap_or((None, 0));
            // Compaction may remove a record only if a newer one of its key was committed,
            // or it is a tombstone past `delete.retention.ms`; nothing else may be gone.
            let compacted = acked.tp.0 == COMPACTED_TOPIC;
            let superseded = compacted
                && acked
                    .entry
                    .key
                    .is_some_and(|key| self.committed.superseded(&acked.tp, key, acked.offset));
            let tombstone_expired = compacted
                && acked.entry.tombstone
                && self
                    .committed
                    .get(&acked.tp, acked.offset)
                    .is_some_and(|c| self.now_ms >= c.at_ms.saturating_add(DELETE_RETENTION_MS));
            invariants::acknowledged_record_never_lost_nor_moved(
                &acked,
                found,
                high_watermark,
                superseded,
                tombstone_expired,
            )
            .map_err(|m| self.violation(m))?;
        }
        // Every replica of the compacted topic, caught up, keeps the newest record per key.
        let replicas: Vec<(BrokerId, u64, TopicPartition)> = self
            .brokers
            .values()
            .filter_map(|b| {
                let process = b.process.as_ref()?;
                process
                    .partitions
                    .keys()
                    .any(|tp| tp.0 == COMPACTED_TOPIC)
                    .then(|| (b.id, process.incarnation, (COMPACTED_TOPIC.to_owned(), 0)))
            })
            .collect();
        for key in replicas {
            self.check_compacted(&key)?;
        }
        self.report.leader_changes = self.report.leader_changes.max(self.leaders.count());
        self.trace(format!("converged: {}", self.describe()));
        Ok(())
    }

    /// Whether every partition has a leader whose high watermark covers its whole log, and
    /// every replica has all of it.
    fn settled(&self) -> bool {
        let image = &self.controller.image;
        image.topics.values().all(|topic| {
            topic.partitions.iter().all(|p| {
                let tp = (topic.name.clone(), p.partition.0);
                let partition_of = |b: &BrokerId| {
                    self.brokers
                        .get(b)
                        .and_then(|b| b.process.as_ref())
                        .and_then(|process| process.partitions.get(&tp))
                };
                let Some(leader) = p.leader.as_ref().and_then(partition_of) else {
                    return false;
                };
                let end = leader.log_end_offset();
                matches!(leader.current_role(), Role::Leader(_))
                    && leader.high_watermark() == end
                    && p.isr.len() == p.replicas.len()
                    && p.replicas.iter().all(|r| {
                        partition_of(r).is_some_and(|replica| {
                            replica.log_end_offset() == end && replica.high_watermark() == end
                        })
                    })
            })
        })
    }

    /// Each partition's leader, ISR, and log ends and high watermarks per replica.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for topic in self.controller.image.topics.values() {
            for p in &topic.partitions {
                let tp = (topic.name.clone(), p.partition.0);
                let replicas: Vec<String> = p
                    .replicas
                    .iter()
                    .map(|r| {
                        match self.brokers[r]
                            .process
                            .as_ref()
                            .and_then(|process| process.partitions.get(&tp))
                        {
                            Some(partition) => format!(
                                "{r}:leo{}/hw{}/d{}",
                                partition.log_end_offset(),
                                partition.high_watermark(),
                                partition.durable_offset()
                            ),
                            None => format!("{r}:closed"),
                        }
                    })
                    .collect();
                parts.push(format!(
                    "{}-{} leader {:?} epoch {} isr {:?} [{}]",
                    tp.0,
                    tp.1,
                    p.leader.map(|l| l.0),
                    p.leader_epoch,
                    p.isr.iter().map(|b| b.0).collect::<Vec<_>>(),
                    replicas.join(" ")
                ));
            }
        }
        parts.join("; ")
    }
}
