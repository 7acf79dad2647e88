//! A consumer in a group (Kafka's KIP-848 protocol): the coordinator decides which member
//! reads which partition, and committed offsets let a member resume where the group
//! stopped.
//!
//! A background task heartbeats to the coordinator and keeps the latest assignment it was
//! given. `poll` moves the consumer toward that assignment before fetching: a revoked
//! partition's position is committed (at-least-once: everything `poll` returned before was
//! handed to the application), the listener hears of it, and the partition is dropped; the
//! next heartbeat reports it released, and only then does the coordinator give it to
//! another member. A newly assigned partition starts at its committed offset, or where
//! `auto_offset_reset` says when it has none. Partitions that do not move keep being read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolog_proto::retry::Backoff;
use ferrolog_proto::v1::group_service_client::GroupServiceClient;
use ferrolog_proto::v1::{
    CommittedOffset, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, ErrorCode,
    FindCoordinatorRequest, OffsetCommitRequest, OffsetFetchRequest, TopicPartitions,
};
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::admin::{OffsetQuery, list_offsets};
use crate::config::ConsumerConfig;
use crate::connection::call;
use crate::consumer::{Consumer, StartOffset};
use crate::error::{ClientError, Result};
use crate::metadata::Cluster;
use crate::record::ConsumedRecord;

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

/// Where a partition without a committed offset starts (Kafka's `auto.offset.reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OffsetReset {
    Earliest,
    /// Kafka's default: only records produced from now on.
    #[default]
    Latest,
    /// Fail instead: the application decides.
    None,
}

/// An assignment change, as the listener hears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalance {
    /// Partitions this member now reads, with the offset each starts at.
    Assigned(Vec<(TopicPartition, i64)>),
    /// Partitions taken away, after their positions were committed.
    Revoked(Vec<TopicPartition>),
}

/// Settings of a group member.
#[derive(Clone, Debug)]
pub struct GroupConsumerConfig {
    pub consumer: ConsumerConfig,
    pub group_id: String,
    pub topics: Vec<String>,
    /// "uniform" (sticky; the default) or "range".
    pub assignor: String,
    pub auto_offset_reset: OffsetReset,
    /// Commit positions this often from `poll` (Kafka's `auto.commit.interval.ms`);
    /// `None` commits only in [`GroupConsumer::commit`], on revocation and on close.
    pub auto_commit_interval: Option<Duration>,
    pub client_id: String,
}

impl GroupConsumerConfig {
    pub fn new(consumer: ConsumerConfig, group_id: &str, topics: &[&str]) -> Self {
        Self {
            consumer,
            group_id: group_id.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            assignor: "uniform".to_owned(),
            auto_offset_reset: OffsetReset::default(),
            auto_commit_interval: Some(Duration::from_secs(5)),
            client_id: "ferrolog".to_owned(),
        }
    }
}

/// Membership as the heartbeat task and `poll` share it.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    member_epoch: i32,
    /// The partitions the coordinator last said this member may own.
    assignment: BTreeSet<TopicPartition>,
    /// What the consumer holds now; reported by every heartbeat.
    owned: BTreeSet<TopicPartition>,
    /// Set once the member left; the heartbeat task then stops.
    closed: bool,
}

/// State shared with the heartbeat task.
#[derive(Debug)]
pub(crate) struct Shared {
    membership: Mutex<Membership>,
    /// Wakes the heartbeat task early, e.g. right after a revocation, so the partition
    /// reaches its next owner without waiting a whole heartbeat interval.
    wake: Notify,
    /// The coordinator's address, once found.
    coordinator: Mutex<Option<String>>,
}

