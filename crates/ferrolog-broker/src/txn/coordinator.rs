//! The transaction coordinator of one broker: it serves the transactional ids whose
//! `__transaction_state` partition this broker leads.
//!
//! Every state change is appended to that partition with acks=all before it takes effect
//! (`TxnMetadata` computes it, `persist` makes it durable, then it is installed), so the
//! coordinator that takes over after a crash replays the same decisions. An end is two
//! durable steps with the markers between them: PrepareCommit/PrepareAbort decides the
//! outcome, then every partition of the transaction gets its marker (`markers`), then
//! CompleteCommit/CompleteAbort. A coordinator that loads an id in a prepared state writes
//! the markers again and completes it; markers are idempotent where they land.
//!
//! Requests for one transactional id are serialized by a lock of their own; the shard lock
//! is held only to read or install a state, never across an append.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolog_proto::v1::Acks;
use tokio::sync::OwnedMutexGuard;

use super::log::{
    DEFAULT_TRANSACTION_STATE_PARTITIONS, LoadedTransactions, TRANSACTION_STATE_TOPIC,
    partition_for, replay, state_batch,
};
use super::markers::MarkerWriter;
use super::state::{
    DEFAULT_TRANSACTION_TIMEOUT_MS, EndPlan, InitPlan, MAX_TRANSACTION_TIMEOUT_MS, TxnError,
    TxnMetadata, TxnState,
};
use crate::group::{OFFSETS_TOPIC, TopicPartition};
use crate::partition::now_ms;
use crate::replica::Role;
use crate::{Broker, BrokerError, Partition};

/// How long a state change waits for the in-sync replicas of `__transaction_state`.
const STATE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long EndTxn waits for the markers before answering anyway: the outcome is durable
/// once prepared, and a background task keeps writing them (the producer's next request
/// meanwhile gets CONCURRENT_TRANSACTIONS and retries).
const MARKERS_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How often timed-out transactions are aborted and unled shards dropped.
const TICK: Duration = Duration::from_millis(500);
/// Attempts of InitProducerId to abort an older instance's open transaction before it
/// answers CONCURRENT_TRANSACTIONS.
const INIT_ABORT_ATTEMPTS: usize = 3;

/// Transaction settings of a broker.
#[derive(Clone, Debug)]
pub struct TxnConfig {
    /// Partitions of `__transaction_state` when this broker creates it.
    pub state_partitions: u32,
    /// `transaction.max.timeout.ms`.
    pub max_timeout_ms: u32,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            state_partitions: DEFAULT_TRANSACTION_STATE_PARTITIONS,
            max_timeout_ms: MAX_TRANSACTION_TIMEOUT_MS,
        }
    }
}

/// Where a transactional id is coordinated.
#[derive(Clone, Debug)]
pub struct TxnCoordinatorLocation {
    pub coordinator: i32,
    pub address: String,
    pub state_partition: u32,
}

/// The transactional ids of one `__transaction_state` partition, as of one leader epoch.
#[derive(Default)]
struct Shard {
    loaded_at: Option<i32>,
    txns: BTreeMap<String, TxnMetadata>,
    /// Serializes each id's requests across their appends.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The coordinator of every transactional id whose state partition this broker leads.
pub struct TransactionCoordinator {
    broker: Arc<Broker>,
    config: TxnConfig,
    shards: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Shard>>>>,
    markers: Arc<MarkerWriter>,
    /// Ids a ticker task is finishing (completing or timing out): one task per id.
    finishing: Mutex<BTreeSet<String>>,
}

impl TransactionCoordinator {
    /// Starts the coordinator and its ticker (timeouts, completing prepared ends).
    pub fn start(broker: Arc<Broker>, markers: Arc<MarkerWriter>, config: TxnConfig) -> Arc<Self> {
        let coordinator = Arc::new(Self {
            broker,
            config,
            shards: Mutex::new(HashMap::new()),
            markers,
            finishing: Mutex::new(BTreeSet::new()),
        });
        tokio::spawn(Arc::clone(&coordinator).run_ticker());
        coordinator
    }

