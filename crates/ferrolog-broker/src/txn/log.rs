//! What `__transaction_state` holds: one record per state change of a transactional id, keyed
//! by the id, so compaction keeps each id's latest state. A coordinator rebuilds its ids by
//! replaying its partition; the last record of each key wins.

use std::collections::{BTreeMap, BTreeSet};

use ferrolog_log::{BatchIter, RecordBatchBuilder, decode_records};
use ferrolog_proto::v1::{TopicPartitions, TransactionLogRecord, TransactionState};
use prost::Message;

use super::state::{TxnMetadata, TxnState};
use crate::BrokerError;
use crate::group::TopicPartition;

/// Kafka's name, so operators find it where they expect it.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// Kafka's `transaction.state.log.num.partitions` default.
pub const DEFAULT_TRANSACTION_STATE_PARTITIONS: u32 = 50;

/// The partition of `__transaction_state` that holds `transactional_id`: the same hash as
/// groups use (Java's `String.hashCode`, made non-negative), as Kafka does.
pub fn partition_for(transactional_id: &str, partitions: u32) -> u32 {
    crate::group::partition_for(transactional_id, partitions)
}

/// The batch that records `txn`'s state.
pub fn state_batch(txn: &TxnMetadata, now_ms: i64) -> bytes::BytesMut {
    let value = to_record(txn).encode_to_vec();
    let mut builder = RecordBatchBuilder::new(now_ms);
    builder.push(
        now_ms,
        Some(txn.transactional_id.as_bytes()),
        Some(&value),
        &[],
    );
    builder.build()
}

pub fn to_record(txn: &TxnMetadata) -> TransactionLogRecord {
    TransactionLogRecord {
        transactional_id: txn.transactional_id.clone(),
        producer_id: txn.producer_id,
        producer_epoch: i32::from(txn.producer_epoch),
        timeout_ms: txn.timeout_ms,
        state: txn.state.to_wire() as i32,
        partitions: to_wire_partitions(&txn.partitions),
        start_timestamp_ms: txn.start_ms,
        last_update_ms: txn.last_update_ms,
        last_producer_epoch: i32::from(txn.last_producer_epoch),
    }
}

/// Partitions grouped by topic, as the wire carries them.
pub fn to_wire_partitions(partitions: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
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

/// The partitions of `wire`; a negative partition is the caller's mistake.
pub fn from_wire_partitions(
    wire: &[TopicPartitions],
) -> Result<BTreeSet<TopicPartition>, BrokerError> {
    let mut partitions = BTreeSet::new();
    for tp in wire {
        for &p in &tp.partitions {
            let partition = u32::try_from(p).map_err(|_| {
                BrokerError::InvalidRequest(format!("partition {p} of {} is negative", tp.topic))
            })?;
            partitions.insert(TopicPartition {
                topic: tp.topic.clone(),
                partition,
            });
        }
    }
    Ok(partitions)
}

fn from_record(record: TransactionLogRecord) -> Option<TxnMetadata> {
    let epoch = |e: i32| i16::try_from(e).ok();
    let state = TransactionState::try_from(record.state).ok()?;
    Some(TxnMetadata {
        producer_id: record.producer_id,
        producer_epoch: epoch(record.producer_epoch)?,
        last_producer_epoch: epoch(record.last_producer_epoch)?,
        timeout_ms: record.timeout_ms,
        state: TxnState::from_wire(state),
        partitions: from_wire_partitions(&record.partitions).ok()?,
        start_ms: record.start_timestamp_ms,
        last_update_ms: record.last_update_ms,
        transactional_id: record.transactional_id,
    })
}

/// Transactional ids by name, as replaying a partition yields them.
pub type LoadedTransactions = BTreeMap<String, TxnMetadata>;

/// Applies the records of `batches` (concatenated RecordBatch v2) to `txns`: each record is
/// an id's whole state, so the latest wins; a tombstone removes the id.
pub fn replay(batches: &[u8], txns: &mut LoadedTransactions) -> Result<(), BrokerError> {
    for batch in BatchIter::new(batches) {
        let (_, bytes) = batch?;
        for record in decode_records(bytes)? {
            let Some(key) = record.key.as_deref() else {
                continue;
            };
            let id = String::from_utf8_lossy(key).into_owned();
            let Some(value) = record.value else {
                txns.remove(&id);
                continue;
            };
            let decoded = TransactionLogRecord::decode(value.as_ref()).map_err(|e| {
                BrokerError::Internal(format!(
                    "{TRANSACTION_STATE_TOPIC} holds an undecodable record at offset {}: {e}",
                    record.offset.0
                ))
            })?;
            match from_record(decoded) {
                Some(txn) if txn.transactional_id == id => {
                    txns.insert(id, txn);
                }
                _ => {
                    return Err(BrokerError::Internal(format!(
                        "{TRANSACTION_STATE_TOPIC} holds an invalid state for '{id}' at offset {}",
                        record.offset.0
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_log::{BatchHeader, LeaderEpoch, Offset, assign_offsets};

    #[test]
    fn the_latest_state_of_each_id_wins_on_replay() {
        let tp = |p| TopicPartition {
            topic: "t".to_owned(),
            partition: p,
        };
        let mut a = TxnMetadata::new("a", 7, 60_000, 1);
        let b = TxnMetadata::new("b", 8, 10_000, 1);
        let mut log = Vec::new();
        let mut next = 0i64;
        let mut push = |mut batch: bytes::BytesMut| {
            assign_offsets(&mut batch, Offset(next), LeaderEpoch(0));
            next = BatchHeader::parse(&batch).expect("header").next_offset().0;
            log.extend_from_slice(&batch);
        };
        push(state_batch(&a, 1));
        push(state_batch(&b, 1));
        a.state = TxnState::Ongoing;
        a.partitions.extend([tp(0), tp(3)]);
        a.start_ms = 5;
        push(state_batch(&a, 5));
        let mut txns = LoadedTransactions::new();
        replay(&log, &mut txns).expect("replay");
        assert_eq!(txns.len(), 2);
        assert_eq!(txns["a"], a);
        assert_eq!(txns["b"], b);
    }
}
