//! The leader's path: produce with its acks, the leader side of a replica fetch, the high
//! watermark, and the ISR changes the leader wants.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use ferrolog_log::{AppendInfo, FlushPolicy, LeaderEpoch, Offset};
use ferrolog_metadata::BrokerId;
use ferrolog_proto::v1::Acks;
use tokio::sync::watch;
use tokio::time::Instant;

use super::divergence::divergence;
use super::{Divergence, FetchOutcome, Partition, Progress, now_ms};
use crate::BrokerError;
use crate::replica::{LeaderState, Role};

/// How long a requested ISR change keeps the leader from asking again at the same partition
/// epoch, so that the ISR checks (every quarter lag period, 2.5 s by default) do not send
/// the controller the same request while the first is in flight. A change the controller
/// commits moves the partition epoch, which ends the wait at once; a request refused or
/// lost (the controller changing, say) is sent again after this.
const ISR_CHANGE_REQUEST_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long an idempotent producer's batch that arrived ahead of its predecessor waits for
/// it. gRPC serves the requests of one connection concurrently, so with several in flight a
/// later batch can reach the log first; Kafka's broker reads one request per connection at a
/// time and never sees this. Past the wait the batch is refused OUT_OF_ORDER_SEQUENCE_NUMBER
/// and the producer retries it behind the missing one.
const SEQUENCE_GAP_WAIT: Duration = Duration::from_millis(200);

impl Partition {
    /// Appends one producer batch (validated by the log on append) and returns once it is
    /// as safe as `acks` asks: at once (`None`), durable here (`Leader`), or below the high
    /// watermark (`All`). On timeout the records may still become durable later: the
    /// producer retries and may then duplicate, never lose.
    pub async fn append(
        &self,
        batch: BytesMut,
        acks: Acks,
        timeout: Duration,
    ) -> Result<AppendInfo, BrokerError> {
        self.check_open()?;
        self.wait_for_predecessor(&batch).await;
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
            let appended = log.append_owned_batch(batch, LeaderEpoch(state.leader_epoch), now_ms());
            let info = self.offline_on_sync_failure(&mut log, appended)?;
            (info, log.config().flush_policy, self.generation())
        };
        let end = info.last_offset.next();
        // A duplicate (an idempotent producer's retry) wrote nothing: the log end stays, and
        // the wait below covers the original batch.
        if !info.duplicate {
            self.appended.send_replace(end);
        }
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

