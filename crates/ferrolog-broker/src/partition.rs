//! One partition replica on this broker: its log, its role (leader or follower), its high
//! watermark, and the group-commit flusher that makes appends durable.
//!
//! Durability and visibility are tied together: the high watermark (the end of what
//! consumers may read) never passes what is durable on every in-sync replica. The leader
//! counts itself at its durable end (with the `EveryAppend` flush policy, what an fsync
//! covers) and each follower at the offset its last fetch started from (followers fsync
//! before fetching again). Concurrent producers share one fsync because the flusher syncs
//! whatever the log holds when it starts, while appends carry on beside it (group commit).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferrolog_log::{
    AppendInfo, FlushPolicy, LeaderEpoch, Log, LogConfig, Offset, ReadResult, RecentBatchBudget,
};
use ferrolog_metadata::{BrokerId, PartitionId, PartitionImage};
use ferrolog_proto::v1::Acks;
use tokio::sync::{Notify, watch};

use crate::BrokerError;
use crate::metrics::BrokerMetrics;
use crate::replica::{LeaderState, Role, role_from_image};

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
/// leader, `end_offset`, to which the follower truncates (KIP-320).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub epoch: i32,
    pub end_offset: Offset,
}

const OPEN: u8 = 0;
const DELETED: u8 = 1;
const SHUT_DOWN: u8 = 2;
/// Deleted here because the partition moved to other brokers (a reassignment): requests
/// still waiting are told NOT_LEADER, so clients look up the new replicas and retry.
const MOVED_AWAY: u8 = 3;

/// A partition replica led by this broker.
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
    /// Wakes the flusher after appends.
    dirty: Notify,
    /// One of the `OPEN`, `DELETED`, `SHUT_DOWN`, `MOVED_AWAY` states; set under the log's write lock so
    /// no append or upkeep that saw `OPEN` can still be writing after `close`/`delete`.
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
}

impl Partition {
    /// Opens the partition's log (running recovery) and starts its flusher.
    pub fn open(
        topic: &str,
        id: PartitionId,
        topic_id: &str,
        me: BrokerId,
        dir: &std::path::Path,
        config: LogConfig,
        shared: PartitionShared,
    ) -> Result<Arc<Self>, BrokerError> {
        let log = Log::open(dir, config)?;
        // Everything that survived recovery is on disk; what is committed is what the last
        // checkpoint says until the leader (or, leading, the ISR) says more.
        let durable = log.log_end_offset();
        let high_watermark = log.high_watermark();
        let partition = Arc::new(Self {
            topic: topic.to_owned(),
            id,
            topic_id: topic_id.to_owned(),
            me,
            log: RwLock::new(log),
            progress: watch::Sender::new(Progress {
                high_watermark,
                durable,
                generation: 0,
                storage_failed: false,
            }),
            appended: watch::Sender::new(durable),
            role: Mutex::new(Role::Follower {
                leader: None,
                leader_epoch: -1,
            }),
            min_insync: AtomicUsize::new(1),
            dirty: Notify::new(),
            state: AtomicU8::new(OPEN),
            metrics: shared.metrics,
            recent_budget: shared.recent_budget,
        });
        tokio::spawn(Arc::clone(&partition).run_flusher());
        Ok(partition)
    }

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

    /// A snapshot of this replica's role.
    pub fn current_role(&self) -> Role {
        self.role().clone()
    }

    pub fn generation(&self) -> u64 {
        self.progress.borrow().generation
    }

