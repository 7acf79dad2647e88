//! The properties checked after every step. Each takes what the simulation observed and
//! says what broke, if anything. Later features (idempotence, transactions, compaction)
//! add theirs here.

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

/// Every record ever seen below a high watermark, by partition and offset: the committed
/// log as the cluster has shown it.
#[derive(Default)]
pub struct CommittedLog {
    records: BTreeMap<TopicPartition, BTreeMap<i64, u64>>,
    pub compared: u64,
}

impl CommittedLog {
    /// The committed prefix (below the high watermark) is identical on every replica that
    /// has it: `value` seen at `offset` below `replica`'s high watermark is the value every
    /// other replica (and every acknowledgement) showed there.
    pub fn committed_prefix_is_identical_on_every_replica(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        value: u64,
        replica: &str,
    ) -> Result<(), String> {
        let records = self.records.entry(tp.clone()).or_default();
        self.compared += 1;
        match records.get(&offset) {
            Some(seen) if *seen != value => Err(format!(
                "{}-{} offset {offset}: {replica} has committed value {value}, but value \
                 {seen} was committed there before",
                tp.0, tp.1
            )),
            Some(_) => Ok(()),
            None => {
                records.insert(offset, value);
                Ok(())
            }
        }
    }

    pub fn get(&self, tp: &TopicPartition, offset: i64) -> Option<u64> {
        self.records.get(tp).and_then(|r| r.get(&offset)).copied()
    }
}

/// An acks=all acknowledgement: `value` is at `offset` of `tp`, for good.
#[derive(Clone, Debug)]
pub struct Acked {
    pub tp: TopicPartition,
    pub offset: i64,
    pub value: u64,
}

/// An acks=all acknowledged record is never lost and never moves offset: at the end, on
/// the converged leader, `found` (the value at the record's offset below its high
/// watermark, if any) is the acknowledged one.
pub fn acknowledged_record_never_lost_nor_moved(
    acked: &Acked,
    found: Option<u64>,
    high_watermark: i64,
) -> Result<(), String> {
    match found {
        Some(value) if value == acked.value => Ok(()),
        Some(value) => Err(format!(
            "acks=all record {} acknowledged at {}-{} offset {} holds {value} there now",
            acked.value, acked.tp.0, acked.tp.1, acked.offset
        )),
        None => Err(format!(
            "acks=all record {} acknowledged at {}-{} offset {} is gone (high watermark {})",
            acked.value, acked.tp.0, acked.tp.1, acked.offset, high_watermark
        )),
    }
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