impl Shared {
    /// State for a one-off call from outside any member (admin calls).
    pub(crate) fn detached() -> Self {
        Self {
            membership: Mutex::new(Membership::default()),
            wake: Notify::new(),
            coordinator: Mutex::new(None),
        }
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A member of a consumer group. Not `Clone`: positions belong to one reader.
pub struct GroupConsumer {
    cluster: Cluster,
    consumer: Consumer,
    config: GroupConsumerConfig,
    shared: Arc<Shared>,
    /// What the consumer has committed, so an unchanged position is not committed again.
    committed: BTreeMap<TopicPartition, i64>,
    last_auto_commit: Instant,
    listener: Option<RebalanceListener>,
}

/// What [`GroupConsumer::on_rebalance`] installs.
type RebalanceListener = Box<dyn FnMut(&Rebalance) + Send>;

impl GroupConsumer {
    /// Joins the group; partitions arrive with the first heartbeats, during `poll`.
    pub async fn join(config: GroupConsumerConfig) -> Result<GroupConsumer> {
        if config.group_id.is_empty() || config.topics.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a group consumer needs a group id and at least one topic".to_owned(),
            ));
        }
        let consumer = Consumer::connect(config.consumer.clone()).await?;
        let cluster = Cluster::connect(config.consumer.client.clone()).await?;
        let shared = Arc::new(Shared::detached());
        tokio::spawn(heartbeat_loop(
            cluster.clone(),
            Arc::clone(&shared),
            config.clone(),
        ));
        Ok(GroupConsumer {
            cluster,
            consumer,
            config,
            shared,
            committed: BTreeMap::new(),
            last_auto_commit: Instant::now(),
            listener: None,
        })
    }

    /// Calls `listener` on every assignment change (Kafka's `ConsumerRebalanceListener`).
    pub fn on_rebalance(&mut self, listener: impl FnMut(&Rebalance) + Send + 'static) {
        self.listener = Some(Box::new(listener));
    }

    /// The partitions this member reads now.
    pub fn assignment(&self) -> BTreeSet<TopicPartition> {
        self.shared.membership().owned.clone()
    }

    /// The member id the coordinator gave this member (empty until the first heartbeat).
    pub fn member_id(&self) -> String {
        self.shared.membership().member_id.clone()
    }

    /// Follows the assignment, then returns the next records of the owned partitions,
    /// waiting up to `max_wait`. Commits positions when the auto-commit interval passed.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>> {
        let deadline = Instant::now() + max_wait;
        loop {
            self.reconcile().await?;
            self.maybe_auto_commit().await;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if self.shared.membership().owned.is_empty() {
                if remaining.is_zero() {
                    return Ok(Vec::new());
                }
                // Nothing to read yet: wait a little for the assignment to change.
                tokio::time::sleep(remaining.min(Duration::from_millis(50))).await;
                continue;
            }
            // Short fetches, so a revocation is noticed within about 200 ms.
            let step = remaining.min(Duration::from_millis(200));
            match self.consumer.poll(step).await {
                Ok(records) if !records.is_empty() || Instant::now() >= deadline => {
                    return Ok(records);
                }
                Ok(_) => continue,
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    self.reset_out_of_range().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Commits the position of every owned partition (the offset after the last record
    /// `poll` returned), fenced by this member's epoch.
    pub async fn commit(&mut self) -> Result<()> {
        let positions: Vec<(TopicPartition, i64)> = {
            let owned = self.shared.membership().owned.clone();
            owned
                .into_iter()
                .filter_map(|tp| {
                    let position = self.consumer.position(&tp.topic, tp.partition)?;
                    (self.committed.get(&tp) != Some(&position)).then_some((tp, position))
                })
                .collect()
        };
        self.commit_positions(positions).await
    }

    /// Commits the given next offsets (for applications that track what they processed),
    /// fenced by this member's epoch. Partitions this member does not own are refused.
    pub async fn commit_offsets(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let owned = self.shared.membership().owned.clone();
        if let Some((tp, _)) = offsets.iter().find(|(tp, _)| !owned.contains(tp)) {
            return Err(ClientError::InvalidArgument(format!(
                "{}-{} is not assigned to this member",
                tp.topic, tp.partition
            )));
        }
        self.commit_positions(offsets.to_vec()).await
    }

    /// Moves an owned partition's position, e.g. back to the last committed offset after
    /// the transaction that processed later records aborted (consume-transform-produce).
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        let tp = TopicPartition {
            topic: topic.to_owned(),
            partition,
        };
        if !self.shared.membership().owned.contains(&tp) {
            return Err(ClientError::InvalidArgument(format!(
                "{topic}-{partition} is not assigned to this member"
            )));
        }
        self.consumer.seek(topic, partition, offset)
    }

    /// Commits (unless auto-commit is off), leaves the group, and stops heartbeating. The
    /// member's partitions go to the others at once instead of after a session timeout.
    pub async fn close(mut self) -> Result<()> {
        let committed = if self.config.auto_commit_interval.is_some() {
            self.commit().await
        } else {
            Ok(())
        };
        let (member_id, owned) = {
            let mut m = self.shared.membership();
            m.closed = true;
            (m.member_id.clone(), std::mem::take(&mut m.owned))
        };
        self.shared.wake.notify_one();
        if !member_id.is_empty() {
            let request = ConsumerGroupHeartbeatRequest {
                group_id: self.config.group_id.clone(),
                member_id,
                member_epoch: -1,
                subscribed_topics: Vec::new(),
                assignor: String::new(),
                owned_partitions: to_wire(&owned),
                client_id: self.config.client_id.clone(),
            };
            if let Err(error) = send_heartbeat(&self.cluster, &self.shared, request).await {
                tracing::debug!(%error, "could not leave the group; it will expire the member");
            }
        }
        committed
    }

    async fn commit_positions(&mut self, positions: Vec<(TopicPartition, i64)>) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let (member_id, member_epoch) = {
            let m = self.shared.membership();
            (m.member_id.clone(), m.member_epoch)
        };
        let request = OffsetCommitRequest {
            group_id: self.config.group_id.clone(),
            member_id,
            member_epoch,
            offsets: positions
                .iter()
                .map(|(tp, offset)| CommittedOffset {
                    topic: tp.topic.clone(),
                    partition: tp.partition as i32,
                    offset: *offset,
                    ..CommittedOffset::default()
                })
                .collect(),
        };
        with_coordinator(
            &self.cluster,
            &self.shared,
            &self.config.group_id,
            |mut c, a, t| {
                let request = request.clone();
                async move { call(&a, "an OffsetCommit answer", t, c.offset_commit(request)).await }
            },
        )
        .await?;
        self.committed.extend(positions);
        Ok(())
    }

    async fn maybe_auto_commit(&mut self) {
        let Some(interval) = self.config.auto_commit_interval else {
            return;
        };
        if self.last_auto_commit.elapsed() < interval {
            return;
        }
        self.last_auto_commit = Instant::now();
        if let Err(error) = self.commit().await {
            tracing::warn!(%error, group = %self.config.group_id, "auto-commit failed; retried at the next interval");
        }
    }

    /// Drops revoked partitions (committing them first) and starts assigned ones.
    async fn reconcile(&mut self) -> Result<()> {
        let (assignment, owned) = {
            let m = self.shared.membership();
            (m.assignment.clone(), m.owned.clone())
        };
        let revoked: Vec<TopicPartition> = owned.difference(&assignment).cloned().collect();
        if !revoked.is_empty() {
            let positions: Vec<(TopicPartition, i64)> = revoked
                .iter()
                .filter_map(|tp| {
                    let position = self.consumer.position(&tp.topic, tp.partition)?;
                    (self.committed.get(tp) != Some(&position)).then(|| (tp.clone(), position))
                })
                .collect();
            if let Err(error) = self.commit_positions(positions).await {
                // At-least-once still holds: the next owner re-reads from the last commit.
                tracing::warn!(%error, "could not commit revoked partitions");
            }
            for tp in &revoked {
                self.consumer.unassign(&tp.topic, tp.partition);
                self.committed.remove(tp);
            }
            self.shared
                .membership()
                .owned
                .retain(|tp| !revoked.contains(tp));
            self.notify(&Rebalance::Revoked(revoked));
            self.shared.wake.notify_one();
        }
        let added: Vec<TopicPartition> = assignment.difference(&owned).cloned().collect();
        if added.is_empty() {
            return Ok(());
        }
        let committed = self.fetch_committed(&added).await?;
        let mut started = Vec::new();
        for tp in added {
            let start = match committed.get(&tp) {
                Some(offset) => StartOffset::Offset(*offset),
                None => match self.config.auto_offset_reset {
                    OffsetReset::Earliest => StartOffset::Earliest,
                    OffsetReset::Latest => StartOffset::Latest,
                    OffsetReset::None => {
                        return Err(ClientError::InvalidArgument(format!(
                            "{}-{} has no committed offset in group '{}' and auto_offset_reset is None",
                            tp.topic, tp.partition, self.config.group_id
                        )));
                    }
                },
            };
            self.consumer.assign(&tp.topic, tp.partition, start).await?;
            let position = self
                .consumer
                .position(&tp.topic, tp.partition)
                .unwrap_or_default();
            if let Some(offset) = committed.get(&tp) {
                self.committed.insert(tp.clone(), *offset);
            }
            started.push((tp.clone(), position));
            self.shared.membership().owned.insert(tp);
        }
        self.notify(&Rebalance::Assigned(started));
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn fetch_committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let topics: BTreeSet<String> = partitions.iter().map(|tp| tp.topic.clone()).collect();
        let request = OffsetFetchRequest {
            group_id: self.config.group_id.clone(),
            topics: topics.into_iter().collect(),
        };
        let answer = with_coordinator(
            &self.cluster,
            &self.shared,
            &self.config.group_id,
            |mut c, a, t| {
                let request = request.clone();
                async move { call(&a, "an OffsetFetch answer", t, c.offset_fetch(request)).await }
            },
        )
        .await?;
        Ok(answer
            .offsets
            .into_iter()
            .filter_map(|o| {
                let tp = TopicPartition {
                    topic: o.topic,
                    partition: u32::try_from(o.partition).ok()?,
                };
                partitions.contains(&tp).then_some((tp, o.offset))
            })
            .collect())
    }

    /// A position that retention deleted (or that lies past the end) restarts where
    /// `auto_offset_reset` says.
    async fn reset_out_of_range(&mut self) -> Result<()> {
        let query = match self.config.auto_offset_reset {
            OffsetReset::Earliest => OffsetQuery::Earliest,
            OffsetReset::Latest => OffsetQuery::Latest,
            OffsetReset::None => {
                return Err(ClientError::server(
                    ErrorCode::OffsetOutOfRange,
                    "a position is out of range and auto_offset_reset is None",
                ));
            }
        };
        let owned = self.shared.membership().owned.clone();
        for tp in owned {
            let Some(position) = self.consumer.position(&tp.topic, tp.partition) else {
                continue;
            };
            let earliest = list_offsets(
                &self.cluster,
                &tp.topic,
                tp.partition,
                OffsetQuery::Earliest,
            )
            .await?
            .offset;
            let latest = list_offsets(&self.cluster, &tp.topic, tp.partition, OffsetQuery::Latest)
                .await?
                .offset;
            if position < earliest || position > latest {
                let to = match query {
                    OffsetQuery::Earliest => earliest,
                    _ => latest,
                };
                tracing::warn!(topic = %tp.topic, partition = tp.partition, position, to,
                    "position out of range; reset");
                self.consumer.seek(&tp.topic, tp.partition, to)?;
            }
        }
        Ok(())
    }

    fn notify(&mut self, change: &Rebalance) {
        if let Some(listener) = &mut self.listener {
            listener(change);
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Without close(), the coordinator expires the member after its session.
        self.shared.membership().closed = true;
        self.shared.wake.notify_one();
    }
}

/// Heartbeats until the member closes; follows the coordinator and rejoins when it forgot
/// the member.
async fn heartbeat_loop(cluster: Cluster, shared: Arc<Shared>, config: GroupConsumerConfig) {
    let mut interval = Duration::from_millis(500);
    loop {
        let request = {
            let m = shared.membership();
            if m.closed {
                return;
            }
            ConsumerGroupHeartbeatRequest {
                group_id: config.group_id.clone(),
                member_id: m.member_id.clone(),
                member_epoch: m.member_epoch,
                subscribed_topics: config.topics.clone(),
                assignor: config.assignor.clone(),
                owned_partitions: to_wire(&m.owned),
                client_id: config.client_id.clone(),
            }
        };
        match send_heartbeat(&cluster, &shared, request).await {
            Ok(answer) => {
                interval = Duration::from_millis(answer.heartbeat_interval_ms.max(50) as u64);
                let mut m = shared.membership();
                if m.closed {
                    return;
                }
                m.member_id = answer.member_id;
                m.member_epoch = answer.member_epoch;
                m.assignment = from_wire(&answer.assignment);
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownMemberId | ErrorCode::StaleMemberEpoch)
                ) =>
            {
                // The coordinator moved or expired us: rejoin at once, reporting what we
                // own, which a new coordinator lets us keep.
                tracing::info!(error = %e, group = %config.group_id, "rejoining the group");
                shared.membership().member_epoch = 0;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, group = %config.group_id, "heartbeat failed; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.wake.notified() => {}
        }
    }
}

async fn send_heartbeat(
    cluster: &Cluster,
    shared: &Shared,
    request: ConsumerGroupHeartbeatRequest,
) -> Result<ConsumerGroupHeartbeatResponse> {
    let group = request.group_id.clone();
    with_coordinator(cluster, shared, &group, |mut c, a, t| {
        let request = request.clone();
        async move {
            call(
                &a,
                "a ConsumerGroupHeartbeat answer",
                t,
                c.consumer_group_heartbeat(request),
            )
            .await
        }
    })
    .await
}

/// Runs `request` at the group's coordinator, finding it first and again after it moved,
/// with backoff until the request timeout.
pub(crate) async fn with_coordinator<T, F, Fut>(
    cluster: &Cluster,
    shared: &Shared,
    group: &str,
    mut request: F,
) -> Result<T>
where
    F: FnMut(GroupServiceClient<Channel>, String, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let timeout = cluster.config().request_timeout();
    let deadline = Instant::now() + timeout;
    let backoff = Backoff::from_millis(
        cluster.config().retry_backoff_ms.max(10),
        cluster.config().retry_backoff_max_ms.max(100),
    );
    let mut attempt = 0;
    loop {
        let known = shared
            .coordinator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let result = match known {
            Some(address) => match cluster.channel(&address) {
                Ok(channel) => request(GroupServiceClient::new(channel), address, timeout).await,
                Err(e) => Err(e),
            },
            None => match find_coordinator(cluster, group).await {
                Ok(address) => {
                    *shared.coordinator.lock().unwrap_or_else(|p| p.into_inner()) = Some(address);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        let error = match result {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let moved = matches!(
            error.code(),
            Some(ErrorCode::NotCoordinator | ErrorCode::NotLeader | ErrorCode::BrokerShuttingDown)
        ) || matches!(
            error,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        );
        if moved {
            *shared.coordinator.lock().unwrap_or_else(|p| p.into_inner()) = None;
            cluster.invalidate();
        }
        let retriable = moved || error.is_retriable();
        attempt += 1;
        let delay = backoff.delay(attempt);
        if !retriable || Instant::now() + delay >= deadline {
            return Err(error);
        }
        tokio::time::sleep(delay).await;
    }
}

/// GroupService.FindCoordinator at any broker: the address of the group's coordinator.
pub(crate) async fn find_coordinator(cluster: &Cluster, group: &str) -> Result<String> {
    let timeout = cluster.config().request_timeout();
    let request = FindCoordinatorRequest {
        group_id: group.to_owned(),
    };
    let answer = cluster
        .with_any_broker("a FindCoordinator answer", true, |address, channel| {
            let request = request.clone();
            async move {
                call(
                    &address,
                    "a FindCoordinator answer",
                    timeout,
                    GroupServiceClient::new(channel).find_coordinator(request),
                )
                .await
            }
        })
        .await?;
    Ok(answer.address)
}

fn to_wire(partitions: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic
            .entry(&tp.topic)
            .or_default()
            .push(tp.partition as i32);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_owned(),
            partitions,
        })
        .collect()
}

fn from_wire(partitions: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .flat_map(|t| {
            t.partitions.iter().filter_map(|p| {
                Some(TopicPartition {
                    topic: t.topic.clone(),
                    partition: u32::try_from(*p).ok()?,
                })
            })
        })
        .collect()
}