    /// Takes the role the image gives this broker. Returns what a fetcher needs when the
    /// broker just became (or re-became, at a new epoch) a follower with a known leader.
    pub fn apply_assignment(
        &self,
        image: &PartitionImage,
        min_insync: usize,
    ) -> Result<Option<FollowerAssignment>, BrokerError> {
        self.min_insync.store(
            min_insync.clamp(1, image.replicas.len().max(1)),
            Ordering::Release,
        );
        let now = Instant::now();
        // Lock order everywhere: the log, then the role.
        let mut log = self.log_write();
        let mut role = self.role();
        let same_leadership = role.leader_epoch() == image.leader_epoch
            && match &*role {
                Role::Leader(_) => image.leader == Some(self.me),
                Role::Follower { leader, .. } => *leader == image.leader,
            };
        if same_leadership {
            if let Role::Leader(state) = &mut *role {
                state.update_from(self.me, image, now);
                let end = state.isr_end(self.me, self.progress.borrow().durable);
                drop(role);
                drop(log);
                self.advance_high_watermark(end);
            }
            return Ok(None);
        }
        let next = role_from_image(self.me, image, now);
        if let Role::Leader(state) = &next {
            // Our own epoch starts at our log end: batches appended from here carry it, and
            // a follower asking where an older epoch ends is told where it stopped.
            if log.leader_epoch().0 < state.leader_epoch {
                let end = log.log_end_offset();
                log.assign_leader_epoch(LeaderEpoch(state.leader_epoch), end)?;
            }
        }
        // A leader's followers fetch what it just appended: keep that in memory for them.
        let has_followers = matches!(next, Role::Leader(_)) && image.replicas.len() > 1;
        log.keep_recent_batches(has_followers.then(|| Arc::clone(&self.recent_budget)));
        let assignment = match &next {
            Role::Follower {
                leader: Some(leader),
                leader_epoch,
            } if *leader != self.me => Some((*leader, *leader_epoch)),
            _ => None,
        };
        tracing::info!(topic = %self.topic, partition = %self.id, leader = ?image.leader,
            leader_epoch = image.leader_epoch, isr = ?image.isr,
            role = if matches!(next, Role::Leader(_)) { "leader" } else { "follower" },
            "partition role changed");
        *role = next;
        drop(role);
        drop(log);
        let mut generation = 0;
        self.progress.send_modify(|p| {
            p.generation += 1;
            generation = p.generation;
        });
        self.recompute_high_watermark();
        // Wake replica fetches parked on the old role.
        self.appended.send_modify(|_| {});
        Ok(assignment.map(|(leader, leader_epoch)| FollowerAssignment {
            leader,
            leader_epoch,
            generation,
        }))
    }

    /// As leader: moves the high watermark up to what every ISR member holds.
    fn recompute_high_watermark(&self) {
        let durable = self.progress.borrow().durable;
        let end = match &*self.role() {
            Role::Leader(state) => state.isr_end(self.me, durable),
            Role::Follower { .. } => return,
        };
        self.advance_high_watermark(end);
    }

    /// Records that everything below `end` is on this replica's disk.
    fn on_durable(&self, end: Offset) {
        self.progress.send_if_modified(|p| {
            let moved = end > p.durable;
            if moved {
                p.durable = end;
            }
            moved
        });
        self.recompute_high_watermark();
    }

    /// The leader's state, if this replica leads at `leader_epoch` (any epoch if `None`).
    fn leader_state(&self, leader_epoch: Option<i32>) -> Result<LeaderState, BrokerError> {
        match &*self.role() {
            Role::Leader(state) if leader_epoch.is_none_or(|e| e == state.leader_epoch) => {
                Ok(state.clone())
            }
            _ => Err(self.not_leader()),
        }
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
        self.state.load(Ordering::Acquire) != OPEN
    }

