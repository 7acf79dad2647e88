//! Producer ids for idempotent producers, handed out from blocks the controller gives this
//! broker process through the metadata log (Kafka's KIP-730).
//!
//! A block is committed as a `ProducerIdsRecord` naming this broker and its incarnation; once
//! the broker's image has applied it, the block is read back from the image. Ids of a block
//! this process did not finish are never used again: a restarted broker registers a new
//! incarnation and asks for a new block, and blocks only move forward, so no producer id is
//! handed out twice in the cluster's life.

use std::sync::Arc;
use std::time::Duration;

use ferrolog_metadata::{BrokerId, MetadataView};
use tokio::sync::Mutex;

use crate::BrokerError;
use crate::control_plane::ControlPlane;
use crate::metrics::BrokerMetrics;

/// The longest an InitProducerId waits for a new block (controller failover included).
pub const PRODUCER_ID_ALLOCATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts while the controller is unreachable or changing.
const ALLOCATION_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Hands out producer ids from this broker's current block, taking a new block from the
/// controller when it runs out. Concurrent callers share one allocation (the lock is held
/// across it), so a burst of producers never asks for more than one block at a time.
pub struct ProducerIdManager {
    broker: BrokerId,
    incarnation_id: u64,
    control_plane: Arc<dyn ControlPlane>,
    metadata: MetadataView,
    metrics: Arc<BrokerMetrics>,
    /// The ids left in the current block: `next..end`.
    current: Mutex<Option<(i64, i64)>>,
}

impl ProducerIdManager {
    pub fn new(
        broker: BrokerId,
        incarnation_id: u64,
        control_plane: Arc<dyn ControlPlane>,
        metadata: MetadataView,
        metrics: Arc<BrokerMetrics>,
    ) -> Self {
        ProducerIdManager {
            broker,
            incarnation_id,
            control_plane,
            metadata,
            metrics,
            current: Mutex::new(None),
        }
    }

    /// A producer id no one else has ever been given.
    #[tracing::instrument(skip(self), fields(broker = %self.broker))]
    pub async fn next_producer_id(&self) -> Result<i64, BrokerError> {
        let mut current = self.current.lock().await;
        if let Some((next, end)) = *current
            && next < end
        {
            *current = Some((next + 1, end));
            self.metrics.producer_ids_handed_out.inc();
            return Ok(next);
        }
        let (first, end) = tokio::time::timeout(PRODUCER_ID_ALLOCATION_TIMEOUT, self.allocate())
            .await
            .map_err(|_| BrokerError::Timeout {
                timeout_ms: PRODUCER_ID_ALLOCATION_TIMEOUT.as_millis() as u64,
                waiting_for: "a block of producer ids from the controller",
            })??;
        *current = Some((first + 1, end));
        self.metrics.producer_ids_handed_out.inc();
        Ok(first)
    }

    /// Asks the controller for a block until it commits one, then reads it from the image.
    async fn allocate(&self) -> Result<(i64, i64), BrokerError> {
        loop {
            match self
                .control_plane
                .allocate_producer_ids(self.broker, self.incarnation_id)
                .await
            {
                Ok(index) => {
                    let mut images = self.metadata.subscribe();
                    let image = images
                        .wait_for(|image| image.applied_index >= index)
                        .await
                        .map_err(|_| BrokerError::ShuttingDown)?
                        .clone();
                    let block = image.producer_id_blocks.get(&self.broker).copied();
                    match block {
                        Some(block) if block.incarnation_id == self.incarnation_id => {
                            self.metrics.producer_id_blocks.inc();
                            tracing::info!(
                                first = block.first,
                                next = block.next,
                                "took a block of producer ids"
                            );
                            return Ok((block.first, block.next));
                        }
                        // Only this process asks for this incarnation's blocks, one at a
                        // time under the lock: another block here means a bug.
                        other => {
                            return Err(BrokerError::Internal(format!(
                                "the block committed at index {index} is not this process's: \\
                                 {other:?}"
                            )));
                        }
                    }
                }
                Err(error) if is_transient(error.code) => {
                    tracing::debug!(%error, "producer id allocation failed; retrying");
                    tokio::time::sleep(ALLOCATION_RETRY_PAUSE).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Errors that a controller failover or a registration still in progress explains.
fn is_transient(code: ferrolog_proto::v1::ErrorCode) -> bool {
    use ferrolog_proto::v1::ErrorCode;
    matches!(
        code,
        ErrorCode::NotController
            | ErrorCode::RequestTimedOut
            | ErrorCode::BrokerNotAvailable
            | ErrorCode::FencedEpoch
    )
}