    /// Where `transactional_id` is coordinated, creating `__transaction_state` on first use.
    #[tracing::instrument(skip(self))]
    pub async fn find_coordinator(
        &self,
        transactional_id: &str,
    ) -> Result<TxnCoordinatorLocation, BrokerError> {
        validate_transactional_id(transactional_id)?;
        let partitions = self.state_partitions(true).await?;
        let partition = partition_for(transactional_id, partitions);
        let image = self.broker.image();
        let leader = image
            .topic(TRANSACTION_STATE_TOPIC)
            .and_then(|t| t.partition(ferrolog_metadata::PartitionId(partition)))
            .and_then(|p| p.leader)
            .and_then(|id| image.brokers.get(&id).map(|b| (id, b.address.clone())));
        let Some((id, address)) = leader else {
            return Err(not_coordinator(transactional_id, None));
        };
        Ok(TxnCoordinatorLocation {
            coordinator: id.0,
            address,
            state_partition: partition,
        })
    }

    /// InitProducerId with a transactional id: the id's producer id with its next epoch,
    /// which fences every older instance. An open transaction of an older instance is
    /// aborted first.
    #[tracing::instrument(skip(self))]
    pub async fn init_producer_id(
        &self,
        transactional_id: &str,
        timeout_ms: u32,
    ) -> Result<(i64, i16), BrokerError> {
        validate_transactional_id(transactional_id)?;
        let timeout_ms = match timeout_ms {
            0 => DEFAULT_TRANSACTION_TIMEOUT_MS,
            t if t > self.config.max_timeout_ms => {
                return Err(TxnError::InvalidTimeout {
                    asked_ms: t,
                    max_ms: self.config.max_timeout_ms,
                }
                .into());
            }
            t => t,
        };
        let _serial = self.lock_id(transactional_id, true).await?;
        for _ in 0..INIT_ABORT_ATTEMPTS {
            let (partition, shard) = self.shard_for(transactional_id, true).await?;
            let current = shard.txns.get(transactional_id).cloned();
            let loaded_at = shard.loaded_at;
            drop(shard);
            let next = match current {
                None => TxnMetadata::new(
                    transactional_id,
                    self.broker.init_producer_id().await?.0,
                    timeout_ms,
                    now_ms(),
                ),
                Some(txn) => {
                    let new_id = if txn.needs_new_producer_id() {
                        Some(self.broker.init_producer_id().await?.0)
                    } else {
                        None
                    };
                    match txn.plan_init(timeout_ms, now_ms(), new_id)? {
                        InitPlan::Ready(next) => next,
                        InitPlan::AbortOpenFirst => {
                            tracing::info!(%transactional_id, producer_id = txn.producer_id,
                                epoch = txn.producer_epoch,
                                "a new instance fences the producer: aborting its open transaction");
                            let prepared = txn.plan_abort_open(now_ms())?;
                            self.end_prepared(&partition, loaded_at, prepared).await?;
                            continue;
                        }
                    }
                }
            };
            self.persist(&partition, loaded_at, &next).await?;
            return Ok((next.producer_id, next.producer_epoch));
        }
        Err(TxnError::Concurrent(transactional_id.to_owned()).into())
    }

    /// Adds partitions to the producer's transaction, opening it if none is.
    #[tracing::instrument(skip(self, partitions), fields(partitions = partitions.len()))]
    pub async fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: BTreeSet<TopicPartition>,
    ) -> Result<(), BrokerError> {
        validate_transactional_id(transactional_id)?;
        self.check_partitions_exist(&partitions)?;
        let _serial = self.lock_id(transactional_id, false).await?;
        let (partition, shard) = self.shard_for(transactional_id, false).await?;
        let txn = known(&shard, transactional_id)?;
        let loaded_at = shard.loaded_at;
        drop(shard);
        if let Some(next) = txn.plan_add_partitions(producer_id, epoch, &partitions, now_ms())? {
            self.persist(&partition, loaded_at, &next).await?;
        }
        Ok(())
    }

    /// Ends the producer's transaction: commit or abort. Answers with the producer id and
    /// epoch its next transaction runs under.
    #[tracing::instrument(skip(self))]
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(i64, i16), BrokerError> {
        validate_transactional_id(transactional_id)?;
        let _serial = self.lock_id(transactional_id, false).await?;
        let (partition, shard) = self.shard_for(transactional_id, false).await?;
        let txn = known(&shard, transactional_id)?;
        let loaded_at = shard.loaded_at;
        drop(shard);
        match txn.plan_end(producer_id, epoch, commit, now_ms())? {
            EndPlan::AlreadyEnded {
                producer_id,
                producer_epoch,
            } => Ok((producer_id, producer_epoch)),
            EndPlan::Prepare(prepared) => {
                let done = self.end_prepared(&partition, loaded_at, prepared).await?;
                Ok((done.producer_id, done.producer_epoch))
            }
        }
    }

