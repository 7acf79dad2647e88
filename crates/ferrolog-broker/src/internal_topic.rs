//! What the coordinators (groups on `__consumer_offsets`, transactions on
//! `__transaction_state`) share about their internal topics: creating one on first use, and
//! replaying a partition into memory when this broker becomes its leader.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::{Broker, BrokerError, InternalTopic, Partition};

/// How long a new coordinator waits for its partition's records to be committed before
/// loading them (acknowledged writes of the previous leader are among them).
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read per step while replaying a partition.
const LOAD_READ_BYTES: u32 = 4 * 1024 * 1024;
/// How long the broker that creates an internal topic waits for its partitions to open.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The partition count of the compacted internal topic `name`, created with `partitions`
/// partitions when it does not exist yet and `create` is set; `None` when it does not exist
/// and `create` is not set.
pub(crate) async fn ensure_compacted(
    broker: &Broker,
    name: &str,
    partitions: u32,
    create: bool,
) -> Result<Option<u32>, BrokerError> {
    if let Some(topic) = broker.image().topic(name) {
        return Ok(Some(topic.partitions.len() as u32));
    }
    if !create {
        return Ok(None);
    }
    let topic = InternalTopic {
        name: name.to_owned(),
        partitions,
        // min(3, live brokers), as for any topic.
        replication_factor: 0,
        // Compacted, as in Kafka: only each key's latest record is kept, so a coordinator
        // that takes over replays a log no longer than the state it holds.
        configs: BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]),
    };
    // `None`: another broker created it first.
    if let Some(index) = broker.control_plane().create_internal_topic(topic).await? {
        tracing::info!(partitions, "created {name}");
        broker.wait_reconciled(index, CREATE_TIMEOUT).await?;
    }
    Ok(broker
        .image()
        .topic(name)
        .map(|t| t.partitions.len() as u32))
}

/// Replays `partition` from its log start through `apply`, one read of concatenated
/// batches at a time. Waits (bounded) until everything in its log when the load starts is
/// committed, so acknowledged writes of the previous leader are all seen.
pub(crate) async fn replay_committed(
    partition: &Partition,
    mut apply: impl FnMut(&[u8]) -> Result<(), BrokerError>,
) -> Result<(), BrokerError> {
    let end = partition.log_end_offset();
    let deadline = Instant::now() + LOAD_TIMEOUT;
    while partition.high_watermark() < end {
        if Instant::now() >= deadline {
            return Err(BrokerError::Timeout {
                timeout_ms: LOAD_TIMEOUT.as_millis() as u64,
                waiting_for: "an internal partition's records to be committed before loading",
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut offset = partition.log_start_offset();
    while offset < end {
        let fetched = partition
            .fetch(offset, LOAD_READ_BYTES, Duration::ZERO)
            .await?;
        if fetched.read.batches.is_empty() {
            break;
        }
        apply(&fetched.read.batches)?;
        offset = crate::service::next_offset(&fetched.read.batches, offset);
    }
    Ok(())
}
