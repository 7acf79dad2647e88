//! Writing a transaction's commit or abort markers to every partition it touched: here for
//! partitions this broker leads, over gRPC (`TransactionService.WriteTxnMarkers`) to the
//! leader of every other one.
//!
//! A marker is idempotent where it lands (the log appends it only when its epoch is newer
//! than the producer's at that partition), so the coordinator simply sends the markers
//! again until every partition has answered: after a timeout, a leader change, or a
//! coordinator failover.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolog_log::{ControlType, build_control_batch};
use ferrolog_metadata::{BrokerId, PartitionId};
use ferrolog_proto::v1::Acks;
use ferrolog_proto::v1::WriteTxnMarkersRequest;
use ferrolog_proto::v1::transaction_service_client::TransactionServiceClient;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use super::log::to_wire_partitions;
use crate::group::{GroupCoordinator, OFFSETS_TOPIC, TopicPartition};
use crate::partition::now_ms;
use crate::{Broker, BrokerError};

/// How long one marker append waits for the partition's in-sync replicas.
const MARKER_APPEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call to another broker may take.
const MARKER_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `write_until_done` keeps trying before it reports a timeout (the coordinator
/// tries again at its next tick).
const MARKERS_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between rounds while some partition has not answered.
const MARKER_RETRY_BACKOFF: Duration = Duration::from_millis(100);
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends markers, and appends the ones for partitions led here.
pub struct MarkerWriter {
    broker: Arc<Broker>,
    /// Set once the group coordinator runs: settles transactional offsets at markers for
    /// `__consumer_offsets` partitions.
    groups: OnceCell<Arc<GroupCoordinator>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl MarkerWriter {
    pub fn new(broker: Arc<Broker>) -> Arc<Self> {
        Arc::new(Self {
            broker,
            groups: OnceCell::new(),
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// Connects the group coordinator, which settles offsets committed in transactions.
    pub fn set_group_coordinator(&self, groups: Arc<GroupCoordinator>) {
        // A second call keeps the first: there is one group coordinator per broker.
        let _ = self.groups.set(groups);
    }

    /// Writes the markers to every partition, retrying the ones whose leader did not answer
    /// (or moved), until all are written or `MARKERS_DEADLINE` passes. A partition whose
    /// topic was deleted needs no marker.
    #[tracing::instrument(skip(self, partitions), fields(partitions = partitions.len()))]
    pub async fn write_until_done(
        &self,
        producer_id: i64,
        marker_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        partitions: &BTreeSet<TopicPartition>,
    ) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + MARKERS_DEADLINE;
        let mut remaining = partitions.clone();
        let mut last_error = None;
        loop {
            let by_leader = self.by_leader(&mut remaining);
            let me = self.broker.config().node_id;
            let calls = by_leader.into_iter().map(|(leader, tps)| async move {
                let result = if leader == me {
                    self.write_local(producer_id, marker_epoch, commit, coordinator_epoch, &tps)
                        .await
                } else {
                    self.write_remote(
                        leader,
                        producer_id,
                        marker_epoch,
                        commit,
                        coordinator_epoch,
                        &tps,
                    )
                    .await
                };
                (tps, result)
            });
            for (tps, result) in futures::future::join_all(calls).await {
                match result {
                    Ok(()) => {
                        for tp in &tps {
                            remaining.remove(tp);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "transaction markers not written yet; retrying");
                        last_error = Some(error);
                    }
                }
            }
            if remaining.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() + MARKER_RETRY_BACKOFF >= deadline {
                return Err(last_error.unwrap_or(BrokerError::Timeout {
                    timeout_ms: MARKERS_DEADLINE.as_millis() as u64,
                    waiting_for: "transaction markers (a partition has no leader)",
                }));
            }
            tokio::time::sleep(MARKER_RETRY_BACKOFF).await;
        }
    }

    /// The remaining partitions grouped by their current leader; partitions of deleted
    /// topics are dropped from `remaining`, partitions without a leader wait.
    fn by_leader(
        &self,
        remaining: &mut BTreeSet<TopicPartition>,
    ) -> BTreeMap<BrokerId, Vec<TopicPartition>> {
        let image = self.broker.image();
        remaining.retain(|tp| {
            image
                .topic(&tp.topic)
                .is_some_and(|t| (tp.partition as usize) < t.partitions.len())
        });
        let mut by_leader: BTreeMap<BrokerId, Vec<TopicPartition>> = BTreeMap::new();
        for tp in remaining.iter() {
            let leader = image
                .topic(&tp.topic)
                .and_then(|t| t.partition(PartitionId(tp.partition)))
                .and_then(|p| p.leader);
            if let Some(leader) = leader {
                by_leader.entry(leader).or_default().push(tp.clone());
            }
        }
        by_leader
    }

    /// Appends the markers to partitions this broker leads (the WriteTxnMarkers handler).
    pub async fn write_local(
        &self,
        producer_id: i64,
        marker_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        partitions: &[TopicPartition],
    ) -> Result<(), BrokerError> {
        let appends = partitions.iter().map(|tp| async move {
            if tp.topic == OFFSETS_TOPIC {
                let groups = self.groups.get().ok_or_else(|| {
                    BrokerError::Internal("the group coordinator is not running".to_owned())
                })?;
                return groups
                    .settle_transaction(tp.partition, producer_id, marker_epoch, commit)
                    .await;
            }
            let partition = self
                .broker
                .leader_partition(&tp.topic, i64::from(tp.partition))?;
            let marker = if commit {
                ControlType::Commit
            } else {
                ControlType::Abort
            };
            let batch = build_control_batch(
                producer_id,
                marker_epoch,
                marker,
                coordinator_epoch,
                now_ms(),
            );
            let info = partition
                .append(batch, Acks::All, MARKER_APPEND_TIMEOUT)
                .await?;
            if !info.duplicate {
                self.broker.metrics().transactions.markers_written.inc();
            }
            Ok(())
        });
        for result in futures::future::join_all(appends).await {
            result?;
        }
        Ok(())
    }

    async fn write_remote(
        &self,
        leader: BrokerId,
        producer_id: i64,
        marker_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        partitions: &[TopicPartition],
    ) -> Result<(), BrokerError> {
        let address = self
            .broker
            .image()
            .brokers
            .get(&leader)
            .map(|b| b.address.clone())
            .ok_or_else(|| BrokerError::Internal(format!("broker {leader} has no address")))?;
        let channel = self.channel(&address)?;
        let set: BTreeSet<TopicPartition> = partitions.iter().cloned().collect();
        let request = WriteTxnMarkersRequest {
            producer_id,
            producer_epoch: i32::from(marker_epoch),
            commit,
            coordinator_epoch,
            partitions: to_wire_partitions(&set),
        };
        let mut client = TransactionServiceClient::new(channel);
        match tokio::time::timeout(MARKER_CALL_TIMEOUT, client.write_txn_markers(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(BrokerError::Internal(format!(
                "broker {leader} at {address} refused the markers: {}",
                status.message()
            ))),
            Err(_) => Err(BrokerError::Timeout {
                timeout_ms: MARKER_CALL_TIMEOUT.as_millis() as u64,
                waiting_for: "another broker to write transaction markers",
            }),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, BrokerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = Channel::from_shared(format!("http://{address}"))
            .map_err(|e| BrokerError::Internal(format!("bad broker address {address}: {e}")))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}
