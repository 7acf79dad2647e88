//! One partition replica on this broker: its log, its role (leader or follower), its high
//! watermark, and the group-commit flusher that makes appends durable.
//!
//! Durability and visibility are tied together: the high watermark (the end of what
//! consumers may read) never passes what is durable on every in-sync replica. The leader
//! counts itself at its durable end (with the `EveryAppend` flush policy, what an fsync
//! covers) and each follower at the durable end its last fetch reported, no further than
//! where that fetch started (followers fetch on while their fsyncs run, and report what
//! those covered with a later fetch). Concurrent producers share one fsync because the
//! flusher syncs whatever the log holds when it starts, while appends carry on beside it
//! (group commit).
//!
//! The type and what every path reads are here; each path has its file:
//! - `leader`: produce (acks), the leader side of replica fetches, the high watermark,
//!   and the ISR changes the leader wants;
//! - `follower`: appending what the leader sent, truncation and restarts;
//! - `divergence`: where a follower's log stops agreeing with the leader's (KIP-101/320);
//! - `flusher`: the group commit;
//! - `lifecycle`: opening, role changes, upkeep, closing and deleting.

mod cleaning;
mod divergence;
mod flusher;

pub use flusher::FlushRound;
mod follower;
mod leader;
mod lifecycle;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ferrolog_log::{LeaderEpoch, Log, LogConfig, Offset, ReadResult, RecentBatchBudget};
use ferrolog_metadata::{BrokerId, PartitionId};
use tokio::sync::{Notify, watch};

use crate::BrokerError;
use crate::metrics::BrokerMetrics;
use crate::replica::Role;

/// How far a partition's data has come: what consumers may read, what is on this
/// replica's disk, which role generation it is in, and whether the log has failed (then
/// nothing more is ever acknowledged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub high_watermark: Offset,
    pub durable: Offset,
    /// Bumped on every role change: a produce waiting for the high watermark under one
    /// leadership gives up (NOT_LEADER) when it ends.
    pub generation: u64,
    pub storage_failed: bool,
}

/// What a follower's fetcher needs to start: whom to fetch from, at which epoch, and the
/// role generation it belongs to (it stops when that changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerAssignment {
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub generation: u64,
}

/// Where a follower's log stops agreeing with the leader's: the end of `epoch` on the
/// leader, `end_offset`. The follower truncates there, or lower if its own log says
/// `epoch` ends lower (KIP-320).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub epoch: i32,
    pub end_offset: Offset,
}

/// Whether a partition still serves, and if not, what a request that finds it closed is
/// told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum PartitionState {
    Open = 0,
    /// Deleted with its topic: requests are told UNKNOWN_TOPIC.
    Deleted = 1,
    /// Closed for the broker's shutdown: requests are told SHUTTING_DOWN.
    ShutDown = 2,
    /// Deleted here because the partition moved to other brokers (a reassignment): requests
    /// still waiting are told NOT_LEADER, so clients look up the new replicas and retry.
    MovedAway = 3,
}

impl From<PartitionState> for u8 {
    fn from(state: PartitionState) -> u8 {
        state as u8
    }
}

impl From<u8> for PartitionState {
    /// Only `From<PartitionState>` makes the values stored; anything else reads as shut
    /// down, which refuses every request.
    fn from(value: u8) -> Self {
        match value {
            0 => Self::Open,
            1 => Self::Deleted,
            3 => Self::MovedAway,
            _ => Self::ShutDown,
        }
    }
}

/// A partition replica on this broker, leader or follower.
pub struct Partition {
    topic: String,
    id: PartitionId,
    topic_id: String,
    /// This broker.
    me: BrokerId,
    log: RwLock<Log>,
    progress: watch::Sender<Progress>,
    /// The log end offset after every append: replica fetches waiting at the end wake on it.
    appended: watch::Sender<Offset>,
    role: Mutex<Role>,
    /// Effective `min.insync.replicas` (capped at the replication factor).
    min_insync: AtomicUsize,
    /// Wakes the flusher: after appends, to sync again after a truncation, and to stop.
    dirty: Notify,
    /// A `PartitionState`, set under the log's write lock so no append or upkeep that saw
    /// `Open` can still be writing after `close`/`delete`.
    state: AtomicU8,
    metrics: Arc<BrokerMetrics>,
    /// What the broker's partitions may keep of their newest batches for followers.
    recent_budget: Arc<RecentBatchBudget>,
}

