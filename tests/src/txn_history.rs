//! A history checker for transactional workloads, after Jepsen's Kafka checks (the ones that
//! found KAFKA-17754): what read_committed consumers saw, compared with what the producers
//! committed, aborted, or could not tell.
//!
//! A workload writes uniquely numbered records in transactions and records, per
//! transaction, its records (id, partition, offset when acknowledged) and its outcome:
//! committed (EndTxn answered), aborted, or unknown (the commit's answer was lost). Consumers
//! record every record they poll, in order. At the end one complete read_committed read of
//! every partition is taken. The checker reports:
//!
//! - **lost**: a record of a committed transaction absent from the final read.
//! - **duplicated**: a record found at two positions, or read twice from one.
//! - **aborted read**: a record of an aborted transaction seen by any read_committed reader.
//! - **torn transaction**: a reader that saw part of a transaction's records in a partition
//!   and read past another of its records there without seeing it; or an unknown
//!   transaction partly visible in the final read.
//! - **non-monotonic poll**: a consumer whose offsets in one partition went back or repeated
//!   between polls.
//!
//! All of them must be zero.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::Read;

/// How a transaction ended, as its producer knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted,
    /// The commit was sent but its answer never came: either outcome is allowed, but
    /// atomically.
    Unknown,
}

/// One record a transaction wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    pub id: u64,
    pub partition: u32,
}

/// One transaction of a producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub writes: Vec<Write>,
    pub outcome: Outcome,
}

/// What the checker found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TxnReport {
    pub transactions: usize,
    pub committed_records: usize,
    pub lost: Vec<u64>,
    pub duplicated: Vec<u64>,
    pub aborted_reads: Vec<u64>,
    /// (transaction index, partition) of a transaction seen in part.
    pub torn: Vec<(usize, u32)>,
    /// (consumer, partition, offset before, offset after).
    pub non_monotonic: Vec<(usize, u32, i64, i64)>,
}

impl TxnReport {
    pub fn is_safe(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.aborted_reads.is_empty()
            && self.torn.is_empty()
            && self.non_monotonic.is_empty()
    }
}

impl fmt::Display for TxnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sample = |ids: &[u64]| ids.iter().take(10).copied().collect::<Vec<_>>();
        write!(
            f,
            "{} transactions, {} committed records: {} lost {:?}, {} duplicated {:?}, \
             {} aborted reads {:?}, {} torn {:?}, {} non-monotonic polls {:?}",
            self.transactions,
            self.committed_records,
            self.lost.len(),
            sample(&self.lost),
            self.duplicated.len(),
            sample(&self.duplicated),
            self.aborted_reads.len(),
            sample(&self.aborted_reads),
            self.torn.len(),
            self.torn.iter().take(5).collect::<Vec<_>>(),
            self.non_monotonic.len(),
            self.non_monotonic.iter().take(5).collect::<Vec<_>>(),
        )
    }
}

/// Checks `transactions` against the final read_committed read of every partition
/// (`final_read`) and what each read_committed consumer polled, in order (`polls`).
pub fn check_transactions(
    transactions: &[Transaction],
    final_read: &[Read],
    polls: &[Vec<Read>],
) -> TxnReport {
    let mut report = TxnReport {
        transactions: transactions.len(),
        ..TxnReport::default()
    };
    let mut final_at: BTreeMap<u64, Vec<(u32, i64)>> = BTreeMap::new();
    for read in final_read {
        final_at
            .entry(read.id)
            .or_default()
            .push((read.partition, read.offset));
    }
    report.duplicated = final_at
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(id, _)| *id)
        .collect();

    let mut aborted = BTreeSet::new();
    for (index, txn) in transactions.iter().enumerate() {
        match txn.outcome {
            Outcome::Committed => {
                report.committed_records += txn.writes.len();
                report.lost.extend(
                    txn.writes
                        .iter()
                        .filter(|w| !final_at.contains_key(&w.id))
                        .map(|w| w.id),
                );
            }
            Outcome::Aborted => aborted.extend(txn.writes.iter().map(|w| w.id)),
            Outcome::Unknown => {
                let visible = txn
                    .writes
                    .iter()
                    .filter(|w| final_at.contains_key(&w.id))
                    .count();
                if visible != 0 && visible != txn.writes.len() {
                    for partition in partitions_of(txn) {
                        report.torn.push((index, partition));
                    }
                }
            }
        }
    }
    let seen_anywhere = final_read.iter().chain(polls.iter().flatten());
    report.aborted_reads = seen_anywhere
        .filter(|r| aborted.contains(&r.id))
        .map(|r| r.id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    // Where each visible record sits, from the final read.
    let position: BTreeMap<u64, (u32, i64)> = final_read
        .iter()
        .map(|r| (r.id, (r.partition, r.offset)))
        .collect();
    for (consumer, polled) in polls.iter().enumerate() {
        let mut last: BTreeMap<u32, i64> = BTreeMap::new();
        let mut range: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for read in polled {
            if let Some(&before) = last.get(&read.partition)
                && read.offset <= before
            {
                report
                    .non_monotonic
                    .push((consumer, read.partition, before, read.offset));
            }
            last.insert(read.partition, read.offset);
            let span = range
                .entry(read.partition)
                .or_insert((read.offset, read.offset));
            span.0 = span.0.min(read.offset);
            span.1 = span.1.max(read.offset);
            seen.insert(read.id);
        }
        for (index, txn) in transactions.iter().enumerate() {
            if txn.outcome == Outcome::Aborted {
                continue;
            }
            for partition in partitions_of(txn) {
                let Some(&(from, to)) = range.get(&partition) else {
                    continue;
                };
                let in_partition: Vec<&Write> = txn
                    .writes
                    .iter()
                    .filter(|w| w.partition == partition)
                    .collect();
                let saw_some = in_partition.iter().any(|w| seen.contains(&w.id));
                let skipped_one = in_partition.iter().any(|w| {
                    !seen.contains(&w.id)
                        && position
                            .get(&w.id)
                            .is_some_and(|&(_, offset)| offset >= from && offset <= to)
                });
                if saw_some && skipped_one {
                    report.torn.push((index, partition));
                }
            }
        }
    }
    report.lost.sort_unstable();
    report.torn.sort_unstable();
    report.torn.dedup();
    report
}

