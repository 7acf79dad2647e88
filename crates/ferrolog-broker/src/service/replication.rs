//! ReplicationService: followers' fetches, answered by the partition leaders on this
//! broker. One request carries every partition a follower follows here, and it long-polls
//! on all of them at once: it answers as soon as any has batches or news. The answer goes
//! out through `replication_server`, which sends the batches without copying them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolog_log::Offset;
use ferrolog_metadata::BrokerId;
use ferrolog_proto::v1;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::partition::{Divergence, Partition};
use crate::{Broker, BrokerError};

/// Longest a replica fetch may be held, whatever it asks.
const MAX_REPLICA_FETCH_WAIT: Duration = Duration::from_secs(5);

/// The ReplicationService implementation.
#[derive(Clone)]
pub struct ReplicationApi {
    broker: Arc<Broker>,
}

/// One partition of a replica fetch while its answer takes shape.
struct PartitionFetch {
    asked: v1::ReplicaFetchPartition,
    /// Where its batches come from, while the answer is still to be read.
    pending: Option<Arc<Partition>>,
    /// The answer when it was settled before any read: an error or a divergence.
    settled: Option<v1::ReplicaFetchPartitionData>,
}

impl ReplicationApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    /// Answers one replica fetch (see `replication_server` for how it travels).
    pub(crate) async fn replica_fetch(
        &self,
        request: v1::ReplicaFetchRequest,
    ) -> v1::ReplicaFetchResponse {
        let response = self.replica_fetch_inner(request).await;
        let error = response
            .partitions
            .iter()
            .find(|p| p.error_code != v1::ErrorCode::Unspecified as i32)
            .and_then(|p| v1::ErrorCode::try_from(p.error_code).ok());
        self.broker.metrics().count_request("replica_fetch", error);
        response
    }

    #[tracing::instrument(name = "replica_fetch", skip_all, fields(replica = request.replica_id,
        partitions = request.partitions.len()))]
    async fn replica_fetch_inner(
        &self,
        request: v1::ReplicaFetchRequest,
    ) -> v1::ReplicaFetchResponse {
        let follower = BrokerId(request.replica_id);
        let max_wait =
            Duration::from_millis(u64::from(request.max_wait_ms)).min(MAX_REPLICA_FETCH_WAIT);
        let deadline = Instant::now() + max_wait;
        let fetches: Vec<PartitionFetch> = request
            .partitions
            .into_iter()
            .map(|asked| self.begin(follower, asked))
            .collect();
        // Subscribed before the first read: an append between a read and the wait still
        // wakes the wait. A role change wakes it too, and the read after it fails.
        let mut wakers = tokio_stream::StreamMap::new();
        for (i, fetch) in fetches.iter().enumerate() {
            if let Some(partition) = &fetch.pending {
                wakers.insert(i, WatchStream::from_changes(partition.subscribe_appended()));
            }
        }
        loop {
            let (response, news) = self.read_all(&fetches, request.max_bytes);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if news || remaining.is_zero() {
                return response;
            }
            match tokio::time::timeout(remaining, wakers.next()).await {
                Ok(Some(_)) => {}
                // Out of time, or every partition is gone: answer with what there is.
                Ok(None) | Err(_) => return self.read_all(&fetches, request.max_bytes).0,
            }
        }
    }

    /// Checks one requested partition and records the follower's progress in it.
    fn begin(&self, follower: BrokerId, asked: v1::ReplicaFetchPartition) -> PartitionFetch {
        let settle = |error: BrokerError, asked| PartitionFetch {
            settled: Some(error_data(&error)),
            pending: None,
            asked,
        };
        // A negative partition names nothing anywhere: no leader change makes it valid.
        let Ok(id) = u32::try_from(asked.partition) else {
            let error = BrokerError::UnknownPartition {
                topic: asked.topic.clone(),
                partition: i64::from(asked.partition),
                count: self
                    .broker
                    .image()
                    .topic(&asked.topic)
                    .map_or(0, |t| t.partitions.len()),
            };
            return settle(error, asked);
        };
        let Some(partition) = self.broker.partitions().get(&asked.topic, id) else {
            let error = BrokerError::NotLeader {
                topic: asked.topic.clone(),
                partition: id,
                leader: None,
            };
            return settle(error, asked);
        };
        let begun = partition.begin_replica_fetch(
            follower,
            asked.leader_epoch,
            Offset(asked.fetch_offset),
            Offset(asked.durable_offset),
            asked.last_fetched_epoch,
        );
        let settled = match begun {
            Ok(None) => None,
            Ok(Some(Divergence { epoch, end_offset })) => Some(v1::ReplicaFetchPartitionData {
                high_watermark: partition.high_watermark().0,
                log_start_offset: partition.log_start_offset().0,
                diverging_epoch: Some(v1::DivergingEpoch {
                    epoch,
                    end_offset: end_offset.0,
                }),
                ..Default::default()
            }),
            Err(error) => Some(error_data(&error)),
        };
        PartitionFetch {
            pending: settled.is_none().then_some(partition),
            settled,
            asked,
        }
    }

    /// Reads every pending partition within the request's byte budget. Returns the answer
    /// and whether it says anything (batches, an error, a divergence) worth sending now.
    fn read_all(
        &self,
        fetches: &[PartitionFetch],
        max_bytes: u32,
    ) -> (v1::ReplicaFetchResponse, bool) {
        let mut budget = max_bytes;
        let mut news = false;
        let mut sent_bytes = 0u64;
        let mut from_memory_bytes = 0u64;
        let partitions = fetches
            .iter()
            .map(|fetch| {
                if let Some(settled) = &fetch.settled {
                    news = true;
                    return settled.clone();
                }
                let Some(partition) = &fetch.pending else {
                    return v1::ReplicaFetchPartitionData::default();
                };
                // Past the budget, a partition waits for the next request; the first one
                // with batches gets at least one whole batch (KIP-74).
                let limit = fetch.asked.max_bytes.min(budget);
                if limit == 0 {
                    return v1::ReplicaFetchPartitionData {
                        high_watermark: partition.high_watermark().0,
                        // Tells the follower there is more here: it asks again at once.
                        log_end_offset: partition.log_end_offset().0,
                        ..Default::default()
                    };
                }
                let read = partition.read_for_follower(
                    fetch.asked.leader_epoch,
                    Offset(fetch.asked.fetch_offset),
                    limit,
                );
                match read {
                    // Only the first partition with batches may go over the budget (by its
                    // first batch); any other waits for the next request.
                    Ok(outcome)
                        if sent_bytes > 0 && outcome.read.batches.len() > limit as usize =>
                    {
                        v1::ReplicaFetchPartitionData {
                            high_watermark: outcome.high_watermark.0,
                            log_start_offset: outcome.read.log_start_offset.0,
                            log_end_offset: outcome.read.log_end_offset.0,
                            ..Default::default()
                        }
                    }
                    Ok(outcome) => {
                        let bytes = outcome.read.batches.len();
                        budget = budget.saturating_sub(bytes as u32);
                        sent_bytes += bytes as u64;
                        if outcome.read.from_memory {
                            from_memory_bytes += bytes as u64;
                        }
                        news |= bytes > 0;
                        v1::ReplicaFetchPartitionData {
                            high_watermark: outcome.high_watermark.0,
                            log_start_offset: outcome.read.log_start_offset.0,
                            log_end_offset: outcome.read.log_end_offset.0,
                            record_batches: outcome.read.batches,
                            ..Default::default()
                        }
                    }
                    Err(error) => {
                        news = true;
                        error_data(&error)
                    }
                }
            })
            .collect();
        if news {
            let metrics = self.broker.metrics();
            metrics.replicated_bytes.inc_by(sent_bytes);
            metrics
                .replicated_from_memory_bytes
                .inc_by(from_memory_bytes);
        }
        (v1::ReplicaFetchResponse { partitions }, news)
    }
}

/// A partition's error as the follower acts on it. Errors travel in the answer: an
/// expected NOT_LEADER during a leader change is not a transport failure, and it concerns
/// one partition, not the others in the request.
fn error_data(error: &BrokerError) -> v1::ReplicaFetchPartitionData {
    v1::ReplicaFetchPartitionData {
        error_code: error.code() as i32,
        error_message: error.to_string(),
        // A follower below our log start restarts there.
        log_start_offset: match error {
            BrokerError::Log(ferrolog_log::LogError::OffsetOutOfRange { log_start, .. }) => {
                log_start.0
            }
            _ => 0,
        },
        ..Default::default()
    }
}
