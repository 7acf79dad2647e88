//! A history checker for produce/consume workloads, reused by every fault test that must
//! show "nothing acknowledged was lost".
//!
//! A workload sends uniquely numbered records (each value names its id) and records every
//! acknowledgement as (id, partition, offset). At the end everything is read back as
//! (partition, offset, id). The checker then reports, per Kafka's guarantees for a
//! producer that retries:
//!
//! - **lost**: acknowledged, never read. Must be zero.
//! - **acknowledged twice**: two records acknowledged at one position (the log handed out
//!   an offset again, e.g. after losing its tail). Must be zero.
//! - **offset mismatch**: acknowledged at one position, found only elsewhere. Must be zero.
//! - **reordered**: two records of one partition acknowledged in one order (ids ascending
//!   in send order) but stored in the other. Must be zero with one request in flight.
//! - **duplicated**: read more than once (a retried send that had in fact landed). Allowed
//!   without idempotent producers, reported so a test can bound it.

use std::collections::BTreeMap;
use std::fmt;

/// One acknowledgement: record `id` is at `offset` of `partition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    pub partition: u32,
    pub offset: i64,
}

/// One record read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    pub partition: u32,
    pub offset: i64,
    pub id: u64,
}

/// What the checker found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub acknowledged: usize,
    pub read: usize,
    pub lost: Vec<u64>,
    /// Pairs of acknowledgements of different records at the same partition and offset.
    pub acknowledged_twice: Vec<(Ack, Ack)>,
    pub offset_mismatches: Vec<(Ack, Vec<(u32, i64)>)>,
    pub reordered: Vec<(u64, u64)>,
    pub duplicated: Vec<u64>,
}

impl Report {
    /// No acknowledged record lost, misplaced or reordered, no position acknowledged twice.
    pub fn is_safe(&self) -> bool {
        self.lost.is_empty()
            && self.acknowledged_twice.is_empty()
            && self.offset_mismatches.is_empty()
            && self.reordered.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sample = |ids: &[u64]| ids.iter().take(10).map(u64::to_string).collect::<Vec<_>>();
        write!(
            f,
            "{} acknowledged, {} read: {} lost {:?}, {} positions acknowledged twice {:?}, \
             {} offset mismatches, {} reordered {:?}, {} duplicated",
            self.acknowledged,
            self.read,
            self.lost.len(),
            sample(&self.lost),
            self.acknowledged_twice.len(),
            self.acknowledged_twice.iter().take(5).collect::<Vec<_>>(),
            self.offset_mismatches.len(),
            self.reordered.len(),
            self.reordered.iter().take(5).collect::<Vec<_>>(),
            self.duplicated.len()
        )
    }
}

/// Compares what was acknowledged with what was read.
pub fn check(acks: &[Ack], reads: &[Read]) -> Report {
    let mut positions: BTreeMap<u64, Vec<(u32, i64)>> = BTreeMap::new();
    for read in reads {
        positions
            .entry(read.id)
            .or_default()
            .push((read.partition, read.offset));
    }
    let mut report = Report {
        acknowledged: acks.len(),
        read: reads.len(),
        duplicated: positions
            .iter()
            .filter(|(_, at)| at.len() > 1)
            .map(|(id, _)| *id)
            .collect(),
        ..Report::default()
    };
    let mut acknowledged_at: BTreeMap<(u32, i64), Ack> = BTreeMap::new();
    for ack in acks {
        if let Some(first) = acknowledged_at.insert((ack.partition, ack.offset), *ack)
            && first.id != ack.id
        {
            report.acknowledged_twice.push((first, *ack));
        }
    }
    for ack in acks {
        match positions.get(&ack.id) {
            None => report.lost.push(ack.id),
            Some(at) if !at.contains(&(ack.partition, ack.offset)) => {
                report.offset_mismatches.push((*ack, at.clone()));
            }
            Some(_) => {}
        }
    }
    // Per partition, acknowledged ids in ascending order must sit at ascending offsets.
    let mut by_partition: BTreeMap<u32, Vec<&Ack>> = BTreeMap::new();
    for ack in acks {
        by_partition.entry(ack.partition).or_default().push(ack);
    }
    for acks in by_partition.values_mut() {
        acks.sort_by_key(|a| a.id);
        for pair in acks.windows(2) {
            if pair[0].offset > pair[1].offset {
                report.reordered.push((pair[0].id, pair[1].id));
            }
        }
    }
    report.lost.sort_unstable();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u64, partition: u32, offset: i64) -> Ack {
        Ack {
            id,
            partition,
            offset,
        }
    }

    fn read(partition: u32, offset: i64, id: u64) -> Read {
        Read {
            partition,
            offset,
            id,
        }
    }

    #[test]
    fn a_clean_history_is_safe() {
        let acks = [ack(1, 0, 0), ack(2, 1, 0), ack(3, 0, 1)];
        let reads = [read(0, 0, 1), read(0, 1, 3), read(1, 0, 2)];
        let report = check(&acks, &reads);
        assert!(report.is_safe(), "{report}");
        assert!(report.duplicated.is_empty());
    }

    #[test]
    fn every_kind_of_violation_is_reported() {
        // 1 lost; 2 found elsewhere; 3 and 4 stored in the wrong order; 5 read twice (a
        // retry that had landed), which alone is not a safety violation.
        let acks = [
            ack(1, 0, 0),
            ack(2, 0, 1),
            ack(3, 1, 5),
            ack(4, 1, 4),
            ack(5, 0, 2),
        ];
        let reads = [
            read(0, 7, 2),
            read(1, 4, 4),
            read(1, 5, 3),
            read(0, 2, 5),
            read(0, 3, 5),
        ];
        let report = check(&acks, &reads);
        assert_eq!(report.lost, vec![1]);
        assert_eq!(report.offset_mismatches.len(), 1);
        assert_eq!(report.offset_mismatches[0].0.id, 2);
        assert_eq!(report.reordered, vec![(3, 4)]);
        assert_eq!(report.duplicated, vec![5]);
        assert!(!report.is_safe());

        let only_duplicates = check(&[ack(5, 0, 2)], &[read(0, 2, 5), read(0, 3, 5)]);
        assert!(only_duplicates.is_safe(), "{only_duplicates}");
    }

    #[test]
    fn one_position_acknowledged_for_two_records_is_reported() {
        // 1 and 2 were both acknowledged at 0:0; only 2 is there (the log reused the offset).
        let report = check(&[ack(1, 0, 0), ack(2, 0, 0)], &[read(0, 0, 2)]);
        assert_eq!(
            report.acknowledged_twice,
            vec![(ack(1, 0, 0), ack(2, 0, 0))]
        );
        assert!(!report.is_safe());
    }
}
