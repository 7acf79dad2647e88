//! What `__consumer_offsets` holds: one record per committed offset, keyed by group, topic
//! and partition (so compaction keeps the latest), and a record per deleted group. A
//! coordinator rebuilds its groups' offsets by replaying its partition.

use std::collections::BTreeMap;

use ferrolog_log::{BatchIter, RecordBatchBuilder, decode_records};
use ferrolog_proto::v1::group_log_record::Record;
use ferrolog_proto::v1::{GroupDeletedRecord, GroupLogRecord, OffsetCommitRecord};
use prost::Message;

use super::assignor::TopicPartition;
use super::state::Committed;
use crate::BrokerError;

/// Kafka's name, so operators find it where they expect it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's `offsets.topic.num.partitions` default.
pub const DEFAULT_OFFSETS_PARTITIONS: u32 = 50;

/// The partition of `__consumer_offsets` that holds `group`: Java's `String.hashCode`,
/// made non-negative as Kafka's `Utils.abs` does, modulo the partition count, so a group
/// lands where a Kafka cluster of the same size would put it.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    (hash & 0x7fff_ffff) as u32 % partitions.max(1)
}

/// The batch that records `offsets` as committed by `group`.
pub fn commit_batch(
    group: &str,
    offsets: &[(TopicPartition, Committed)],
    now_ms: i64,
) -> bytes::BytesMut {
    let mut builder = RecordBatchBuilder::new(now_ms);
    for (tp, committed) in offsets {
        let key = format!("{group}\0{}\0{}", tp.topic, tp.partition);
        let value = GroupLogRecord {
            record: Some(Record::OffsetCommit(OffsetCommitRecord {
                group_id: group.to_owned(),
                topic: tp.topic.clone(),
                partition: tp.partition as i32,
                offset: committed.offset,
                metadata: committed.metadata.clone(),
                commit_timestamp_ms: committed.commit_timestamp_ms,
            })),
        }
        .encode_to_vec();
        builder.push(now_ms, Some(key.as_bytes()), Some(&value), &[]);
    }
    builder.build()
}

/// The batch that records `group` as deleted.
pub fn delete_batch(group: &str, now_ms: i64) -> bytes::BytesMut {
    let mut builder = RecordBatchBuilder::new(now_ms);
    let value = GroupLogRecord {
        record: Some(Record::GroupDeleted(GroupDeletedRecord {
            group_id: group.to_owned(),
        })),
    }
    .encode_to_vec();
    builder.push(now_ms, Some(group.as_bytes()), Some(&value), &[]);
    builder.build()
}

/// Committed offsets per group, as replaying a partition yields them.
pub type LoadedOffsets = BTreeMap<String, BTreeMap<TopicPartition, Committed>>;

/// Applies the records of `batches` (concatenated RecordBatch v2) to `groups`.
pub fn replay(batches: &[u8], groups: &mut LoadedOffsets) -> Result<(), BrokerError> {
    for batch in BatchIter::new(batches) {
        let (_, bytes) = batch?;
        for record in decode_records(bytes)? {
            let Some(value) = record.value else {
                continue;
            };
            let decoded = GroupLogRecord::decode(value.as_ref()).map_err(|e| {
                BrokerError::Internal(format!(
                    "{OFFSETS_TOPIC} holds an undecodable record at offset {}: {e}",
                    record.offset.0
                ))
            })?;
            match decoded.record {
                Some(Record::OffsetCommit(c)) => {
                    let Ok(partition) = u32::try_from(c.partition) else {
                        continue;
                    };
                    groups.entry(c.group_id).or_default().insert(
                        TopicPartition {
                            topic: c.topic,
                            partition,
                        },
                        Committed {
                            offset: c.offset,
                            metadata: c.metadata,
                            commit_timestamp_ms: c.commit_timestamp_ms,
                        },
                    );
                }
                Some(Record::GroupDeleted(d)) => {
                    groups.remove(&d.group_id);
                }
                None => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_log::{LeaderEpoch, Offset, assign_offsets};

    #[test]
    fn groups_land_where_kafka_puts_them() {
        // Values of Java's String.hashCode, and where Kafka's Utils.abs(hash) % 50 puts
        // them; "my-group" hashes negative, so the sign mask matters.
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(
            partition_for("console-consumer-group", 50),
            210_291_998 % 50
        );
        assert_eq!(
            partition_for("my-group", 50),
            (-1_906_497_762i32 & 0x7fff_ffff) as u32 % 50
        );
        assert_eq!(partition_for("my-group", 50), 36);
        assert_eq!(partition_for("a", 50), 97 % 50);
        assert_eq!(partition_for("ab", 50), (97 * 31 + 98) % 50);
        for group in ["orders", "billing-consumers", "g"] {
            assert!(partition_for(group, 50) < 50);
        }
    }

    #[test]
    fn replaying_commits_and_deletions_rebuilds_the_latest_offsets() {
        let tp = |p| TopicPartition {
            topic: "t".to_owned(),
            partition: p,
        };
        let committed = |offset| Committed {
            offset,
            metadata: String::new(),
            commit_timestamp_ms: 7,
        };
        let mut log = Vec::new();
        let mut next = 0i64;
        let mut push = |mut batch: bytes::BytesMut| {
            assign_offsets(&mut batch, Offset(next), LeaderEpoch(0));
            let header = ferrolog_log::BatchHeader::parse(&batch).expect("header");
            next = header.next_offset().0;
            log.extend_from_slice(&batch);
        };
        push(commit_batch(
            "a",
            &[(tp(0), committed(5)), (tp(1), committed(9))],
            1,
        ));
        push(commit_batch("b", &[(tp(0), committed(3))], 2));
        push(commit_batch("a", &[(tp(0), committed(6))], 3));
        push(delete_batch("b", 4));
        let mut groups = LoadedOffsets::new();
        replay(&log, &mut groups).expect("replay");
        assert_eq!(groups.len(), 1, "b was deleted");
        assert_eq!(groups["a"][&tp(0)].offset, 6);
        assert_eq!(groups["a"][&tp(1)].offset, 9);
    }
}
