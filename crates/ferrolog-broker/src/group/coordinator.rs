//! The group coordinator of one broker: it serves the groups whose `__consumer_offsets`
//! partition this broker leads.
//!
//! Each offsets partition is a shard with its own lock. The first request after this
//! broker becomes the partition's leader (or after any leader epoch change) replays the
//! partition into memory; from then on every offset commit is appended to it with
//! acks=all before it is acknowledged, so committed offsets survive the loss of brokers
//! exactly as any acknowledged record does. Membership is soft state: after the
//! coordinator moves, members get UNKNOWN_MEMBER_ID and rejoin, reporting what they own,
//! and keep it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolog_proto::v1::Acks;
use tokio::sync::OwnedMutexGuard;

use super::assignor::{Assignor, TopicPartition};
use super::log::{
    DEFAULT_OFFSETS_PARTITIONS, LoadedOffsets, OFFSETS_TOPIC, PendingOffset, PendingTxnOffsets,
    commit_batch, delete_batch, partition_for, replay_with_pending, txn_commit_batch,
    txn_settle_batch,
};
use super::requests::{
    CommittedOffset, CoordinatorLocation, GroupDescription, GroupSummary, HeartbeatRequest,
    HeartbeatResponse, MemberDescription, OffsetCommitRequest, OffsetToCommit,
};
use super::state::{Committed, GroupState, Heartbeat};
use crate::partition::now_ms;
use crate::replica::Role;
use crate::{Broker, BrokerError, Partition};

/// How long a member may stay silent before it leaves the group. Kafka's KIP-848 default is
/// 45 s; 10 s hands a crashed member's partitions over sooner while still allowing nine
/// lost heartbeats in a row.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often members heartbeat (Kafka: 5 s). A revoked partition reaches its new owner
/// after about two heartbeats, so this bounds how long a moving partition pauses.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long an offset commit waits for the in-sync replicas.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expired members are removed and lag gauges refreshed.
const TICK: Duration = Duration::from_millis(500);

/// Group settings of a broker.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Partitions of `__consumer_offsets` when this broker creates it.
    pub offsets_partitions: u32,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            offsets_partitions: DEFAULT_OFFSETS_PARTITIONS,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        }
    }
}

/// The groups of one offsets partition, as of one leader epoch.
#[derive(Default)]
struct Shard {
    /// The leader epoch the groups were loaded at; `None` before the first load.
    loaded_at: Option<i32>,
    /// Set at load: see `GroupState::free_partitions_held_until`.
    hold_until: Option<Instant>,
    groups: BTreeMap<String, GroupState>,
    /// Serializes each group's offset commits (see `GroupCoordinator::commit`).
    commit_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Offsets committed inside open transactions, by producer id.
    pending_txn: PendingTxnOffsets,
    /// The newest transaction-marker epoch settled per producer id since the load: an offset
    /// commit of an older epoch is a zombie's and refused.
    settled_epochs: HashMap<i64, i16>,
}

impl Shard {
    fn commit_lock(&mut self, group_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.commit_locks.entry(group_id.to_owned()).or_default())
    }

    /// The group, created if new (with the shard's rejoin hold).
    fn group(&mut self, group_id: &str) -> &mut GroupState {
        let hold_until = self.hold_until;
        self.groups.entry(group_id.to_owned()).or_insert_with(|| {
            let mut group = GroupState::new(group_id);
            group.free_partitions_held_until = hold_until;
            group
        })
    }
}

/// The coordinator of every group whose offsets partition this broker leads.
pub struct GroupCoordinator {
    broker: Arc<Broker>,
    config: GroupConfig,
    shards: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Shard>>>>,
}

impl GroupCoordinator {
    /// Starts the coordinator and its ticker (member expiry, lag gauges).
    pub fn start(broker: Arc<Broker>, config: GroupConfig) -> Arc<Self> {
        let coordinator = Arc::new(Self {
            broker,
            config,
            shards: Mutex::new(HashMap::new()),
        });
        tokio::spawn(Arc::clone(&coordinator).run_ticker());
        coordinator
    }

