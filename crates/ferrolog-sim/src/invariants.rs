//! The properties checked after every step. Each takes what the simulation observed and
//! says what broke, if anything. Later features (idempotence, transactions) add theirs here;
//! compaction's are `latest_value_per_key_survives`, `cleaned_part_holds_one_record_per_key`,
//! the never-moves check of `CommittedLog` and the compaction-aware acknowledgement check.

use std::collections::BTreeMap;

use ferrolog_metadata::BrokerId;

/// A partition: topic and partition number.
pub type TopicPartition = (String, u32);

/// The high watermark a replica shows never moves back while its process lives (a restart
/// may load an older one from the checkpoint; the committed data is then still there,
/// which [`committed_prefix_is_identical_on_every_replica`] checks).
pub fn high_watermark_never_moves_back(
    replica: &str,
    previous: Option<i64>,
    now: i64,
) -> Result<(), String> {
    match previous {
        Some(previous) if now < previous => Err(format!(
            "the high watermark of {replica} moved back from {previous} to {now}"
        )),
        _ => Ok(()),
    }
}

/// What identifies a record: the number its producer gave it (unique per send: its value, or
/// its `id` header in the compacted topic, where a tombstone has no value), its key there,
/// and whether it is a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub key: Option<u32>,
    pub tombstone: bool,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.key, self.tombstone) {
            (None, _) => write!(f, "{}", self.id),
            (Some(key), false) => write!(f, "k{key}={}", self.id),
            (Some(key), true) => write!(f, "k{key}=tombstone#{}", self.id),
        }
    }
}

/// A record of the committed log, and when (simulated ms) the cluster first showed it
/// committed.
#[derive(Clone, Copy, Debug)]
pub struct Committed {
    pub entry: Entry,
    pub at_ms: u64,
}

/// Every record ever seen below a high watermark, by partition and offset: the committed
/// log as the cluster has shown it. Compaction removes records from replicas, never from
/// here: this is what the compacted logs are checked against.
#[derive(Default)]
pub struct CommittedLog {
    records: BTreeMap<TopicPartition, BTreeMap<i64, Committed>>,
    /// Where each record id was committed: a record never moves offset.
    offsets_of_ids: BTreeMap<(TopicPartition, u64), i64>,
    pub compared: u64,
}

impl CommittedLog {
    /// The committed prefix (below the high watermark) is identical on every replica that
    /// has it: `entry` seen at `offset` below `replica`'s high watermark is the record every
    /// other replica (and every acknowledgement) showed there, and that record was never
    /// seen at another offset (compaction removes records, it never moves one).
    pub fn committed_prefix_is_identical_on_every_replica(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        entry: Entry,
        replica: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        let records = self.records.entry(tp.clone()).or_default();
        self.compared += 1;
        match records.get(&offset) {
            Some(seen) if seen.entry != entry => Err(format!(
                "{}-{} offset {offset}: {replica} has committed record {entry}, but record \
                 {} was committed there before",
                tp.0, tp.1, seen.entry
            )),
            Some(_) => Ok(()),
            None => {
                if let Some(was) = self.offsets_of_ids.get(&(tp.clone(), entry.id)) {
                    return Err(format!(
                        "{}-{}: {replica} has record {entry} at offset {offset}, but it was \
                         committed at offset {was}: a record moved",
                        tp.0, tp.1
                    ));
                }
                records.insert(
                    offset,
                    Committed {
                        entry,
                        at_ms: now_ms,
                    },
                );
                self.offsets_of_ids.insert((tp.clone(), entry.id), offset);
                Ok(())
            }
        }
    }

    pub fn get(&self, tp: &TopicPartition, offset: i64) -> Option<Committed> {
        self.records.get(tp).and_then(|r| r.get(&offset)).copied()
    }

    /// The committed records of `tp`, by offset.
    pub fn of(&self, tp: &TopicPartition) -> Option<&BTreeMap<i64, Committed>> {
        self.records.get(tp)
    }

    /// Whether a record of `key` was committed in `tp` after `offset`: then compaction may
    /// remove the one at `offset`.
    pub fn superseded(&self, tp: &TopicPartition, key: u32, offset: i64) -> bool {
        self.records.get(tp).is_some_and(|records| {
            records
                .range(offset + 1..)
                .any(|(_, c)| c.entry.key == Some(key))
        })
    }
}

/// An acks=all acknowledgement: `entry` is at `offset` of `tp`, for good (in a compacted
/// topic: until a newer record of its key is committed, or, a tombstone, until it expires).
#[derive(Clone, Debug)]
pub struct Acked {
    pub tp: TopicPartition,
    pub offset: i64,
    pub entry: Entry,
}

/// An acks=all acknowledged record is never lost and never moves offset: at the end, on
/// the converged leader, `found` (the record at the acknowledged offset below its high
/// watermark, if any) is the acknowledged one. The only records that may be gone are those
/// compaction may remove: `superseded` (a newer record of the key was committed) or
/// `tombstone_expired` (a tombstone whose `delete.retention.ms` has passed since it was
/// committed).
pub fn acknowledged_record_never_lost_nor_moved(
    acked: &Acked,
    found: Option<Entry>,
    high_watermark: i64,
    superseded: bool,
    tombstone_expired: bool,
) -> Result<(), String> {
    match found {
        Some(entry) if entry == acked.entry => Ok(()),
        Some(entry) => Err(format!(
            "acks=all record {} acknowledged at {}-{} offset {} holds {entry} there now",
            acked.entry, acked.tp.0, acked.tp.1, acked.offset
        )),
        None if superseded || tombstone_expired => Ok(()),
        None => Err(format!(
            "acks=all record {} acknowledged at {}-{} offset {} is gone (high watermark {}), \
             and no newer record of its key was committed",
            acked.entry, acked.tp.0, acked.tp.1, acked.offset, high_watermark
        )),
    }
}