    /// An operator's abort of a transactional id's open transaction (the producer is fenced).
    #[tracing::instrument(skip(self))]
    pub async fn abort(&self, transactional_id: &str) -> Result<(i64, i16), BrokerError> {
        validate_transactional_id(transactional_id)?;
        let _serial = self.lock_id(transactional_id, false).await?;
        let (partition, shard) = self.shard_for(transactional_id, false).await?;
        let txn = known(&shard, transactional_id)?;
        let loaded_at = shard.loaded_at;
        drop(shard);
        let prepared = txn.plan_abort_open(now_ms())?;
        let done = self.end_prepared(&partition, loaded_at, prepared).await?;
        Ok((done.producer_id, done.producer_epoch))
    }

    pub async fn describe(&self, transactional_id: &str) -> Result<TxnMetadata, BrokerError> {
        validate_transactional_id(transactional_id)?;
        let (_, shard) = self.shard_for(transactional_id, false).await?;
        known(&shard, transactional_id)
    }

    /// The transactional ids of every state partition this broker leads.
    pub async fn list(&self) -> Result<Vec<TxnMetadata>, BrokerError> {
        let Some(partitions) = self.state_partitions_if_exists().await? else {
            return Ok(Vec::new());
        };
        let me = self.broker.config().node_id;
        let led: Vec<u32> = self
            .broker
            .image()
            .topic(TRANSACTION_STATE_TOPIC)
            .map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.leader == Some(me) && p.partition.0 < partitions)
                    .map(|p| p.partition.0)
                    .collect()
            })
            .unwrap_or_default();
        let mut txns = Vec::new();
        for index in led {
            if let Ok((_, shard)) = self.shard_at(index, &format!("partition {index}")).await {
                txns.extend(shard.txns.values().cloned());
            }
        }
        Ok(txns)
    }

    /// Makes `prepared` durable, writes its markers, and completes it. Returns the
    /// completed state, or the prepared one if the markers are still being written when
    /// `MARKERS_ANSWER_WAIT` ends (a background task finishes them).
    async fn end_prepared(
        &self,
        partition: &Arc<Partition>,
        loaded_at: Option<i32>,
        prepared: TxnMetadata,
    ) -> Result<TxnMetadata, BrokerError> {
        self.persist(partition, loaded_at, &prepared).await?;
        let coordinator_epoch = loaded_at.unwrap_or(-1);
        let markers = Arc::clone(&self.markers);
        let txn = prepared.clone();
        let mut written = tokio::spawn(async move {
            markers
                .write_until_done(
                    txn.producer_id,
                    txn.producer_epoch,
                    txn.state == TxnState::PrepareCommit,
                    coordinator_epoch,
                    &txn.partitions,
                )
                .await
        });
        match tokio::time::timeout(MARKERS_ANSWER_WAIT, &mut written).await {
            Ok(Ok(Ok(()))) => self.complete(partition, loaded_at, &prepared).await,
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(join)) => Err(BrokerError::Internal(format!(
                "the marker writer task failed: {join}"
            ))),
            // The outcome is durable; the ticker writes the markers again and completes the
            // id. This writer stops, so that no marker of it arrives after the completion.
            Err(_) => {
                written.abort();
                tracing::warn!(transactional_id = %prepared.transactional_id,
                    "markers still being written; answering with the decided outcome");
                Ok(prepared)
            }
        }
    }

    /// Writes the completed state of `prepared`, with a new producer id if its epochs ran out.
    async fn complete(
        &self,
        partition: &Arc<Partition>,
        loaded_at: Option<i32>,
        prepared: &TxnMetadata,
    ) -> Result<TxnMetadata, BrokerError> {
        let new_id = if prepared.needs_new_producer_id() {
            Some(self.broker.init_producer_id().await?.0)
        } else {
            None
        };
        let done = prepared.completed(now_ms(), new_id);
        self.persist(partition, loaded_at, &done).await?;
        let metrics = &self.broker.metrics().transactions;
        let outcome = if prepared.state == TxnState::PrepareCommit {
            "commit"
        } else {
            "abort"
        };
        metrics
            .ended
            .get_or_create(&crate::metrics::TxnOutcomeLabels { outcome })
            .inc();
        if prepared.start_ms > 0 {
            let seconds = (done.last_update_ms - prepared.start_ms).max(0) as f64 / 1000.0;
            metrics.duration_seconds.observe(seconds);
        }
        Ok(done)
    }

    /// Appends `txn`'s state with acks=all, then installs it if the shard was not reloaded
    /// meanwhile (a reload read it from the log).
    async fn persist(
        &self,
        partition: &Arc<Partition>,
        loaded_at: Option<i32>,
        txn: &TxnMetadata,
    ) -> Result<(), BrokerError> {
        let batch = state_batch(txn, now_ms());
        partition
            .append(batch, Acks::All, STATE_WRITE_TIMEOUT)
            .await
            .map_err(|e| self.not_coordinator_if_moved(&txn.transactional_id, e))?;
        let (_, mut shard) = self.shard_for(&txn.transactional_id, false).await?;
        if shard.loaded_at == loaded_at {
            shard.txns.insert(txn.transactional_id.clone(), txn.clone());
        }
        Ok(())
    }

    /// Takes the lock that serializes `transactional_id`'s requests.
    async fn lock_id(
        &self,
        transactional_id: &str,
        create: bool,
    ) -> Result<OwnedMutexGuard<()>, BrokerError> {
        let lock = {
            let (_, mut shard) = self.shard_for(transactional_id, create).await?;
            Arc::clone(shard.locks.entry(transactional_id.to_owned()).or_default())
        };
        Ok(lock.lock_owned().await)
    }

    fn check_partitions_exist(
        &self,
        partitions: &BTreeSet<TopicPartition>,
    ) -> Result<(), BrokerError> {
        let image = self.broker.image();
        for tp in partitions {
            if tp.topic == TRANSACTION_STATE_TOPIC {
                return Err(BrokerError::InvalidRequest(format!(
                    "{TRANSACTION_STATE_TOPIC} cannot take part in a transaction"
                )));
            }
            let topic = image
                .topic(&tp.topic)
                .ok_or_else(|| BrokerError::UnknownTopic(tp.topic.clone()))?;
            if tp.partition as usize >= topic.partitions.len() {
                return Err(BrokerError::UnknownPartition {
                    topic: tp.topic.clone(),
                    partition: i64::from(tp.partition),
                    count: topic.partitions.len(),
                });
            }
        }
        Ok(())
    }

    async fn state_partitions(&self, create: bool) -> Result<u32, BrokerError> {
        let partitions = self.config.state_partitions;
        crate::internal_topic::ensure_compacted(
            &self.broker,
            TRANSACTION_STATE_TOPIC,
            partitions,
            create,
        )
        .await?
        .ok_or_else(|| not_coordinator("", None))
    }

    async fn state_partitions_if_exists(&self) -> Result<Option<u32>, BrokerError> {
        crate::internal_topic::ensure_compacted(&self.broker, TRANSACTION_STATE_TOPIC, 0, false)
            .await
    }

    /// The state partition of `transactional_id` and its shard, locked and loaded.
    async fn shard_for(
        &self,
        transactional_id: &str,
        create: bool,
    ) -> Result<(Arc<Partition>, OwnedMutexGuard<Shard>), BrokerError> {
        let partitions = match self.state_partitions(create).await {
            Err(BrokerError::NotTxnCoordinator { .. }) if !create => {
                return Err(TxnError::UnknownTransactionalId(transactional_id.to_owned()).into());
            }
            other => other?,
        };
        self.shard_at(
            partition_for(transactional_id, partitions),
            transactional_id,
        )
        .await
    }

    async fn shard_at(
        &self,
        index: u32,
        transactional_id: &str,
    ) -> Result<(Arc<Partition>, OwnedMutexGuard<Shard>), BrokerError> {
        let partition = self
            .broker
            .leader_partition(TRANSACTION_STATE_TOPIC, i64::from(index))
            .map_err(|e| self.not_coordinator_if_moved(transactional_id, e))?;
        let Role::Leader(state) = partition.current_role() else {
            return Err(not_coordinator(transactional_id, None));
        };
        let shard = {
            let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(shards.entry(index).or_default())
        };
        let mut shard = shard.lock_owned().await;
        if shard.loaded_at != Some(state.leader_epoch) {
            let started = std::time::Instant::now();
            let mut txns = LoadedTransactions::new();
            crate::internal_topic::replay_committed(&partition, |batches| {
                replay(batches, &mut txns)
            })
            .await?;
            shard.txns = txns;
            shard.loaded_at = Some(state.leader_epoch);
            tracing::info!(
                partition = index,
                leader_epoch = state.leader_epoch,
                transactional_ids = shard.txns.len(),
                ms = started.elapsed().as_millis() as u64,
                "loaded transaction states"
            );
        }
        Ok((partition, shard))
    }

    /// NOT_LEADER of a state partition, told to a transactional client, is NOT_COORDINATOR.
    fn not_coordinator_if_moved(&self, transactional_id: &str, error: BrokerError) -> BrokerError {
        match self.broker.with_leader_hint(error) {
            BrokerError::NotLeader { leader, .. } => not_coordinator(transactional_id, leader),
            other => other,
        }
    }

    /// Every tick: drops shards this broker no longer leads, aborts transactions past their
    /// timeout, and completes prepared ends (after a failover, or markers that outlasted
    /// `MARKERS_ANSWER_WAIT`).
    async fn run_ticker(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(Some(partitions)) = self.state_partitions_if_exists().await else {
                continue;
            };
            let me = self.broker.config().node_id;
            let led: Vec<u32> = self
                .broker
                .image()
                .topic(TRANSACTION_STATE_TOPIC)
                .map(|t| {
                    t.partitions
                        .iter()
                        .filter(|p| p.leader == Some(me) && p.partition.0 < partitions)
                        .map(|p| p.partition.0)
                        .collect()
                })
                .unwrap_or_default();
            {
                let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
                shards.retain(|index, _| led.contains(index));
            }
            for index in led {
                let due: Vec<TxnMetadata> = match self.shard_at(index, "").await {
                    Ok((_, shard)) => {
                        let now = now_ms();
                        shard
                            .txns
                            .values()
                            .filter(|t| t.state.is_prepared() || t.timed_out(now))
                            .cloned()
                            .collect()
                    }
                    Err(_) => continue,
                };
                for txn in due {
                    let started = self
                        .finishing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(txn.transactional_id.clone());
                    if !started {
                        continue;
                    }
                    let coordinator = Arc::clone(&self);
                    // One task per id: a slow marker write does not hold up the others. The
                    // id's lock keeps two of them (or a client request) from overlapping.
                    tokio::spawn(async move { coordinator.finish_due(txn).await });
                }
            }
        }
    }

    /// Completes a prepared end, or aborts a transaction past its timeout.
    async fn finish_due(&self, seen: TxnMetadata) {
        let id = seen.transactional_id.clone();
        let result = async {
            let _serial = self.lock_id(&id, false).await?;
            let (partition, shard) = self.shard_for(&id, false).await?;
            let Some(txn) = shard.txns.get(&id).cloned() else {
                return Ok(());
            };
            let loaded_at = shard.loaded_at;
            drop(shard);
            if txn.state.is_prepared() {
                let commit = txn.state == TxnState::PrepareCommit;
                self.markers
                    .write_until_done(
                        txn.producer_id,
                        txn.producer_epoch,
                        commit,
                        loaded_at.unwrap_or(-1),
                        &txn.partitions,
                    )
                    .await?;
                self.complete(&partition, loaded_at, &txn).await?;
                tracing::info!(transactional_id = %id, commit, "completed a prepared transaction");
            } else if txn.timed_out(now_ms()) {
                tracing::warn!(transactional_id = %id, timeout_ms = txn.timeout_ms,
                    "transaction timed out: aborting it and fencing its producer");
                self.broker
                    .metrics()
                    .transactions
                    .ended
                    .get_or_create(&crate::metrics::TxnOutcomeLabels { outcome: "timeout" })
                    .inc();
                let prepared = txn.plan_abort_open(now_ms())?;
                self.end_prepared(&partition, loaded_at, prepared).await?;
            }
            Ok::<(), BrokerError>(())
        }
        .await;
        self.finishing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Err(error) = result {
            tracing::debug!(transactional_id = %id, %error, "could not finish a transaction yet");
        }
    }
}

fn known(shard: &Shard, transactional_id: &str) -> Result<TxnMetadata, BrokerError> {
    shard
        .txns
        .get(transactional_id)
        .cloned()
        .ok_or_else(|| TxnError::UnknownTransactionalId(transactional_id.to_owned()).into())
}

fn not_coordinator(transactional_id: &str, coordinator: Option<(i32, String)>) -> BrokerError {
    BrokerError::NotTxnCoordinator {
        transactional_id: transactional_id.to_owned(),
        coordinator,
    }
}

fn validate_transactional_id(id: &str) -> Result<(), BrokerError> {
    if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
        return Err(BrokerError::InvalidRequest(format!(
            "invalid transactional id {id:?}: 1 to 255 characters, no control characters"
        )));
    }
    Ok(())
}

/// The `__consumer_offsets` partition that `AddOffsetsToTxn` adds for `group`.
pub fn offsets_partition_of(group: &str, offsets_partitions: u32) -> TopicPartition {
    TopicPartition {
        topic: OFFSETS_TOPIC.to_owned(),
        partition: crate::group::partition_for(group, offsets_partitions),
    }
}