    /// Where `group` is coordinated, creating `__consumer_offsets` on first use.
    #[tracing::instrument(skip(self))]
    pub async fn find_coordinator(&self, group: &str) -> Result<CoordinatorLocation, BrokerError> {
        validate_group_id(group)?;
        let partitions = self.offsets_partitions(true).await?;
        let partition = partition_for(group, partitions);
        let image = self.broker.image();
        let leader = image
            .topic(OFFSETS_TOPIC)
            .and_then(|t| t.partition(ferrolog_metadata::PartitionId(partition)))
            .and_then(|p| p.leader)
            .and_then(|id| image.brokers.get(&id).map(|b| (id, b.address.clone())));
        let Some((id, address)) = leader else {
            return Err(BrokerError::NotCoordinator {
                group: group.to_owned(),
                coordinator: None,
            });
        };
        Ok(CoordinatorLocation {
            coordinator: id,
            address,
            offsets_partition: partition,
        })
    }

    #[tracing::instrument(skip_all, fields(group = %request.group_id, member = %request.member_id,
        epoch = request.member_epoch))]
    pub async fn heartbeat(
        &self,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, BrokerError> {
        validate_group_id(&request.group_id)?;
        let assignor = match request.assignor.as_str() {
            "" => None,
            name => Some(Assignor::from_name(name).ok_or_else(|| {
                BrokerError::InvalidRequest(format!(
                    "unknown assignor '{name}': use uniform or range"
                ))
            })?),
        };
        if request.member_epoch == super::state::JOIN_EPOCH && request.subscribed_topics.is_empty()
        {
            return Err(BrokerError::InvalidRequest(
                "a member joins with at least one subscribed topic".to_owned(),
            ));
        }
        let (_, mut shard) = self.shard_for(&request.group_id, true).await?;
        let counts = self.partition_counts();
        let group = shard.group(&request.group_id);
        let answer = group.heartbeat(
            Heartbeat {
                member_id: request.member_id,
                member_epoch: request.member_epoch,
                client_id: request.client_id,
                topics: request.subscribed_topics,
                assignor,
                owned: request.owned,
            },
            &counts,
            Instant::now(),
            || ferrolog_metadata::random_id()[..16].to_owned(),
        )?;
        Ok(HeartbeatResponse {
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            heartbeat_interval: self.config.heartbeat_interval,
            assignment: answer.assignment,
        })
    }

    #[tracing::instrument(skip_all, fields(group = %request.group_id, member = %request.member_id,
        offsets = request.offsets.len()))]
    pub async fn commit(&self, request: OffsetCommitRequest) -> Result<(), BrokerError> {
        validate_group_id(&request.group_id)?;
        let now = now_ms();
        let offsets = self.checked_offsets(&request.offsets, now)?;
        let group_id = request.group_id.as_str();
        let (partition, mut shard) = self.shard_for(group_id, true).await?;
        shard
            .group(group_id)
            .check_commit(&request.member_id, request.member_epoch)?;
        if offsets.is_empty() {
            return Ok(());
        }
        // The append waits for the in-sync replicas, which may take until a dead one
        // leaves the ISR: only this group's other commits wait for it (so the log holds
        // them in the order they apply), never heartbeats or other groups.
        let serial = shard.commit_lock(group_id);
        let loaded_at = shard.loaded_at;
        drop(shard);
        let _serial = serial.lock().await;
        let batch = commit_batch(group_id, &offsets, now);
        partition
            .append(batch, Acks::All, COMMIT_TIMEOUT)
            .await
            .map_err(|e| self.not_coordinator_if_moved(group_id, e))?;
        // Durable now. If the shard was reloaded meanwhile, the replay included it.
        if let Ok((_, mut shard)) = self.shard_for(group_id, false).await
            && shard.loaded_at == loaded_at
        {
            shard.group(group_id).offsets.extend(offsets);
        }
        Ok(())
    }

    /// Offsets committed inside producer `producer_id`'s transaction (TxnOffsetCommit): kept
    /// pending in `__consumer_offsets` until the transaction's marker settles them
    /// (`settle_transaction`). The transaction coordinator added this group's offsets
    /// partition to the transaction (AddOffsetsToTxn) before the producer sends this.
    #[tracing::instrument(skip_all, fields(group = %group_id, producer_id, producer_epoch,
        offsets = offsets.len()))]
    pub async fn txn_commit(
        &self,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        offsets: &[OffsetToCommit],
    ) -> Result<(), BrokerError> {
        validate_group_id(group_id)?;
        let now = now_ms();
        let offsets = self.checked_offsets(offsets, now)?;
        let (partition, mut shard) = self.shard_for(group_id, true).await?;
        if let Some(&settled) = shard.settled_epochs.get(&producer_id)
            && producer_epoch < settled
        {
            return Err(crate::txn::TxnError::ProducerFenced {
                transactional_id: format!("of producer id {producer_id}"),
                asked: producer_epoch,
                current: settled,
            }
            .into());
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let serial = shard.commit_lock(group_id);
        let loaded_at = shard.loaded_at;
        drop(shard);
        let _serial = serial.lock().await;
        let batch = txn_commit_batch(producer_id, producer_epoch, group_id, &offsets, now);
        partition
            .append(batch, Acks::All, COMMIT_TIMEOUT)
            .await
            .map_err(|e| self.not_coordinator_if_moved(group_id, e))?;
        if let Ok((_, mut shard)) = self.shard_for(group_id, false).await
            && shard.loaded_at == loaded_at
        {
            let pending = shard.pending_txn.entry(producer_id).or_default();
            for (tp, committed) in offsets {
                pending.insert(
                    (group_id.to_owned(), tp),
                    PendingOffset {
                        producer_epoch,
                        committed,
                    },
                );
            }
        }
        Ok(())
    }

    /// A transaction marker for offsets partition `index`: producer `producer_id`'s pending
    /// offsets take effect (`commit`) or are dropped. The marker's epoch is the one the
    /// producer moved to when its transaction ended, so only offsets committed at the epoch
    /// just before it belong to that transaction; older ones are a zombie's and are dropped.
    /// Idempotent: a marker sent again finds nothing pending.
    #[tracing::instrument(skip(self))]
    pub async fn settle_transaction(
        &self,
        index: u32,
        producer_id: i64,
        marker_epoch: i16,
        commit: bool,
    ) -> Result<(), BrokerError> {
        let what = format!("offsets partition {index}");
        let (partition, mut shard) = self.shard_at(index, &what).await?;
        let settled = shard
            .settled_epochs
            .entry(producer_id)
            .or_insert(marker_epoch);
        *settled = (*settled).max(marker_epoch);
        let Some(pending) = shard.pending_txn.get(&producer_id).cloned() else {
            return Ok(());
        };
        let txn_epoch = marker_epoch.saturating_sub(1);
        let committed: Vec<(&String, &TopicPartition, &Committed)> = pending
            .iter()
            .filter(|(_, p)| commit && p.producer_epoch == txn_epoch)
            .map(|((group, tp), p)| (group, tp, &p.committed))
            .collect();
        let batch = txn_settle_batch(
            producer_id,
            committed.iter().copied(),
            pending.keys().map(|(group, tp)| (group, tp)),
            now_ms(),
        );
        // Under the shard lock: the settle is rare (one per transaction and offsets
        // partition) and must not interleave with a reload of the same pending offsets.
        partition
            .append(batch, Acks::All, COMMIT_TIMEOUT)
            .await
            .map_err(|e| self.not_coordinator_if_moved(&what, e))?;
        for (group, tp, offset) in committed {
            shard
                .group(group)
                .offsets
                .insert(tp.clone(), offset.clone());
        }
        shard.pending_txn.remove(&producer_id);
        Ok(())
    }

    /// The offsets of a commit, checked: non-negative, of partitions that exist.
    fn checked_offsets(
        &self,
        requested: &[OffsetToCommit],
        now: i64,
    ) -> Result<Vec<(TopicPartition, Committed)>, BrokerError> {
        let mut offsets = Vec::with_capacity(requested.len());
        let counts = self.partition_counts();
        for o in requested {
            if o.offset < 0 {
                return Err(BrokerError::InvalidRequest(format!(
                    "offset {} for {}-{} is negative",
                    o.offset, o.topic, o.partition
                )));
            }
            // As Kafka does (UNKNOWN_TOPIC_OR_PARTITION): an offset for a partition that does
            // not exist is a client's mistake, and kept it would only show up as lag.
            let Some(&count) = counts.get(&o.topic) else {
                return Err(BrokerError::UnknownTopic(o.topic.clone()));
            };
            if o.partition >= count {
                return Err(BrokerError::UnknownPartition {
                    topic: o.topic.clone(),
                    partition: i64::from(o.partition),
                    count: count as usize,
                });
            }
            offsets.push((
                TopicPartition {
                    topic: o.topic.clone(),
                    partition: o.partition,
                },
                Committed {
                    offset: o.offset,
                    metadata: o.metadata.clone(),
                    commit_timestamp_ms: now,
                },
            ));
        }
        Ok(offsets)
    }

    /// The group's committed offsets of `topics` (all topics when empty); none for a group
    /// that does not exist.
    #[tracing::instrument(skip(self, topics))]
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        topics: &[String],
    ) -> Result<Vec<CommittedOffset>, BrokerError> {
        validate_group_id(group_id)?;
        let (_, shard) = match self.shard_for(group_id, false).await {
            Ok(found) => found,
            Err(BrokerError::GroupNotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let topics: BTreeSet<&String> = topics.iter().collect();
        Ok(shard
            .groups
            .get(group_id)
            .map(|g| committed(g, |tp| topics.is_empty() || topics.contains(&tp.topic)))
            .unwrap_or_default())
    }

    /// The groups of every offsets partition this broker leads.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, BrokerError> {
        let Ok(partitions) = self.offsets_partitions(false).await else {
            return Ok(Vec::new());
        };
        let me = self.broker.config().node_id;
        let image = self.broker.image();
        let led: Vec<u32> = image
            .topic(OFFSETS_TOPIC)
            .map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.leader == Some(me))
                    .map(|p| p.partition.0)
                    .collect()
            })
            .unwrap_or_default();
        let mut groups = Vec::new();
        for p in led.into_iter().filter(|p| *p < partitions) {
            let Ok((_, shard)) = self.shard_at(p, &format!("partition {p}")).await else {
                continue;
            };
            groups.extend(shard.groups.values().map(|g| GroupSummary {
                group_id: g.group_id.clone(),
                state: g.state_name(),
                members: g.members.len(),
                coordinator: me,
            }));
        }
        Ok(groups)
    }

    #[tracing::instrument(skip_all, fields(group = %group_id))]
    pub async fn describe(&self, group_id: &str) -> Result<GroupDescription, BrokerError> {
        validate_group_id(group_id)?;
        let (_, shard) = self.shard_for(group_id, false).await?;
        let group = shard
            .groups
            .get(group_id)
            .ok_or_else(|| BrokerError::GroupNotFound(group_id.to_owned()))?;
        let members = group
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                member_epoch: m.epoch,
                client_id: m.client_id.clone(),
                subscribed_topics: m.topics.iter().cloned().collect(),
                assignment: m.assigned.clone(),
                target_assignment: group.target.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(GroupDescription {
            group_id: group_id.to_owned(),
            state: group.state_name(),
            group_epoch: group.group_epoch,
            assignor: group.assignor.name(),
            members,
            offsets: committed(group, |_| true),
            coordinator: self.broker.config().node_id,
        })
    }

    #[tracing::instrument(skip(self))]
    pub async fn delete(&self, group_id: &str) -> Result<(), BrokerError> {
        validate_group_id(group_id)?;
        // Same order as commits: the group's commit lock, then the shard.
        let serial = self
            .shard_for(group_id, false)
            .await?
            .1
            .commit_lock(group_id);
        let _serial = serial.lock().await;
        let (partition, mut shard) = self.shard_for(group_id, false).await?;
        let group = shard
            .groups
            .get(group_id)
            .ok_or_else(|| BrokerError::GroupNotFound(group_id.to_owned()))?;
        if !group.members.is_empty() {
            return Err(super::GroupError::NonEmptyGroup {
                group: group_id.to_owned(),
                members: group.members.len(),
            }
            .into());
        }
        let batch = delete_batch(group_id, group.offsets.keys(), now_ms());
        partition
            .append(batch, Acks::All, COMMIT_TIMEOUT)
            .await
            .map_err(|e| self.not_coordinator_if_moved(group_id, e))?;
        if let Some(group) = shard.groups.remove(group_id) {
            self.forget_lag(&group);
        }
        shard.commit_locks.remove(group_id);
        Ok(())
    }

    /// Partition count of `__consumer_offsets`, creating the topic when `create` is set.
    async fn offsets_partitions(&self, create: bool) -> Result<u32, BrokerError> {
        let partitions = self.config.offsets_partitions;
        match crate::internal_topic::ensure_compacted(
            &self.broker,
            OFFSETS_TOPIC,
            partitions,
            create,
        )
        .await?
        {
            Some(count) => Ok(count),
            None if create => Err(BrokerError::NotCoordinator {
                group: String::new(),
                coordinator: None,
            }),
            None => Err(BrokerError::GroupNotFound(String::new())),
        }
    }

    /// The offsets partition of `group` and its shard, locked and loaded.
    async fn shard_for(
        &self,
        group: &str,
        create: bool,
    ) -> Result<(Arc<Partition>, OwnedMutexGuard<Shard>), BrokerError> {
        let partitions = match self.offsets_partitions(create).await {
            Err(BrokerError::GroupNotFound(_)) => {
                return Err(BrokerError::GroupNotFound(group.to_owned()));
            }
            other => other?,
        };
        self.shard_at(partition_for(group, partitions), group).await
    }

    async fn shard_at(
        &self,
        index: u32,
        group: &str,
    ) -> Result<(Arc<Partition>, OwnedMutexGuard<Shard>), BrokerError> {
        let partition = self
            .broker
            .leader_partition(OFFSETS_TOPIC, i64::from(index))
            .map_err(|e| self.not_coordinator_if_moved(group, e))?;
        let Role::Leader(state) = partition.current_role() else {
            return Err(self.not_coordinator_if_moved(
                group,
                BrokerError::NotLeader {
                    topic: OFFSETS_TOPIC.to_owned(),
                    partition: index,
                    leader: None,
                },
            ));
        };
        let shard = {
            let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(shards.entry(index).or_default())
        };
        let mut shard = shard.lock_owned().await;
        if shard.loaded_at != Some(state.leader_epoch) {
            let started = Instant::now();
            let (loaded, pending_txn) = load(&partition).await?;
            shard.pending_txn = pending_txn;
            shard.settled_epochs.clear();
            shard.groups = loaded
                .into_iter()
                .map(|(id, offsets)| {
                    let mut group = GroupState::new(&id);
                    group.offsets = offsets;
                    (id, group)
                })
                .collect();
            shard.loaded_at = Some(state.leader_epoch);
            // An offsets partition that never held a record had no groups to rejoin.
            shard.hold_until = (partition.log_end_offset() > partition.log_start_offset())
                .then(|| Instant::now() + self.rejoin_hold());
            let hold_until = shard.hold_until;
            for group in shard.groups.values_mut() {
                group.free_partitions_held_until = hold_until;
            }
            tracing::info!(
                partition = index,
                leader_epoch = state.leader_epoch,
                groups = shard.groups.len(),
                ms = started.elapsed().as_millis() as u64,
                "loaded consumer groups"
            );
        }
        Ok((partition, shard))
    }

    /// How long a coordinator that just loaded its groups waits for their members to rejoin
    /// before handing out partitions nobody reported owning: one session, the time any
    /// live member has to reach it (members find the new coordinator only after the
    /// offsets partition's own failover, and at their own pace). A member not back by then
    /// would have been expired anyway.
    fn rejoin_hold(&self) -> Duration {
        self.config.session_timeout
    }

    /// NOT_LEADER of an offsets partition, told to a group client, is NOT_COORDINATOR.
    fn not_coordinator_if_moved(&self, group: &str, error: BrokerError) -> BrokerError {
        match self.broker.with_leader_hint(error) {
            BrokerError::NotLeader { leader, .. } => BrokerError::NotCoordinator {
                group: group.to_owned(),
                coordinator: leader,
            },
            other => other,
        }
    }

    /// Partition counts of every topic, as assignors need them.
    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.broker
            .image()
            .topics
            .values()
            .map(|t| (t.name.clone(), t.partitions.len() as u32))
            .collect()
    }

    async fn run_ticker(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let shards: Vec<(u32, Arc<tokio::sync::Mutex<Shard>>)> = {
                let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
                shards.iter().map(|(i, s)| (*i, Arc::clone(s))).collect()
            };
            let counts = self.partition_counts();
            let now = Instant::now();
            for (index, shard) in shards {
                let mut shard = shard.lock().await;
                if self
                    .broker
                    .leader_partition(OFFSETS_TOPIC, i64::from(index))
                    .is_err()
                {
                    // Another broker coordinates these groups now: forget them (a later
                    // leadership reloads from the log) and stop exporting their lag.
                    for group in std::mem::take(&mut shard.groups).into_values() {
                        self.forget_lag(&group);
                    }
                    shard.loaded_at = None;
                    continue;
                }
                for group in shard.groups.values_mut() {
                    for member in group.expire(now, self.config.session_timeout, &counts) {
                        tracing::info!(group = %group.group_id, %member,
                            "member missed its session and left the group");
                    }
                    self.export_lag(group);
                }
            }
        }
    }

    /// Removes the lag gauges of a group this broker no longer coordinates.
    fn forget_lag(&self, group: &GroupState) {
        for tp in group.offsets.keys() {
            self.broker
                .metrics()
                .forget_consumer_lag(&group.group_id, &tp.topic, tp.partition);
        }
    }

    /// Sets the lag gauge of each partition the group committed, where this broker has a
    /// replica (it knows that replica's high watermark; with the default replication
    /// factor of 3 on three brokers, every broker has one).
    fn export_lag(&self, group: &GroupState) {
        for (tp, committed) in &group.offsets {
            let Some(partition) = self.broker.partitions().get(&tp.topic, tp.partition) else {
                continue;
            };
            let lag = (partition.high_watermark().0 - committed.offset).max(0);
            self.broker
                .metrics()
                .consumer_lag(&group.group_id, &tp.topic, tp.partition)
                .set(lag);
        }
    }
}

/// Replays `partition` into committed offsets per group, and the offsets pending in
/// transactions.
async fn load(partition: &Partition) -> Result<(LoadedOffsets, PendingTxnOffsets), BrokerError> {
    let mut groups = LoadedOffsets::new();
    let mut pending = PendingTxnOffsets::new();
    crate::internal_topic::replay_committed(partition, |batches| {
        replay_with_pending(batches, &mut groups, &mut pending)
    })
    .await?;
    Ok((groups, pending))
}

fn validate_group_id(group: &str) -> Result<(), BrokerError> {
    if group.is_empty() || group.len() > 255 || group.chars().any(char::is_control) {
        return Err(BrokerError::InvalidRequest(format!(
            "invalid group id {group:?}: 1 to 255 characters, no control characters"
        )));
    }
    Ok(())
}

/// The group's committed offsets of the partitions `wanted` picks.
fn committed(group: &GroupState, wanted: impl Fn(&TopicPartition) -> bool) -> Vec<CommittedOffset> {
    group
        .offsets
        .iter()
        .filter(|(tp, _)| wanted(tp))
        .map(|(tp, c)| (tp.clone(), c.clone()))
        .collect()
}
