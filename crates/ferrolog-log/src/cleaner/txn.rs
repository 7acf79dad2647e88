//! What the cleaner does with transactions (Kafka's `CleanedTransactionMetadata`, kept
//! simple): batches of aborted transactions go, markers go once nothing needs them.
//!
//! A transactional data batch of producer P is aborted when its base offset lies in an
//! aborted transaction of P, `first_offset..=last_offset` (the marker): P has one
//! transaction open at a time, so every transactional batch of P in that range is that
//! transaction's. This needs no state, so the offset map and the rewrite agree.
//!
//! A marker is removed when both hold:
//! - `delete.retention.ms` has passed since it was written (its timestamp, the
//!   coordinator's clock), so that a consumer reading the transaction's tail in that time
//!   still sees it end (Kafka's delete horizon; Kafka counts it from the first cleaning
//!   instead, which needs the horizon written into the batch);
//! - no data batch of its transaction is left before it in the cleaned log, so that no
//!   record is left whose transaction has no outcome. An aborted transaction's batches are
//!   all gone once cleaned; a committed one's go when compaction empties them.
//!
//! The rewrite walks the log from its start in offset order, so "left before it" is known
//! when the marker is reached. An ABORT marker that stays keeps its index entry in the
//! cleaned segment; one that goes takes its entry along.

use std::collections::{BTreeMap, HashSet};

use super::BatchVerdict;
use crate::batch::BatchHeader;
use crate::txn_index::TxnIndexEntry;
use crate::types::Offset;

/// The log's aborted transactions, by marker offset.
#[derive(Clone, Debug, Default)]
pub(crate) struct AbortedIndex {
    by_marker: BTreeMap<Offset, TxnIndexEntry>,
}

impl AbortedIndex {
    pub(crate) fn new(entries: impl IntoIterator<Item = TxnIndexEntry>) -> Self {
        AbortedIndex {
            by_marker: entries
                .into_iter()
                .map(|entry| (entry.txn.last_offset, entry))
                .collect(),
        }
    }

    /// Whether a data batch belongs to an aborted transaction.
    pub(crate) fn is_aborted_data(&self, header: &BatchHeader) -> bool {
        if !header.is_transactional() || header.is_control() {
            return false;
        }
        // The first marker of any producer at or after the batch; P's own is what counts,
        // and an aborted transaction of P spanning the batch has its marker after it.
        self.by_marker
            .range(header.base_offset..)
            .map(|(_, entry)| entry.txn)
            .find(|txn| txn.producer_id == header.producer_id)
            .is_some_and(|txn| txn.first_offset <= header.base_offset)
    }
}

/// The transaction state of one rewrite pass, in offset order.
pub(super) struct TxnTracker<'a> {
    aborted: &'a AbortedIndex,
    now_ms: i64,
    delete_retention_ms: i64,
    /// Producers whose current transaction has a data batch kept in the cleaned log.
    with_data: HashSet<i64>,
}

impl<'a> TxnTracker<'a> {
    pub(super) fn new(aborted: &'a AbortedIndex, now_ms: i64, delete_retention_ms: i64) -> Self {
        TxnTracker {
            aborted,
            now_ms,
            delete_retention_ms,
            with_data: HashSet::new(),
        }
    }

    /// The cleaner's verdict on a batch below the mapped range, `None` to ask the
    /// `BatchRetention`.
    pub(super) fn verdict(&self, header: &BatchHeader) -> Option<BatchVerdict> {
        if header.is_control() {
            // An empty control batch was emptied by an earlier cleaning: it ends nothing
            // any more that a reader needs.
            let expired = header.record_count == 0
                || header
                    .max_timestamp_ms
                    .saturating_add(self.delete_retention_ms)
                    <= self.now_ms;
            let needed = self.with_data.contains(&header.producer_id);
            return (expired && !needed).then_some(BatchVerdict::Discard);
        }
        self.aborted
            .is_aborted_data(header)
            .then_some(BatchVerdict::Discard)
    }

    /// Notes a batch written to the cleaned log; returns the index entry it carries, for a
    /// kept ABORT marker.
    pub(super) fn written(&mut self, header: &BatchHeader) -> Option<TxnIndexEntry> {
        if header.is_control() {
            self.with_data.remove(&header.producer_id);
            if header.record_count == 0 {
                return None;
            }
            return self
                .aborted
                .by_marker
                .get(&header.base_offset)
                .filter(|entry| entry.txn.producer_id == header.producer_id)
                .copied();
        }
        if header.is_transactional() && header.record_count > 0 {
            self.with_data.insert(header.producer_id);
        }
        None
    }
}