    /// Waits (at most `SEQUENCE_GAP_WAIT`) while `batch` is an idempotent producer's batch
    /// whose sequence runs ahead of what the log has from that producer: its predecessor is
    /// most likely a request of the same producer a moment behind it. The append that follows
    /// checks again and refuses the batch if the gap is still there.
    async fn wait_for_predecessor(&self, batch: &[u8]) {
        // A batch without a producer id (not idempotent) has no predecessor: no log lock.
        if ferrolog_log::BatchHeader::parse(batch).is_ok_and(|h| h.producer_id < 0) {
            return;
        }
        let deadline = Instant::now() + SEQUENCE_GAP_WAIT;
        loop {
            let mut appended = self.appended.subscribe();
            let verdict = self.log_read().check_producer_batch(batch);
            match verdict {
                Err(ferrolog_log::LogError::OutOfOrderSequence { expected, got, .. })
                    if got > expected =>
                {
                    match tokio::time::timeout_at(deadline, appended.changed()).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
                _ => return,
            }
        }
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

    /// The leader's state, if this replica leads at `leader_epoch` (any epoch if `None`).
    fn leader_state(&self, leader_epoch: Option<i32>) -> Result<LeaderState, BrokerError> {
        match &*self.role() {
            Role::Leader(state) if leader_epoch.is_none_or(|e| e == state.leader_epoch) => {
                Ok(state.clone())
            }
            Role::Leader(state) => Err(BrokerError::LeaderEpochMismatch {
                topic: self.topic.clone(),
                partition: self.id.0,
                asked: leader_epoch.unwrap_or_default(),
                current: state.leader_epoch,
            }),
            _ => Err(self.not_leader()),
        }
    }

    /// Records that everything below `end` is on this replica's disk, and, leading, moves
    /// the high watermark as far as that lets it.
    pub(super) fn on_durable(&self, end: Offset) {
        self.progress.send_if_modified(|p| {
            let moved = end > p.durable;
            if moved {
                p.durable = end;
            }
            moved
        });
        self.recompute_high_watermark();
    }

    /// As leader: moves the high watermark up to what every ISR member holds.
    pub(super) fn recompute_high_watermark(&self) {
        let durable = self.progress.borrow().durable;
        let end = match &*self.role() {
            Role::Leader(state) => state.isr_end(self.me, durable),
            Role::Follower { .. } => return,
        };
        self.advance_high_watermark(end);
    }

    /// Moves the high watermark up to `to`, never down, and lets go of the batches kept in
    /// memory below it. Callers hold neither the log's lock nor the role's.
    pub(super) fn advance_high_watermark(&self, to: Offset) {
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

    /// The batches a follower asked for, up to our log end (leader side, after
    /// `begin_replica_fetch`): from the newest batches kept in memory when they hold them,
    /// else from disk. Empty at the log end: the caller long-polls on `subscribe_appended`.
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
        let high_watermark = self.high_watermark();
        let next_offset = crate::service::next_offset(&read.batches, fetch_offset);
        Ok(FetchOutcome {
            read,
            high_watermark,
            // Followers copy the log as it is; isolation is for consumers.
            last_stable_offset: high_watermark,
            next_offset,
        })
    }

    /// Changes on every append and every role change: what a replica fetch parked at the
    /// log end waits for.
    pub fn subscribe_appended(&self) -> watch::Receiver<Offset> {
        self.appended.subscribe()
    }

    /// As leader: the ISR change this replica wants now, with the epochs to send it at.
    /// Asking records the request: the same partition epoch is not asked about again
    /// until `ISR_CHANGE_REQUEST_RETRY_AFTER` has passed.
    /// A leader whose storage failed asks for nothing: its followers' fetches are refused,
    /// so they would all look behind, and shrinking the ISR to itself would leave no
    /// replica to take over (it steps down instead, `wanted_step_down`).
    pub fn wanted_isr_change(&self, max_lag: Duration) -> Option<(LeaderState, Vec<BrokerId>)> {
        if self.storage_failed() {
            return None;
        }
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
            && now.duration_since(at) < ISR_CHANGE_REQUEST_RETRY_AFTER
        {
            return None;
        }
        state.isr_change_requested = Some((state.partition_epoch, now));
        state.requested_isr = Some(wanted.clone());
        Some((state.clone(), wanted))
    }

    /// The controller refused the ISR change asked for at `partition_epoch` (it did not
    /// and will not commit): the high watermark stops counting the members it would have
    /// added. A request whose outcome is unknown (a timeout) must not be reported here.
    pub fn isr_change_refused(&self, partition_epoch: i32) {
        let mut role = self.role();
        if let Role::Leader(state) = &mut *role
            && state.partition_epoch == partition_epoch
        {
            state.requested_isr = None;
        }
    }

    /// As a leader whose log went offline (a failed fsync): its state, so the broker asks
    /// the controller to make another in-sync replica leader. Without that, the partition
    /// would stay unavailable until this broker stopped heartbeating, which it never does,
    /// since it is otherwise healthy. Asking is recorded like an ISR change (a storage-failed
    /// leader requests none): the same partition epoch is not asked about again until
    /// `ISR_CHANGE_REQUEST_RETRY_AFTER` has passed.
    pub fn wanted_step_down(&self) -> Option<LeaderState> {
        if !self.storage_failed() || self.is_closed() {
            return None;
        }
        let mut role = self.role();
        let Role::Leader(state) = &mut *role else {
            return None;
        };
        let now = Instant::now();
        if let Some((epoch, at)) = state.isr_change_requested
            && epoch == state.partition_epoch
            && now.duration_since(at) < ISR_CHANGE_REQUEST_RETRY_AFTER
        {
            return None;
        }
        state.isr_change_requested = Some((state.partition_epoch, now));
        Some(state.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use ferrolog_log::{
        LogConfig, PARTITION_RECENT_MAX_BYTES, RecentBatchBudget, RecordBatchBuilder,
    };
    use ferrolog_metadata::{PartitionId, PartitionImage};
    use tempfile::TempDir;

    use super::*;
    use crate::metrics::BrokerMetrics;
    use crate::partition::PartitionShared;

    const LEADER: BrokerId = BrokerId(1);
    const FOLLOWERS: [BrokerId; 2] = [BrokerId(2), BrokerId(3)];
    const LEADER_EPOCH: i32 = 1;
    /// How long a test waits for an fsync: far more than one takes, even on a busy machine.
    const FSYNC_WAIT: Duration = Duration::from_secs(30);

    fn image(isr: &[BrokerId], partition_epoch: i32) -> PartitionImage {
        PartitionImage {
            partition: PartitionId(0),
            replicas: vec![LEADER, FOLLOWERS[0], FOLLOWERS[1]],
            isr: isr.to_vec(),
            leader: Some(LEADER),
            leader_epoch: LEADER_EPOCH,
            partition_epoch,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    /// A partition of three replicas, all in sync, led by this broker, in a temp dir.
    fn open_leader() -> (TempDir, Arc<Partition>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = PartitionShared {
            metrics: Arc::new(BrokerMetrics::unregistered()),
            recent_budget: RecentBatchBudget::new(PARTITION_RECENT_MAX_BYTES),
        };
        let partition = Partition::open(
            "events",
            PartitionId(0),
            "events-id",
            LEADER,
            dir.path(),
            LogConfig::default(),
            shared,
        )
        .expect("open the partition");
        partition
            .apply_assignment(&image(&[LEADER, FOLLOWERS[0], FOLLOWERS[1]], 0), 1)
            .expect("lead");
        (dir, partition)
    }

    fn batch(records: usize) -> BytesMut {
        let mut builder = RecordBatchBuilder::new(0);
        for _ in 0..records {
            builder.push(0, None, Some(b"record"), &[]);
        }
        builder.build()
    }

    /// A follower's fetch at `fetch_offset` with its log durable below `durable`; its log
    /// agrees with the leader's (one epoch, which it has), so there is nothing to truncate.
    fn report(partition: &Partition, follower: BrokerId, fetch_offset: i64, durable: i64) {
        let divergence = partition
            .begin_replica_fetch(
                follower,
                LEADER_EPOCH,
                Offset(fetch_offset),
                Offset(durable),
                LEADER_EPOCH,
            )
            .expect("the fetch is answered");
        assert_eq!(divergence, None);
    }

    #[tokio::test]
    async fn the_high_watermark_ignores_stale_reports_and_moves_up_when_the_isr_shrinks() {
        let (_dir, partition) = open_leader();
        let [second, third] = FOLLOWERS;
        partition
            .append(batch(10), Acks::Leader, FSYNC_WAIT)
            .await
            .expect("append");
        assert_eq!(partition.durable_offset(), Offset(10));
        assert_eq!(
            partition.high_watermark(),
            Offset(0),
            "no follower has it yet"
        );

        report(&partition, second, 10, 10);
        report(&partition, third, 6, 6);
        assert_eq!(partition.high_watermark(), Offset(6));

        // A fetch that arrives late, after a newer one, lowers what the leader records for
        // the follower, but not the high watermark.
        report(&partition, third, 4, 4);
        assert_eq!(partition.high_watermark(), Offset(6));

        // Without the slow follower, the ISR holds everything broker 2 reported.
        partition
            .apply_assignment(&image(&[LEADER, second], 1), 1)
            .expect("shrink the ISR");
        assert_eq!(partition.high_watermark(), Offset(10));

        // Fetched ahead of its fsyncs, a follower counts only as far as it is durable.
        partition
            .append(batch(5), Acks::Leader, FSYNC_WAIT)
            .await
            .expect("append");
        report(&partition, second, 15, 12);
        assert_eq!(partition.high_watermark(), Offset(12));
        report(&partition, second, 15, 15);
        assert_eq!(partition.high_watermark(), Offset(15));
    }

    /// The fsyncgate rule at the partition level: once an fsync failed, a produce waiting
    /// for it is refused (never acknowledged), nothing more is taken, the leader stops
    /// asking for ISR changes (its followers only look behind because it refuses their
    /// fetches) and asks, once per partition epoch, to hand its leadership over.
    #[tokio::test]
    async fn after_a_failed_fsync_nothing_is_acknowledged_and_the_leader_asks_to_step_down() {
        let (_dir, partition) = open_leader();
        partition
            .append(batch(3), Acks::Leader, FSYNC_WAIT)
            .await
            .expect("a durable append");
        assert_eq!(partition.wanted_step_down().map(|s| s.leader_epoch), None);

        tracing::info!("phase: a produce waits for the followers while the fsync fails");
        let waiting = {
            let partition = Arc::clone(&partition);
            tokio::spawn(async move { partition.append(batch(2), Acks::All, FSYNC_WAIT).await })
        };
        // Lets the produce append and park on the high watermark.
        while partition.log_end_offset() < Offset(5) {
            tokio::task::yield_now().await;
        }
        {
            let mut log = partition.log_write();
            log.mark_sync_failed();
            partition.go_offline(&mut log, &"injected fsync failure");
        }
        let refused = waiting
            .await
            .expect("the produce task ends")
            .expect_err("a produce whose fsync failed is never acknowledged");
        assert_eq!(refused.code(), ferrolog_proto::v1::ErrorCode::StorageError);
        let again = partition
            .append(batch(1), Acks::Leader, FSYNC_WAIT)
            .await
            .expect_err("an offline partition takes nothing");
        assert_eq!(again.code(), ferrolog_proto::v1::ErrorCode::StorageError);
        assert_eq!(partition.log_end_offset(), Offset(5));

        tracing::info!("phase: it asks to step down, not to shrink the ISR to itself");
        assert!(partition.wanted_isr_change(Duration::ZERO).is_none());
        let state = partition.wanted_step_down().expect("asks to step down");
        assert_eq!(state.isr, vec![LEADER, FOLLOWERS[0], FOLLOWERS[1]]);
        assert!(
            partition.wanted_step_down().is_none(),
            "asked once per partition epoch"
        );

        tracing::info!("phase: once another replica leads, it asks for nothing more");
        let mut moved = image(&[LEADER, FOLLOWERS[0], FOLLOWERS[1]], 1);
        moved.leader = Some(FOLLOWERS[0]);
        moved.leader_epoch = LEADER_EPOCH + 1;
        partition.apply_assignment(&moved, 1).expect("follow");
        assert!(partition.wanted_step_down().is_none());
    }

    /// A xorshift generator: the same seed gives the same steps, so a failure replays.
    struct Steps(u64);

    impl Steps {
        /// A number in `0..=max`.
        fn up_to(&mut self, max: i64) -> i64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % (max as u64 + 1)) as i64
        }
    }

    /// Appends, follower fetches reporting stale and reordered positions, and ISR shrinks
    /// and expands, in an order the seed picks; after every step the high watermark has
    /// not moved back and is not above the durable end of any ISR member (the leader's
    /// own, or the furthest a follower has reported).
    async fn high_watermark_stays_committed(seed: u64) {
        let (_dir, partition) = open_leader();
        let mut steps = Steps(seed);
        let mut isr = vec![LEADER, FOLLOWERS[0], FOLLOWERS[1]];
        let mut partition_epoch = 0;
        let mut furthest_durable: BTreeMap<BrokerId, i64> = BTreeMap::new();
        let mut high_watermark = partition.high_watermark();
        for step in 0..300 {
            match steps.up_to(9) {
                0..=2 => {
                    // Waiting for the fsync sometimes, so the leader's durable end both
                    // trails its log end and catches up.
                    let acks = if steps.up_to(2) == 0 {
                        Acks::Leader
                    } else {
                        Acks::None
                    };
                    let records = steps.up_to(4) as usize + 1;
                    partition
                        .append(batch(records), acks, FSYNC_WAIT)
                        .await
                        .expect("append");
                }
                3..=7 => {
                    let follower = FOLLOWERS[steps.up_to(1) as usize];
                    let fetch_offset = steps.up_to(partition.log_end_offset().0);
                    let durable = steps.up_to(fetch_offset);
                    report(&partition, follower, fetch_offset, durable);
                    let furthest = furthest_durable.entry(follower).or_default();
                    *furthest = (*furthest).max(durable);
                }
                8 if isr.len() > 1 => {
                    isr.remove(steps.up_to(isr.len() as i64 - 2) as usize + 1);
                    partition_epoch += 1;
                    partition
                        .apply_assignment(&image(&isr, partition_epoch), 1)
                        .expect("shrink the ISR");
                }
                _ => {
                    // Kafka's rule for joining: the follower holds everything committed.
                    let joining = FOLLOWERS.into_iter().find(|f| {
                        !isr.contains(f)
                            && furthest_durable.get(f).copied().unwrap_or(0)
                                >= partition.high_watermark().0
                    });
                    if let Some(follower) = joining {
                        isr.push(follower);
                        partition_epoch += 1;
                        partition
                            .apply_assignment(&image(&isr, partition_epoch), 1)
                            .expect("expand the ISR");
                    }
                }
            }
            // Read first: every bound below only grows, so a flush finishing meanwhile
            // cannot make a correct high watermark look too high.
            let now = partition.high_watermark();
            let isr_durable_end = isr
                .iter()
                .map(|member| match *member {
                    LEADER => partition.durable_offset().0,
                    follower => furthest_durable.get(&follower).copied().unwrap_or(0),
                })
                .min()
                .expect("the leader is in the ISR");
            assert!(
                now >= high_watermark,
                "seed {seed}, step {step}: the high watermark moved back from \
                 {high_watermark} to {now}"
            );
            assert!(
                now.0 <= isr_durable_end,
                "seed {seed}, step {step}: the high watermark {now} is above {isr_durable_end}, \
                 the durable end of ISR {isr:?}"
            );
            high_watermark = now;
        }

        // Once every replica reports the whole log durable, all of it is committed: the
        // steps above did not pass by keeping the high watermark still.
        partition
            .append(batch(1), Acks::Leader, FSYNC_WAIT)
            .await
            .expect("append");
        let end = partition.log_end_offset();
        for follower in FOLLOWERS {
            report(&partition, follower, end.0, end.0);
        }
        assert_eq!(partition.high_watermark(), end, "seed {seed}");
    }

    #[tokio::test]
    async fn the_high_watermark_never_moves_back_nor_passes_the_durable_end_of_the_isr() {
        for seed in [1, 7, 42, 2024] {
            high_watermark_stays_committed(seed).await;
        }
    }
}