    fn check_open(&self) -> Result<(), BrokerError> {
        match self.state.load(Ordering::Acquire) {
            OPEN => {}
            DELETED => return Err(BrokerError::UnknownTopic(self.topic.clone())),
            MOVED_AWAY => return Err(self.not_leader()),
            _ => return Err(BrokerError::ShuttingDown),
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

    /// Appends one validated-on-append batch and returns once it is as durable as `wait`
    /// asks. On timeout the records may still become durable later: the producer retries
    /// and may then duplicate, never lose.
    pub async fn append(
        &self,
        batch: BytesMut,
        acks: Acks,
        timeout: Duration,
    ) -> Result<AppendInfo, BrokerError> {
        self.check_open()?;
        let (info, policy, generation) = {
            let mut log = self.log_write();
            self.check_open()?;
            // Under the log lock: a role change (which also takes it) cannot slip between
            // the leadership check and the append.
            let state = self.leader_state(None)?;
            let min_insync = self.min_insync.load(Ordering::Acquire);
            if acks == Acks::All && state.isr.len() < min_insync {
                return Err(BrokerError::NotEnoughReplicas {
                    topic: self.topic.clone(),
                    partition: self.id.0,
                    isr: state.isr.iter().map(|b| b.0).collect(),
                    min_insync,
                });
            }
            let info = log.append_owned_batch(batch, LeaderEpoch(state.leader_epoch), now_ms())?;
            (info, log.config().flush_policy, self.generation())
        };
        let end = info.last_offset.next();
        self.appended.send_replace(end);
        match policy {
            FlushPolicy::EveryAppend => self.dirty.notify_one(),
            // Data counts as durable before an fsync by the operator's choice.
            FlushPolicy::Interval { .. } | FlushPolicy::Os => self.on_durable(end),
        }
        match acks {
            Acks::None => {}
            Acks::Leader => self.wait_for(end, generation, timeout, false).await?,
            Acks::All | Acks::Unspecified => {
                self.wait_for(end, generation, timeout, true).await?;
                // The ISR may have shrunk below the minimum while we waited: the records
                // are committed, but on fewer replicas than promised (Kafka's
                // NOT_ENOUGH_REPLICAS_AFTER_APPEND). The producer retries, and may
                // duplicate, never lose.
                let isr = self.leader_state(None)?.isr;
                let min_insync = self.min_insync.load(Ordering::Acquire);
                if isr.len() < min_insync {
                    return Err(BrokerError::NotEnoughReplicas {
                        topic: self.topic.clone(),
                        partition: self.id.0,
                        isr: isr.iter().map(|b| b.0).collect(),
                        min_insync,
                    });
                }
            }
        }
        Ok(info)
    }

    /// Waits until `target` is durable here (`committed` false) or below the high
    /// watermark (`committed` true), while the leadership of `generation` lasts.
    async fn wait_for(
        &self,
        target: Offset,
        generation: u64,
        timeout: Duration,
        committed: bool,
    ) -> Result<(), BrokerError> {
        let reached_in = |p: &Progress| {
            if committed {
                p.high_watermark >= target
            } else {
                p.durable >= target
            }
        };
        let mut progress = self.progress.subscribe();
        let reached = progress.wait_for(|p| {
            reached_in(p) || p.generation != generation || p.storage_failed || self.is_closed()
        });
        match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(p)) if reached_in(&p) => Ok(()),
            Ok(Ok(p)) if p.generation != generation => Err(self.not_leader()),
            Ok(Ok(p)) if !p.storage_failed => self.check_open().and(Err(BrokerError::ShuttingDown)),
            Ok(_) => Err(BrokerError::StorageOffline {
                topic: self.topic.clone(),
                partition: self.id.0,
                reason: "fsync failed or the partition was closed".to_owned(),
            }),
            Err(_) => Err(BrokerError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
                waiting_for: if committed {
                    "the in-sync replicas to have the records"
                } else {
                    "the records to become durable"
                },
            }),
        }
    }

    /// Callers hold neither the log's lock nor the role's.
    fn advance_high_watermark(&self, to: Offset) {
        let moved = self.progress.send_if_modified(|p| {
            let moved = to > p.high_watermark;
            if moved {
                p.high_watermark = to;
            }
            moved
        });
        if moved {
            // Every in-sync follower has what lies below: nobody fetches it from memory.
            self.log_read().release_recent_below(to);
        }
    }

    /// Reads batches at `offset` below the high watermark, long-polling up to `max_wait`
    /// while nothing is available there yet.
    pub async fn fetch(
        &self,
        offset: Offset,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchOutcome, BrokerError> {
        let deadline = Instant::now() + max_wait;
        let mut progress = self.progress.subscribe();
        loop {
            self.check_open()?;
            let high_watermark = progress.borrow_and_update().high_watermark;
            let read = self.log_read().read(offset, max_bytes, high_watermark)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !read.batches.is_empty() || remaining.is_zero() {
                return Ok(FetchOutcome {
                    read,
                    high_watermark,
                });
            }
            match tokio::time::timeout(remaining, progress.changed()).await {
                Ok(Ok(())) => continue,
                // The partition closed or the wait ran out: answer with what there is.
                Ok(Err(_)) | Err(_) => {
                    let read = self.log_read().read(offset, max_bytes, high_watermark)?;
                    return Ok(FetchOutcome {
                        read,
                        high_watermark,
                    });
                }
            }
        }
    }

    /// Starts answering a follower's fetch (leader side): checks that the follower's log
    /// agrees with ours below `fetch_offset` and records its progress, which may move the
    /// high watermark. Returns where the follower must truncate if it does not agree.
    pub fn begin_replica_fetch(
        &self,
        follower: BrokerId,
        leader_epoch: i32,
        fetch_offset: Offset,
        durable_offset: Offset,
        last_fetched_epoch: i32,
    ) -> Result<Option<Divergence>, BrokerError> {
        self.check_open()?;
        let state = self.leader_state(Some(leader_epoch))?;
        if !state.replicas.contains(&follower) || follower == self.me {
            return Err(BrokerError::InvalidRequest(format!(
                "broker {follower} is not a follower of {}-{}",
                self.topic, self.id
            )));
        }
        {
            let log = self.log_read();
            let leader_end = log.log_end_offset();
            if let Some((epoch, end_offset)) =
                divergence(&log, fetch_offset, last_fetched_epoch, leader_end)
            {
                return Ok(Some(Divergence { epoch, end_offset }));
            }
            let mut role = self.role();
            match &mut *role {
                Role::Leader(state) if state.leader_epoch == leader_epoch => {
                    state.record_fetch(
                        follower,
                        fetch_offset,
                        durable_offset,
                        leader_end,
                        Instant::now(),
                    );
                }
                _ => return Err(self.not_leader()),
            }
        }
        self.recompute_high_watermark();
        Ok(None)
    }

    /// The batches a follower asked for, as they lie on disk, up to our log end (leader
    /// side, after `begin_replica_fetch`). Empty at the log end: the caller long-polls on
    /// `subscribe_appended`.
    pub fn read_for_follower(
        &self,
        leader_epoch: i32,
        fetch_offset: Offset,
        max_bytes: u32,
    ) -> Result<FetchOutcome, BrokerError> {
        self.check_open()?;
        self.leader_state(Some(leader_epoch))?;
        let read = {
            let log = self.log_read();
            let end = log.log_end_offset();
            log.read(fetch_offset, max_bytes, end)?
        };
        Ok(FetchOutcome {
            read,
            high_watermark: self.high_watermark(),
        })
    }

    /// Changes on every append and every role change: what a replica fetch parked at the
    /// log end waits for.
    pub fn subscribe_appended(&self) -> watch::Receiver<Offset> {
        self.appended.subscribe()
    }

    /// Where this replica's fsynced log ends.
    pub fn durable_offset(&self) -> Offset {
        self.progress.borrow().durable
    }

    /// Waits (bounded) until everything below `target` is fsynced here, or the role of
    /// `generation` ends (a truncation may then leave `target` beyond the log).
    pub async fn wait_durable(&self, target: Offset, generation: u64, timeout: Duration) {
        let mut progress = self.progress.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            progress.wait_for(|p| {
                p.durable >= target
                    || p.generation != generation
                    || p.storage_failed
                    || self.is_closed()
            }),
        )
        .await;
    }

    /// This follower's position: its log end offset and the epoch of its last batch.
    pub fn follower_position(&self) -> (Offset, i32) {
        let log = self.log_read();
        let epoch = log.last_batch_epoch().map_or(-1, |e| e.0);
        (log.log_end_offset(), epoch)
    }

    /// Appends batches fetched from the leader, keeping their offsets and epochs, starts
    /// making them durable (the flusher's next group commit; the follower reports the
    /// durable end with its next fetch), and takes the leader's high watermark as far as
    /// this log reaches. Returns the new log end. `generation` guards against a role change
    /// during the fetch.
    pub fn append_from_leader(
        &self,
        batches: &Bytes,
        leader_high_watermark: Offset,
        generation: u64,
    ) -> Result<Offset, BrokerError> {
        self.check_open()?;
        let (end, policy) = {
            let mut log = self.log_write();
            self.check_open()?;
            if self.generation() != generation {
                return Err(self.not_leader());
            }
            let end = log.append_replicated_batches(batches, now_ms())?;
            (end, log.config().flush_policy)
        };
        self.appended.send_replace(end);
        match policy {
            FlushPolicy::EveryAppend => self.dirty.notify_one(),
            FlushPolicy::Interval { .. } | FlushPolicy::Os => self.on_durable(end),
        }
        self.advance_high_watermark(leader_high_watermark.min(end));
        Ok(end)
    }

    /// Takes the leader's high watermark when a fetch brought no batches.
    pub fn learn_high_watermark(&self, leader_high_watermark: Offset, generation: u64) {
        let log = self.log_read();
        // Under the log lock, like every follower change: a role change takes it too, so
        // an answer from a leadership that has ended is never applied.
        if self.generation() != generation {
            return;
        }
        let end = log.log_end_offset();
        drop(log);
        self.advance_high_watermark(leader_high_watermark.min(end));
    }

    /// Whether an fsync failed here: the replica acknowledges and replicates nothing more.
    pub fn storage_failed(&self) -> bool {
        self.progress.borrow().storage_failed
    }

    /// Removes this follower's divergent suffix: everything at and above `offset`.
    pub fn truncate_to(&self, offset: Offset, generation: u64) -> Result<(), BrokerError> {
        let mut log = self.log_write();
        self.check_open()?;
        if self.generation() != generation {
            return Err(self.not_leader());
        }
        log.truncate_to(offset)?;
        let end = log.log_end_offset();
        drop(log);
        self.progress.send_modify(|p| {
            p.durable = p.durable.min(end);
            p.high_watermark = p.high_watermark.min(end);
        });
        self.appended.send_replace(end);
        tracing::warn!(topic = %self.topic, partition = %self.id, log_end_offset = %end,
            "truncated a suffix the leader does not have");
        Ok(())
    }

    /// As follower: empties the log to restart at the leader's log start, when this log ends
    /// below it (see `Log::truncate_fully_and_start_at`).
    pub fn restart_at(&self, offset: Offset, generation: u64) -> Result<(), BrokerError> {
        let mut log = self.log_write();
        self.check_open()?;
        if self.generation() != generation {
            return Err(self.not_leader());
        }
        if log.log_end_offset() >= offset {
            return Ok(());
        }
        log.truncate_fully_and_start_at(offset)?;
        drop(log);
        self.progress.send_modify(|p| {
            p.durable = offset;
            p.high_watermark = offset;
        });
        self.appended.send_replace(offset);
        Ok(())
    }

    /// As leader: the ISR change this replica wants now, with the epochs to send it at.
    pub fn wanted_isr_change(&self, max_lag: Duration) -> Option<(LeaderState, Vec<BrokerId>)> {
        let high_watermark = self.high_watermark();
        let epoch_start = {
            let log = self.log_read();
            let epoch = log.leader_epoch();
            log.end_offset_for_epoch(LeaderEpoch(epoch.0 - 1))
                .map_or(Offset(0), |(_, end)| end)
        };
        let mut role = self.role();
        let Role::Leader(state) = &mut *role else {
            return None;
        };
        let now = Instant::now();
        let wanted = state.wanted_isr(self.me, high_watermark, epoch_start, max_lag, now)?;
        if let Some((epoch, at)) = state.isr_change_requested
            && epoch == state.partition_epoch
            && now.duration_since(at) < Duration::from_secs(5)
        {
            return None;
        }
        state.isr_change_requested = Some((state.partition_epoch, now));
        Some((state.clone(), wanted))
    }

    /// First offset at or after `timestamp_ms` that consumers may read, if any.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, BrokerError> {
        let high_watermark = self.high_watermark();
        let found = self.log_read().offset_for_timestamp(timestamp_ms)?;
        Ok(found.filter(|o| *o < high_watermark))
    }

    /// Periodic upkeep: time-based roll, retention, and a high-watermark checkpoint.
    pub fn maintain(&self) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut log = self.log_write();
        self.check_open()?;
        log.roll_if_due(now_ms())?;
        // A roll fsyncs the old segment: what it covered is durable.
        let flushed =
            (log.config().flush_policy == FlushPolicy::EveryAppend).then(|| log.flushed_offset());
        let high_watermark = self.high_watermark();
        let outcome = log.enforce_retention(now_ms(), high_watermark)?;
        if outcome.deleted_segments > 0 {
            tracing::info!(topic = %self.topic, partition = %self.id,
                segments = outcome.deleted_segments, bytes = outcome.deleted_bytes,
                log_start_offset = %outcome.log_start_offset, "retention deleted segments");
        }
        if log.high_watermark() != high_watermark {
            log.checkpoint_high_watermark(high_watermark)?;
        }
        drop(log);
        if let Some(flushed) = flushed {
            self.on_durable(flushed);
        }
        Ok(())
    }

    /// Makes everything durable and stops the partition (clean shutdown). Produces that
    /// are waiting are answered: those whose records made it into the final flush succeed.
    pub fn close(&self) -> Result<(), BrokerError> {
        let flushed = {
            let mut log = self.log_write();
            self.state.store(SHUT_DOWN, Ordering::Release);
            log.keep_recent_batches(None);
            log.flush().map(|()| log.log_end_offset())
        };
        if let Ok(end) = flushed {
            self.on_durable(end);
            // Only what is committed: a suffix the ISR never had must not look committed
            // after a restart.
            let high_watermark = self.high_watermark();
            if let Err(error) = self.log_write().checkpoint_high_watermark(high_watermark) {
                tracing::warn!(topic = %self.topic, partition = %self.id, %error,
                    "cannot checkpoint the high watermark at shutdown");
            }
        }
        self.wake_all();
        flushed.map(|_| ()).map_err(BrokerError::from)
    }

    /// Closes the partition and removes its data.
    pub fn delete(self: Arc<Self>) -> Result<(), BrokerError> {
        self.delete_as(DELETED)
    }

    /// Deletes this replica because the partition moved to other brokers.
    pub fn delete_moved_away(self: Arc<Self>) -> Result<(), BrokerError> {
        self.delete_as(MOVED_AWAY)
    }

    fn delete_as(self: Arc<Self>, state: u8) -> Result<(), BrokerError> {
        let dir = {
            let mut log = self.log_write();
            self.state.store(state, Ordering::Release);
            log.keep_recent_batches(None);
            log.dir().to_path_buf()
        };
        self.wake_all();
        std::fs::remove_dir_all(&dir).map_err(|source| {
            BrokerError::Log(ferrolog_log::LogError::Io {
                context: "delete partition directory",
                source,
            })
        })?;
        tracing::info!(topic = %self.topic, partition = %self.id, "partition deleted");
        Ok(())
    }

    /// Wakes the flusher (which then exits) and every waiting produce and fetch.
    fn wake_all(&self) {
        self.dirty.notify_one();
        self.progress.send_modify(|_| {});
    }

    /// Group commit: each round fsyncs everything appended so far, outside the log lock, so
    /// appends that arrive during an fsync are covered by the next one.
    async fn run_flusher(self: Arc<Self>) {
        loop {
            let interval = match self.log_read().config().flush_policy {
                FlushPolicy::Interval { interval_ms } => Some(Duration::from_millis(interval_ms)),
                _ => None,
            };
            match interval {
                Some(interval) => tokio::time::sleep(interval).await,
                None => self.dirty.notified().await,
            }
            if self.is_closed() {
                return;
            }
            let (handle, flushed) = {
                let log = self.log_read();
                (log.sync_handle(), log.flushed_offset())
            };
            let end = handle.end_offset();
            if end <= flushed {
                // A segment roll already made it durable.
                self.on_durable(flushed);
                continue;
            }
            let started = Instant::now();
            let syncing = handle.clone();
            let synced = tokio::task::spawn_blocking(move || syncing.sync()).await;
            self.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            match synced {
                Ok(Ok(())) => {
                    // A truncation during the fsync makes the handle stale; its offsets are
                    // then not covered and the next round syncs again.
                    if self.log_write().mark_synced(&handle) {
                        self.on_durable(end);
                    } else {
                        // What the log holds now is not covered (a follower truncated and
                        // may have appended again): sync once more rather than wait for
                        // an append that may not come.
                        self.dirty.notify_one();
                    }
                }
                Ok(Err(error)) => {
                    // After a failed fsync the page cache may have dropped the data: the only
                    // safe answer is to stop acknowledging, as Kafka takes a log dir offline.
                    tracing::error!(topic = %self.topic, partition = %self.id, %error,
                        "fsync failed; partition goes offline");
                    self.progress.send_modify(|p| p.storage_failed = true);
                    // Its high watermark never moves again: nothing kept would be released.
                    self.log_write().keep_recent_batches(None);
                    return;
                }
                Err(join_error) => {
                    tracing::error!(%join_error, "flusher task failed");
                    self.progress.send_modify(|p| p.storage_failed = true);
                    return;
                }
            }
        }
    }
}

/// Where a follower's log stops agreeing with `log` (the leader's), given where it ends and
/// the epoch of its last batch (KIP-320): `None` when it agrees.
fn divergence(
    log: &Log,
    fetch_offset: Offset,
    last_fetched_epoch: i32,
    leader_end: Offset,
) -> Option<(i32, Offset)> {
    // An empty follower log (at 0, or restarted at our log start) agrees with anything.
    if fetch_offset == Offset(0)
        || (last_fetched_epoch < 0 && fetch_offset == log.log_start_offset())
    {
        return None;
    }
    if last_fetched_epoch < 0 {
        // Batches without an epoch cannot be checked; be safe and start over from ours.
        return Some((-1, log.log_start_offset()));
    }
    match log.end_offset_for_epoch(LeaderEpoch(last_fetched_epoch)) {
        Some((epoch, end)) if epoch.0 == last_fetched_epoch && fetch_offset <= end => None,
        Some((epoch, end)) => Some((epoch.0, end.min(leader_end))),
        None => Some((-1, log.log_start_offset())),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
