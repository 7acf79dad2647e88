//! ReplicationService: followers' fetches, answered by the partition leader.

use std::sync::Arc;
use std::time::Duration;

use ferrolog_log::Offset;
use ferrolog_metadata::BrokerId;
use ferrolog_proto::v1;
use ferrolog_proto::v1::replication_service_server::ReplicationService;
use tonic::{Request, Response, Status};

use crate::partition::ReplicaFetchOutcome;
use crate::{Broker, BrokerError};

/// Longest a replica fetch may be held, whatever it asks.
const MAX_REPLICA_FETCH_WAIT: Duration = Duration::from_secs(5);

/// The ReplicationService implementation.
#[derive(Clone)]
pub struct ReplicationApi {
    broker: Arc<Broker>,
}

impl ReplicationApi {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    #[tracing::instrument(name = "replica_fetch", skip_all, fields(topic = %request.topic,
        partition = request.partition, replica = request.replica_id, offset = request.fetch_offset))]
    async fn replica_fetch_inner(
        &self,
        request: v1::ReplicaFetchRequest,
    ) -> Result<v1::ReplicaFetchResponse, BrokerError> {
        let partition = u32::try_from(request.partition)
            .ok()
            .and_then(|p| self.broker.partitions().get(&request.topic, p))
            .ok_or_else(|| BrokerError::NotLeader {
                topic: request.topic.clone(),
                partition: request.partition.max(0) as u32,
                leader: None,
            })?;
        let outcome = partition
            .replica_fetch(
                BrokerId(request.replica_id),
                request.leader_epoch,
                Offset(request.fetch_offset),
                Offset(request.durable_offset),
                request.last_fetched_epoch,
                request.max_bytes,
                Duration::from_millis(u64::from(request.max_wait_ms)).min(MAX_REPLICA_FETCH_WAIT),
            )
            .await?;
        Ok(match outcome {
            ReplicaFetchOutcome::Records {
                read,
                high_watermark,
            } => {
                let metrics = self.broker.metrics();
                metrics.replicated_bytes.inc_by(read.batches.len() as u64);
                v1::ReplicaFetchResponse {
                    high_watermark: high_watermark.0,
                    log_start_offset: read.log_start_offset.0,
                    log_end_offset: read.log_end_offset.0,
                    record_batches: read.batches,
                    ..Default::default()
                }
            }
            ReplicaFetchOutcome::Diverging { epoch, end_offset } => v1::ReplicaFetchResponse {
                high_watermark: partition.high_watermark().0,
                log_start_offset: partition.log_start_offset().0,
                diverging_epoch: Some(v1::DivergingEpoch {
                    epoch,
                    end_offset: end_offset.0,
                }),
                ..Default::default()
            },
        })
    }
}

#[tonic::async_trait]
impl ReplicationService for ReplicationApi {
    async fn replica_fetch(
        &self,
        request: Request<v1::ReplicaFetchRequest>,
    ) -> Result<Response<v1::ReplicaFetchResponse>, Status> {
        let result = self.replica_fetch_inner(request.into_inner()).await;
        let code = result.as_ref().err().map(BrokerError::code);
        self.broker.metrics().count_request("replica_fetch", code);
        // Errors travel in the response: a follower acts on the code, and an expected
        // NOT_LEADER during a leader change is not a transport failure.
        Ok(Response::new(match result {
            Ok(response) => response,
            Err(error) => v1::ReplicaFetchResponse {
                error_code: error.code() as i32,
                error_message: error.to_string(),
                // A follower below our log start restarts there.
                log_start_offset: match &error {
                    BrokerError::Log(ferrolog_log::LogError::OffsetOutOfRange {
                        log_start,
                        ..
                    }) => log_start.0,
                    _ => 0,
                },
                ..Default::default()
            },
        }))
    }
}