/// What every partition of a broker shares.
#[derive(Clone)]
pub struct PartitionShared {
    pub metrics: Arc<BrokerMetrics>,
    /// What the partitions may keep of their newest batches for followers, together.
    pub recent_budget: Arc<RecentBatchBudget>,
}

/// The result of a fetch: whole record batches below the high watermark.
#[derive(Debug)]
pub struct FetchOutcome {
    pub read: ReadResult,
    pub high_watermark: Offset,
    /// The first offset of a transaction still open, or the high watermark.
    pub last_stable_offset: Offset,
    /// Where the next fetch starts: past every batch read, including batches a
    /// read_committed fetch left out of `read` (aborted ones, markers).
    pub next_offset: Offset,
}

impl Partition {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub fn topic_id(&self) -> &str {
        &self.topic_id
    }

    fn log_read(&self) -> RwLockReadGuard<'_, Log> {
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }

    fn log_write(&self) -> RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }

    fn role(&self) -> MutexGuard<'_, Role> {
        self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> PartitionState {
        PartitionState::from(self.state.load(Ordering::Acquire))
    }

    /// Callers hold the log's write lock (see `state`).
    fn set_state(&self, state: PartitionState) {
        self.state.store(state.into(), Ordering::Release);
    }

    /// A snapshot of this replica's role.
    pub fn current_role(&self) -> Role {
        self.role().clone()
    }

    pub fn generation(&self) -> u64 {
        self.progress.borrow().generation
    }

    fn not_leader(&self) -> BrokerError {
        BrokerError::NotLeader {
            topic: self.topic.clone(),
            partition: self.id.0,
            leader: None,
        }
    }

    pub fn high_watermark(&self) -> Offset {
        self.progress.borrow().high_watermark
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log_read().log_start_offset()
    }

    pub fn log_end_offset(&self) -> Offset {
        self.log_read().log_end_offset()
    }

    pub fn size_bytes(&self) -> u64 {
        self.log_read().size_bytes()
    }

    /// As leader: deletes every record before `before` (`None`: the high watermark) by
    /// moving the log start offset (Kafka's DeleteRecords). Returns the new log start.
    pub fn delete_records_before(&self, before: Option<Offset>) -> Result<Offset, BrokerError> {
        let mut log = self.log_write();
        self.check_open()?;
        let high_watermark = self.high_watermark();
        log.advance_log_start(before.unwrap_or(high_watermark), high_watermark)?;
        let start = log.log_start_offset();
        drop(log);
        tracing::info!(topic = %self.topic, partition = %self.id, log_start_offset = %start,
            "deleted records by request");
        Ok(start)
    }

    /// As follower: takes the leader's log start offset, as far as this replica's high
    /// watermark, so records the leader deleted are deleted here too and stay deleted when
    /// this replica leads.
    pub fn follow_log_start(&self, leader_log_start: Offset, generation: u64) {
        if leader_log_start <= self.log_start_offset() {
            return;
        }
        let mut log = self.log_write();
        if self.generation() != generation || self.is_closed() {
            return;
        }
        let target = leader_log_start.min(self.high_watermark());
        if let Err(error) = log.advance_log_start(target, self.high_watermark()) {
            tracing::warn!(topic = %self.topic, partition = %self.id, %error,
                "could not take the leader's log start offset");
        }
    }

    pub fn set_config(&self, config: LogConfig) {
        self.log_write().set_config(config);
    }

    /// This log's end offset for `epoch` (KIP-101), if it knows the epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<Offset> {
        if epoch < 0 {
            return Some(self.log_start_offset());
        }
        self.log_read()
            .end_offset_for_epoch(LeaderEpoch(epoch))
            .map(|(_, end)| end)
    }

    pub fn is_closed(&self) -> bool {
        self.state() != PartitionState::Open
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        match self.state() {
            PartitionState::Open => {}
            PartitionState::Deleted => return Err(BrokerError::UnknownTopic(self.topic.clone())),
            PartitionState::MovedAway => return Err(self.not_leader()),
            PartitionState::ShutDown => return Err(BrokerError::ShuttingDown),
        }
        if self.progress.borrow().storage_failed {
            return Err(BrokerError::StorageOffline {
                topic: self.topic.clone(),
                partition: self.id.0,
                reason: "an earlier fsync failed".to_owned(),
            });
        }
        Ok(())
    }

    /// Where this replica's durable log ends: fsynced, or, under a flush policy other than
    /// `EveryAppend`, appended.
    pub fn durable_offset(&self) -> Offset {
        self.progress.borrow().durable
    }

    /// Whether an fsync failed here: the replica acknowledges and replicates nothing more.
    pub fn storage_failed(&self) -> bool {
        self.progress.borrow().storage_failed
    }

    /// Reads batches at `offset` below the high watermark, long-polling up to `max_wait`
    /// while nothing is available there yet.
    pub async fn fetch(
        &self,
        offset: Offset,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchOutcome, BrokerError> {
        self.fetch_isolated(offset, max_bytes, max_wait, false)
            .await
    }

    /// `fetch`, and with `read_committed` as Kafka's isolation level of that name: only
    /// below the last stable offset, without the batches of aborted transactions and
    /// without transaction markers.
    pub async fn fetch_isolated(
        &self,
        offset: Offset,
        max_bytes: u32,
        max_wait: Duration,
        read_committed: bool,
    ) -> Result<FetchOutcome, BrokerError> {
        let deadline = Instant::now() + max_wait;
        let mut progress = self.progress.subscribe();
        loop {
            self.check_open()?;
            let high_watermark = progress.borrow_and_update().high_watermark;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = self.read_isolated(offset, max_bytes, high_watermark, read_committed)?;
            if outcome.next_offset > offset || remaining.is_zero() {
                return Ok(outcome);
            }
            match tokio::time::timeout(remaining, progress.changed()).await {
                Ok(Ok(())) => continue,
                // The partition closed or the wait ran out: answer with what there is.
                Ok(Err(_)) | Err(_) => {
                    let high_watermark = progress.borrow().high_watermark;
                    return self.read_isolated(offset, max_bytes, high_watermark, read_committed);
                }
            }
        }
    }

    /// One read below the high watermark, or below the last stable offset and filtered for
    /// `read_committed`.
    fn read_isolated(
        &self,
        offset: Offset,
        max_bytes: u32,
        high_watermark: Offset,
        read_committed: bool,
    ) -> Result<FetchOutcome, BrokerError> {
        let log = self.log_read();
        let last_stable_offset = log.last_stable_offset(high_watermark);
        let upper = if read_committed {
            last_stable_offset
        } else {
            high_watermark
        };
        let mut read = log.read(offset, max_bytes, upper)?;
        let next_offset = crate::service::next_offset(&read.batches, offset);
        if read_committed && !read.batches.is_empty() {
            let aborted = log.aborted_transactions(offset, next_offset)?;
            drop(log);
            read.batches = ferrolog_log::filter_read_committed(&read.batches, aborted)?.freeze();
        }
        Ok(FetchOutcome {
            read,
            high_watermark,
            last_stable_offset,
            next_offset,
        })
    }

    /// The producers this replica knows, and its last stable offset (DescribeProducers).
    pub fn producers(&self) -> (Vec<ferrolog_log::ProducerSnapshotEntry>, Offset) {
        let high_watermark = self.high_watermark();
        let log = self.log_read();
        (log.producers(), log.last_stable_offset(high_watermark))
    }

    /// First offset at or after `timestamp_ms` that consumers may read, if any.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, BrokerError> {
        let high_watermark = self.high_watermark();
        let found = self.log_read().offset_for_timestamp(timestamp_ms)?;
        Ok(found.filter(|o| *o < high_watermark))
    }
}

/// Wall-clock milliseconds since the Unix epoch, for batch timestamps and segment ages.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