fn partitions_of(txn: &Transaction) -> BTreeSet<u32> {
    txn.writes.iter().map(|w| w.partition).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(partition: u32, offset: i64, id: u64) -> Read {
        Read {
            partition,
            offset,
            id,
        }
    }

    fn txn(outcome: Outcome, writes: &[(u64, u32)]) -> Transaction {
        Transaction {
            writes: writes
                .iter()
                .map(|&(id, partition)| Write { id, partition })
                .collect(),
            outcome,
        }
    }

    #[test]
    fn committed_transactions_read_whole_and_in_order_are_safe() {
        let txns = [
            txn(Outcome::Committed, &[(1, 0), (2, 1), (3, 0)]),
            // Aborted: its records took offsets 2 and 3 of partition 0 but are invisible.
            txn(Outcome::Aborted, &[(4, 0), (5, 0)]),
            txn(Outcome::Committed, &[(6, 0)]),
            // Unknown, and not visible at all: allowed.
            txn(Outcome::Unknown, &[(7, 1)]),
        ];
        let final_read = [read(0, 0, 1), read(0, 1, 3), read(0, 5, 6), read(1, 0, 2)];
        let polls = [vec![
            read(0, 0, 1),
            read(1, 0, 2),
            read(0, 1, 3),
            read(0, 5, 6),
        ]];
        let report = check_transactions(&txns, &final_read, &polls);
        assert!(report.is_safe(), "{report}");
        assert_eq!(report.committed_records, 4);
    }

    #[test]
    fn every_kind_of_anomaly_is_reported() {
        let txns = [
            // 1 lost.
            txn(Outcome::Committed, &[(1, 0), (2, 0)]),
            // 3 of an aborted transaction was read.
            txn(Outcome::Aborted, &[(3, 0)]),
            // Unknown and half visible: torn.
            txn(Outcome::Unknown, &[(4, 1), (5, 1)]),
            // The consumer saw 6 and read past 7 without seeing it: torn.
            txn(Outcome::Committed, &[(6, 2), (7, 2)]),
        ];
        let final_read = [
            read(0, 1, 2),
            read(0, 2, 3),
            read(1, 0, 4),
            read(2, 0, 6),
            read(2, 1, 7),
            read(2, 2, 8),
        ];
        let polls = [vec![read(2, 0, 6), read(2, 2, 8), read(2, 2, 8)]];
        let report = check_transactions(&txns, &final_read, &polls);
        assert_eq!(report.lost, vec![1]);
        assert_eq!(report.aborted_reads, vec![3]);
        assert_eq!(report.torn, vec![(2, 1), (3, 2)]);
        assert_eq!(report.non_monotonic, vec![(0, 2, 2, 2)]);
        assert!(!report.is_safe());
    }

    #[test]
    fn a_record_found_twice_is_a_duplicate() {
        let txns = [txn(Outcome::Committed, &[(1, 0)])];
        let report = check_transactions(&txns, &[read(0, 0, 1), read(0, 1, 1)], &[]);
        assert_eq!(report.duplicated, vec![1]);
        assert!(!report.is_safe());
    }
}
