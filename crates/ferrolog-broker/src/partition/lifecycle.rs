//! A partition's life on this broker: opening its log, taking the role each image gives it,
//! periodic upkeep, and closing or deleting it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use ferrolog_log::{FlushPolicy, LeaderEpoch, Log, LogConfig};
use ferrolog_metadata::{BrokerId, PartitionId, PartitionImage};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{FollowerAssignment, Partition, PartitionShared, PartitionState, Progress, now_ms};
use crate::BrokerError;
use crate::replica::{Role, role_from_image};

impl Partition {
    /// Opens the partition's log (running recovery) and starts its flusher. It starts as a
    /// follower of no leader, until `apply_assignment` gives it its role.
    pub fn open(
        topic: &str,
        id: PartitionId,
        topic_id: &str,
        me: BrokerId,
        dir: &std::path::Path,
        config: LogConfig,
        shared: PartitionShared,
    ) -> Result<Arc<Self>, BrokerError> {
        let partition = Self::open_without_flusher(topic, id, topic_id, me, dir, config, shared)?;
        tokio::spawn(Arc::clone(&partition).run_flusher());
        Ok(partition)
    }

    /// `open` without the flusher task: nothing becomes durable until the caller runs
    /// group-commit rounds itself (`begin_flush`, `FlushRound::sync`, `finish_flush`).
    /// For the data-path simulation (`crates/ferrolog-sim`), which decides when each fsync
    /// happens and what a crash loses, and needs no runtime to open a partition.
    pub fn open_without_flusher(
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
            state: AtomicU8::new(PartitionState::Open.into()),
            metrics: shared.metrics,
            recent_budget: shared.recent_budget,
        });
        Ok(partition)
    }

    /// Takes the role the image gives this broker. Returns what a fetcher needs when the
    /// broker just became (or re-became, at a new epoch) a follower with a known leader.
    /// A newer image of the same leadership (ISR or replicas changed) updates the leader's
    /// state, which may move the high watermark.
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

    /// Periodic upkeep: time-based roll, retention, idempotent producers past
    /// `producer.id.expiration.ms`, and a high-watermark checkpoint.
    pub fn maintain(&self) -> Result<(), BrokerError> {
        self.check_open()?;
        let mut log = self.log_write();
        self.check_open()?;
        let rolled = log.roll_if_due(now_ms());
        self.offline_on_sync_failure(&mut log, rolled)?;
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
        let expired = log.expire_producers(now_ms());
        if expired > 0 {
            tracing::info!(topic = %self.topic, partition = %self.id, producers = expired,
                "expired idle producers' state");
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
    /// are waiting are answered: those whose wait the final flush ends (durable here, or,
    /// with acks=all, below the high watermark it moved) succeed, the others are told the
    /// broker is shutting down.
    pub fn close(&self) -> Result<(), BrokerError> {
        let flushed = {
            let mut log = self.log_write();
            self.set_state(PartitionState::ShutDown);
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
        self.delete_as(PartitionState::Deleted)
    }

    /// Deletes this replica because the partition moved to other brokers.
    pub fn delete_moved_away(self: Arc<Self>) -> Result<(), BrokerError> {
        self.delete_as(PartitionState::MovedAway)
    }

    fn delete_as(self: Arc<Self>, state: PartitionState) -> Result<(), BrokerError> {
        let dir = {
            let mut log = self.log_write();
            self.set_state(state);
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
}