/// Compaction's promise, on one replica of a compacted partition read from its log start to
/// its high watermark (`records`: offset and record, in order): for every key, the last
/// record the replica returns below its high watermark is the newest record of that key the
/// cluster committed there, never an older one. A key whose newest committed record is a
/// tombstone may instead be absent once `delete.retention.ms` has passed since the tombstone
/// was committed. `deletes_missed` collects keys that show an older value where an expired
/// tombstone was: Kafka's documented limit (a reader, a lagging follower included, that
/// falls behind by more than `delete.retention.ms` may miss a delete), counted, not failed.
///
/// A replica's high watermark may lag its cleaned log: a restart loads an older high
/// watermark from its checkpoint, while its segments stay cleaned up to the one it had. So
/// the newest record below the high watermark may be gone when a newer committed record of
/// the key lies between the high watermark and the replica's `log_end`: the replica has it,
/// and a reader gets it once the high watermark moves on. With the high watermark at the
/// log end (converged), the check is exact.
#[allow(clippy::too_many_arguments)]
pub fn latest_value_per_key_survives(
    replica: &str,
    committed: &BTreeMap<i64, Committed>,
    records: &[(i64, Entry)],
    high_watermark: i64,
    log_end: i64,
    now_ms: u64,
    delete_retention_ms: u64,
    deletes_missed: &mut Vec<String>,
) -> Result<(), String> {
    let mut newest: BTreeMap<u32, (i64, Committed)> = BTreeMap::new();
    for (offset, committed) in committed.range(..high_watermark) {
        if let Some(key) = committed.entry.key {
            newest.insert(key, (*offset, *committed));
        }
    }
    let mut last: BTreeMap<u32, i64> = BTreeMap::new();
    for (offset, entry) in records {
        if let Some(key) = entry.key {
            last.insert(key, *offset);
        }
    }
    for (key, (offset, entry)) in newest {
        let expired = now_ms >= entry.at_ms.saturating_add(delete_retention_ms);
        let superseded_within_log = committed
            .range(high_watermark..log_end)
            .any(|(_, c)| c.entry.key == Some(key));
        let committed = entry;
        match last.get(&key) {
            Some(found) if *found == offset => {}
            _ if superseded_within_log => {}
            None if committed.entry.tombstone && expired => {}
            Some(found) if committed.entry.tombstone && expired => deletes_missed.push(format!(
                "key {key}: {} at offset {offset} (committed at {} ms), older record at {found}",
                committed.entry, committed.at_ms
            )),
            Some(found) => {
                return Err(format!(
                    "{replica}: the newest committed record of key {key} below the high \
                     watermark {high_watermark} is {} at offset {offset}, but the last record \
                     of the key it returns is at offset {found}",
                    committed.entry
                ));
            }
            None => {
                return Err(format!(
                    "{replica}: the newest committed record of key {key} below the high \
                     watermark {high_watermark} is {} at offset {offset} (committed at {} ms, \
                     now {now_ms} ms), but the replica returns no record of the key",
                    committed.entry, committed.at_ms
                ));
            }
        }
    }
    Ok(())
}

/// Below the cleaner's first dirty offset a compacted log holds at most one record per key.
pub fn cleaned_part_holds_one_record_per_key(
    replica: &str,
    first_dirty: i64,
    records: &[(i64, Entry)],
) -> Result<(), String> {
    let mut seen: BTreeMap<u32, i64> = BTreeMap::new();
    for (offset, entry) in records.iter().filter(|(o, _)| *o < first_dirty) {
        let Some(key) = entry.key else { continue };
        if let Some(earlier) = seen.insert(key, *offset) {
            return Err(format!(
                "{replica}: key {key} has records at offsets {earlier} and {offset}, both \
                 below the cleaner's first dirty offset {first_dirty}"
            ));
        }
    }
    Ok(())
}

/// At most one leader per (partition, leader epoch): the first broker seen leading an epoch
/// is the only one that ever may.
#[derive(Default)]
pub struct Leaders {
    by_epoch: BTreeMap<(TopicPartition, i32), BrokerId>,
}

impl Leaders {
    pub fn one_leader_per_partition_epoch(
        &mut self,
        tp: &TopicPartition,
        leader_epoch: i32,
        broker: BrokerId,
    ) -> Result<(), String> {
        let first = *self
            .by_epoch
            .entry((tp.clone(), leader_epoch))
            .or_insert(broker);
        if first == broker {
            Ok(())
        } else {
            Err(format!(
                "{}-{} has two leaders in epoch {leader_epoch}: broker {first} and broker \
                 {broker}",
                tp.0, tp.1
            ))
        }
    }

    /// Distinct (partition, epoch) leaderships seen.
    pub fn count(&self) -> u64 {
        self.by_epoch.len() as u64
    }
}

/// No consumer reads at or above the high watermark the replica had when it answered.
pub fn no_read_above_high_watermark(
    tp: &TopicPartition,
    offset: i64,
    high_watermark: i64,
) -> Result<(), String> {
    if offset >= high_watermark {
        return Err(format!(
            "a consumer read {}-{} offset {offset}, at or above the high watermark \
             {high_watermark}",
            tp.0, tp.1
        ));
    }
    Ok(())
}
