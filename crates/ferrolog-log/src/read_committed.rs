//! read_committed filtering (Kafka's consumer-side algorithm in `CompletedFetch`): given the
//! aborted transactions a fetch overlaps (`Log::aborted_transactions`), drop the batches
//! of those transactions and every control batch, and keep the rest byte for byte.
//!
//! Batches are taken in offset order. An aborted transaction becomes active for its
//! producer once a batch reaching its first offset is seen; while active, that producer's
//! transactional data batches are dropped; the producer's next control batch (the ABORT
//! marker, necessarily: a producer has one transaction open at a time) ends it. Only the
//! header is needed, so the filter never decompresses a batch.

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;

use crate::batch::{BatchHeader, BatchIter};
use crate::error::LogError;
use crate::txn_index::AbortedTxn;

/// Decides, batch by batch, what a read_committed consumer sees.
#[derive(Clone, Debug)]
pub struct ReadCommittedFilter {
    /// Aborted transactions not yet reached, by first offset.
    pending: VecDeque<AbortedTxn>,
    /// Producers inside an aborted transaction.
    active: HashSet<i64>,
}

impl ReadCommittedFilter {
    /// A filter for a read over which `aborted` (in any order) are the aborted transactions.
    pub fn new(mut aborted: Vec<AbortedTxn>) -> Self {
        aborted.sort_by_key(|txn| (txn.first_offset, txn.last_offset));
        ReadCommittedFilter {
            pending: aborted.into(),
            active: HashSet::new(),
        }
    }

    /// Whether a read_committed consumer sees the batch. Call it on every batch of the read,
    /// in offset order.
    pub fn keep(&mut self, header: &BatchHeader) -> bool {
        // As Kafka does, a transaction starts to count once a batch reaches its first
        // offset (whichever producer's): a batch of its producer cannot come earlier.
        while let Some(next) = self.pending.front()
            && next.first_offset <= header.last_offset()
        {
            self.active.insert(next.producer_id);
            self.pending.pop_front();
        }
        if header.is_control() {
            self.active.remove(&header.producer_id);
            return false;
        }
        !(header.is_transactional() && self.active.contains(&header.producer_id))
    }
}

/// The batches of `batches` (whole batches back to back, as `Log::read` returns them) that a
/// read_committed consumer sees, unchanged and in order. Each batch's CRC is checked; a
/// corrupt or torn batch is an error.
pub fn filter_read_committed(
    batches: &[u8],
    aborted: Vec<AbortedTxn>,
) -> Result<BytesMut, LogError> {
    let mut filter = ReadCommittedFilter::new(aborted);
    let mut out = BytesMut::with_capacity(batches.len());
    for item in BatchIter::new(batches) {
        let (header, batch) = item?;
        if filter.keep(&header) {
            out.extend_from_slice(batch);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::assign_offsets;
    use crate::builder::RecordBatchBuilder;
    use crate::control::{ControlType, build_control_batch};
    use crate::types::{LeaderEpoch, Offset};

    /// Builds the batches of a log in order, assigning offsets; returns the bytes and each
    /// batch's base offset.
    #[derive(Default)]
    struct LogBuilder {
        bytes: BytesMut,
        next: i64,
    }

    impl LogBuilder {
        fn push(&mut self, mut batch: BytesMut) -> i64 {
            let base = self.next;
            assign_offsets(&mut batch, Offset(base), LeaderEpoch(0));
            let header = BatchHeader::parse(&batch).expect("built batch");
            self.next = header.next_offset().0;
            self.bytes.extend_from_slice(&batch);
            base
        }

        fn data(&mut self, producer_id: i64, transactional: bool, value: &str) -> i64 {
            let mut builder = if producer_id >= 0 {
                RecordBatchBuilder::new(0).with_producer(producer_id, 0, 0)
            } else {
                RecordBatchBuilder::new(0)
            };
            if transactional {
                builder = builder.transactional();
            }
            builder.push(0, Some(b"k"), Some(value.as_bytes()), &[]);
            builder.push(0, Some(b"k"), Some(value.as_bytes()), &[]);
            self.push(builder.build())
        }

        fn marker(&mut self, producer_id: i64, kind: ControlType) -> i64 {
            self.push(build_control_batch(producer_id, 0, kind, 0, 0))
        }
    }

    fn values(batches: &[u8]) -> Vec<String> {
        BatchIter::new(batches)
            .flat_map(|item| {
                let (_, batch) = item.expect("whole batches");
                crate::record::decode_records(batch).expect("decodes")
            })
            .filter_map(|r| r.value.map(|v| String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }

    fn aborted(producer_id: i64, first: i64, last: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset: Offset(first),
            last_offset: Offset(last),
        }
    }

    #[test]
    fn given_interleaved_producers_when_one_aborts_then_only_its_transaction_is_dropped()
    -> Result<(), LogError> {
        let mut log = LogBuilder::default();
        let a1 = log.data(1, true, "a-aborted-1");
        log.data(2, true, "b-committed-1");
        log.data(-1, false, "plain");
        log.data(1, true, "a-aborted-2");
        log.data(3, false, "idempotent");
        let abort = log.marker(1, ControlType::Abort);
        log.data(2, true, "b-committed-2");
        log.marker(2, ControlType::Commit);
        log.data(1, true, "a-committed");
        log.marker(1, ControlType::Commit);
        let kept = filter_read_committed(&log.bytes, vec![aborted(1, a1, abort)])?;
        assert_eq!(
            values(&kept),
            [
                "b-committed-1",
                "b-committed-1",
                "plain",
                "plain",
                "idempotent",
                "idempotent",
                "b-committed-2",
                "b-committed-2",
                "a-committed",
                "a-committed"
            ]
        );
        Ok(())
    }

    #[test]
    fn kept_batches_are_the_stored_bytes_and_markers_are_never_data() -> Result<(), LogError> {
        let mut log = LogBuilder::default();
        log.data(1, true, "x");
        log.marker(1, ControlType::Commit);
        let kept = filter_read_committed(&log.bytes, Vec::new())?;
        let first = BatchHeader::parse(&log.bytes)?.total_size_bytes();
        assert_eq!(&kept[..], &log.bytes[..first]);
        Ok(())
    }

    #[test]
    fn consecutive_aborted_transactions_of_one_producer_are_each_dropped() -> Result<(), LogError> {
        let mut log = LogBuilder::default();
        let first = log.data(5, true, "t1");
        let m1 = log.marker(5, ControlType::Abort);
        let second = log.data(5, true, "t2");
        log.data(6, true, "other");
        let m2 = log.marker(5, ControlType::Abort);
        log.marker(6, ControlType::Commit);
        let kept = filter_read_committed(
            &log.bytes,
            vec![aborted(5, second, m2), aborted(5, first, m1)],
        )?;
        assert_eq!(values(&kept), ["other", "other"]);
        Ok(())
    }

    #[test]
    fn a_read_starting_inside_an_aborted_transaction_still_drops_it() -> Result<(), LogError> {
        let mut full = LogBuilder::default();
        let first = full.data(1, true, "early");
        let first_bytes = full.bytes.len();
        full.data(1, true, "late");
        let marker = full.marker(1, ControlType::Abort);
        let tail = &full.bytes[first_bytes..];
        let kept = filter_read_committed(tail, vec![aborted(1, first, marker)])?;
        assert!(kept.is_empty());
        Ok(())
    }
}
