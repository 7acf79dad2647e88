//! What `__consumer_offsets` holds: one record per committed offset, keyed by group, topic
//! and partition (so compaction keeps the latest), and, when a group is deleted, a tombstone
//! for each of its offsets and one for the group. A coordinator rebuilds its groups' offsets
//! by replaying its partition.
//!
//! The topic is compacted (`cleanup.policy=compact`), so a replay reads only the latest
//! record of each key, with gaps between offsets, and tombstones vanish once older than
//! `delete.retention.ms`. That is why a deletion writes tombstones: a group-deleted record
//! alone would leave the group's old commits, each under its own key, in the compacted log
//! forever. Replay applies a tombstone by its key, and still understands the
//! `GroupDeleted` records older brokers wrote.

use std::collections::BTreeMap;

use ferrolog_log::{BatchIter, RecordBatchBuilder, decode_records};
use ferrolog_proto::v1::group_log_record::Record;
use ferrolog_proto::v1::{GroupLogRecord, OffsetCommitRecord};
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

/// The key of `group`'s committed offset of `tp`.
fn offset_key(group: &str, tp: &TopicPartition) -> String {
    format!("{group}\0{}\0{}", tp.topic, tp.partition)
}

/// The batch that records `offsets` as committed by `group`.
pub fn commit_batch(
    group: &str,
    offsets: &[(TopicPartition, Committed)],
    now_ms: i64,
) -> bytes::BytesMut {
    let mut builder = RecordBatchBuilder::new(now_ms);
    for (tp, committed) in offsets {
        let key = offset_key(group, tp);
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

/// The batch that records `group` as deleted: a tombstone for each of its committed
/// offsets (`offsets`), then one for the group's own key, which compaction removes with
/// the rest once `delete.retention.ms` has passed.
pub fn delete_batch<'a>(
    group: &str,
    offsets: impl IntoIterator<Item = &'a TopicPartition>,
    now_ms: i64,
) -> bytes::BytesMut {
    let mut builder = RecordBatchBuilder::new(now_ms);
    for tp in offsets {
        builder.push(now_ms, Some(offset_key(group, tp).as_bytes()), None, &[]);
    }
    builder.push(now_ms, Some(group.as_bytes()), None, &[]);
    builder.build()
}

/// Applies a tombstone: the key names a committed offset (`group\0topic\0partition`) or a
/// whole group.
fn apply_tombstone(key: &[u8], groups: &mut LoadedOffsets) {
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    let mut parts = key.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(group), None, None, None) => {
            groups.remove(group);
        }
        (Some(group), Some(topic), Some(partition), None) => {
            let Ok(partition) = partition.parse::<u32>() else {
                return;
            };
            if let Some(offsets) = groups.get_mut(group) {
                offsets.remove(&TopicPartition {
                    topic: topic.to_owned(),
                    partition,
                });
                if offsets.is_empty() {
                    groups.remove(group);
                }
            }
        }
        _ => {}
    }
}

/// Committed offsets per group, as replaying a partition yields them.
pub type LoadedOffsets = BTreeMap<String, BTreeMap<TopicPartition, Committed>>;

/// Applies the records of `batches` (concatenated RecordBatch v2) to `groups`.
pub fn replay(batches: &[u8], groups: &mut LoadedOffsets) -> Result<(), BrokerError> {
    for batch in BatchIter::new(batches) {
        let (_, bytes) = batch?;
        for record in decode_records(bytes)? {
            let Some(value) = record.value else {
                if let Some(key) = &record.key {
                    apply_tombstone(key, groups);
                }
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
                Some(Record::TxnOffsetCommit(_)) => {}
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
        push(delete_batch("b", [&tp(0)], 4));
        let mut groups = LoadedOffsets::new();
        replay(&log, &mut groups).expect("replay");
        assert_eq!(groups.len(), 1, "b was deleted");
        assert_eq!(groups["a"][&tp(0)].offset, 6);
        assert_eq!(groups["a"][&tp(1)].offset, 9);
    }

    #[test]
    fn replaying_the_compacted_log_gives_the_same_offsets_as_the_whole_log() {
        let tp = |p| TopicPartition {
            topic: "t".to_owned(),
            partition: p,
        };
        let committed = |offset| Committed {
            offset,
            metadata: String::new(),
            commit_timestamp_ms: 7,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ferrolog_log::LogConfig {
            segment_bytes: 512,
            compaction: Some(ferrolog_log::CompactionConfig {
                min_cleanable_dirty_ratio: 0.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut log = ferrolog_log::Log::open(dir.path(), config).expect("open");
        let mut append = |mut batch: bytes::BytesMut| {
            log.append_batch(&mut batch, LeaderEpoch(0), 1_000)
                .expect("append");
        };
        for round in 0..40 {
            append(commit_batch(
                "a",
                &[(tp(round % 3), committed(i64::from(round)))],
                1,
            ));
            append(commit_batch(
                "b",
                &[(tp(0), committed(i64::from(round)))],
                1,
            ));
            if round == 30 {
                append(delete_batch("b", [&tp(0)], 1));
            }
        }
        let end = log.log_end_offset();
        log.checkpoint_high_watermark(end).expect("hw");
        let replay_all = |log: &ferrolog_log::Log| {
            let read = log.read(Offset(0), u32::MAX, end).expect("read");
            let mut groups = LoadedOffsets::new();
            replay(&read.batches, &mut groups).expect("replay");
            groups
        };
        let before = replay_all(&log);
        let size = log.size_bytes();
        log.clean(
            1_000,
            end,
            &ferrolog_log::CleanerOptions::default(),
            &ferrolog_log::CompactEveryDataBatch,
            &ferrolog_log::Throttle::unlimited(),
        )
        .expect("cleans");
        assert!(log.size_bytes() < size, "compaction removed old commits");
        let after = replay_all(&log);
        assert_eq!(before, after);
        assert_eq!(after["a"][&tp(0)].offset, 39);
        assert_eq!(
            after["b"][&tp(0)].offset,
            39,
            "b committed again after its deletion"
        );
    }
}
