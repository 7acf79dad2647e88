//! Idempotent-producer state of one partition, after Kafka's `ProducerStateManager`: for each
//! producer id, its epoch and the sequence numbers and offsets of its last five batches.
//!
//! The leader checks every batch that carries a producer id (`check_leader_append`): a batch
//! of an older epoch is fenced; a new epoch must start at sequence 0; a retry of one of the
//! last five batches is a duplicate and gets its original offsets back, without being
//! written again; any other batch must continue the sequence (wrapping at `i32::MAX`), or it
//! is out of order. Every appended batch, the leader's and a follower's replicated ones alike,
//! then updates the state (`record_batch`): followers mirror their leader without checking,
//! so whichever replica leads next knows the same producers.
//!
//! Transactions (Kafka's design, transactions v2 / KIP-890): a transactional data batch from
//! a producer with no open transaction opens one at its base offset; a control batch (a
//! marker, `control`) ends it. The leader refuses a non-transactional batch while the
//! producer's transaction is open (`InvalidTxnState`) and skips a marker whose epoch is not
//! newer than the producer's (see `check_marker`); markers skip the sequence checks. A marker of a newer epoch (v2 bumps
//! the epoch at every transaction end) moves the producer to it with an empty batch cache,
//! so its next batch must start at sequence 0, as a data batch of a new epoch must. The open
//! transactions give the last stable offset (`first_unstable_offset`).
//!
//! The state is a function of the log, so it follows it: truncation rebuilds it, and
//! recovery rebuilds it from a snapshot (`snapshot`) plus the batches after it. Producers
//! whose batches retention deleted stay until they expire (`producer.id.expiration.ms`).

pub(crate) mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::batch::BatchHeader;
use crate::error::LogError;
use crate::fsutil::sync_dir;
use crate::types::Offset;

/// Batches remembered per producer for duplicate detection: Kafka's `NUM_BATCHES_TO_RETAIN`,
/// matching the client's `max.in.flight.requests.per.connection` limit of 5 for idempotence.
pub const PRODUCER_BATCHES_CACHED: usize = 5;
/// Producer state snapshots kept on disk. The newest makes a restart replay at most the
/// active segment; the older two let a truncation (a follower's divergent tail, normally
/// inside the active segment) or a corrupt newest snapshot fall back without rescanning
/// the whole log. Kafka keeps one per segment; a fixed bound keeps the directory small.
pub const PRODUCER_SNAPSHOTS_KEPT: usize = 3;

/// Sequence numbers and offsets of one appended batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchMetadata {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) first_offset: Offset,
    pub(crate) last_offset: Offset,
    /// The batch's max timestamp, returned with its offsets when a retry is a duplicate.
    pub(crate) max_timestamp_ms: i64,
}

/// What the partition knows of one producer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub(crate) epoch: i16,
    /// The producer's last batches of `epoch`, oldest first, at most
    /// `PRODUCER_BATCHES_CACHED`.
    pub(crate) batches: VecDeque<BatchMetadata>,
    /// The max timestamp of the producer's last batch; expiry counts from it.
    pub(crate) last_timestamp_ms: i64,
    /// First offset of the producer's open transaction: set by its first transactional
    /// batch, cleared by a marker. An entry with one never expires, and snapshots carry it.
    pub(crate) current_txn_first_offset: Option<Offset>,
}

impl ProducerEntry {
    fn last_batch(&self) -> Option<&BatchMetadata> {
        self.batches.back()
    }

    /// A cached batch with exactly this sequence range (Kafka's `findDuplicateBatch`).
    fn find_duplicate(&self, first_seq: i32, last_seq: i32) -> Option<BatchMetadata> {
        self.batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            .copied()
    }
}

/// One producer as `Log::producers` reports it (Kafka's DescribeProducers fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerSnapshotEntry {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence number of the last record of the producer's last batch.
    pub last_sequence: i32,
    /// Max timestamp of the producer's last batch.
    pub last_timestamp_ms: i64,
    /// Offsets of the producer's last batch.
    pub first_offset: Offset,
    pub last_offset: Offset,
    /// First offset of the producer's open transaction, if one is open.
    pub current_txn_first_offset: Option<Offset>,
}

/// How `Log::open` rebuilt the producer state: from which snapshot, and how many batches it
/// read after it. Recovery costs about `replayed_batches`, at most a segment's worth when a
/// snapshot was taken at the last roll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerStateRecovery {
    /// The offset of the snapshot loaded, `None` if none was usable.
    pub snapshot_offset: Option<Offset>,
    pub replayed_batches: u64,
}

/// A transaction a marker ended, as the aborted-transaction index records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompletedTxn {
    pub(crate) producer_id: i64,
    /// The transaction's first offset; the marker's own offset if the partition saw no data
    /// of it (a transaction with no batch here, or whose batches retention deleted).
    pub(crate) first_offset: Offset,
    /// The marker's offset.
    pub(crate) last_offset: Offset,
    /// The last stable offset once this transaction is complete: the first offset of the
    /// earliest other open transaction, or right after the marker (Kafka's entry field).
    pub(crate) last_stable_offset: Offset,
}

/// The verdict on a leader append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendCheck {
    /// Append the batch (and then `record_batch` it).
    Append,
    /// The batch is a retry of one already in the log: answer with its offsets.
    Duplicate(BatchMetadata),
    /// A transaction marker with nothing left to do here: the producer already moved to its
    /// epoch or past it (the coordinator sent the marker again, or it is a late copy of one
    /// that landed). Nothing is written; it is answered as done.
    StaleMarker,
}

/// Adds `increment` to a sequence number, wrapping from `i32::MAX` to 0 as Kafka's
/// `DefaultRecordBatch.incrementSequence` does.
pub(crate) fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// The sequence of the batch's last record. It counts from the last offset delta, not the
/// record count: the two agree on append, and a batch the cleaner emptied keeps its delta
/// (as Kafka's `lastSequence` does), so its sequence range survives compaction.
fn last_sequence(header: &BatchHeader) -> i32 {
    increment_sequence(header.base_sequence, header.last_offset_delta.max(0))
}

fn is_idempotent(header: &BatchHeader) -> bool {
    header.producer_id >= 0
}

/// The producers of one partition and their snapshot files.
pub(crate) struct ProducerStateManager {
    dir: PathBuf,
    /// Ordered by producer id, so snapshots and listings are deterministic.
    producers: BTreeMap<i64, ProducerEntry>,
    /// Offsets of the snapshot files in `dir`.
    snapshots: BTreeSet<Offset>,
    /// Open transactions: first offset -> producer id, mirroring `current_txn_first_offset`
    /// of `producers`, so that the last stable offset costs a lookup, not a scan.
    ongoing: BTreeMap<Offset, i64>,
}

impl ProducerStateManager {
    /// Loads the state of a log ending at `log_end`: deletes snapshots above the end (the
    /// batches they describe are gone), then loads the newest readable one. Returns the
    /// manager and the offset the caller must replay batches from (the snapshot's, or `None`
    /// for the whole log).
    pub(crate) fn open(
        dir: &Path,
        log_end: Offset,
    ) -> Result<(ProducerStateManager, Option<Offset>), LogError> {
        let mut manager = ProducerStateManager {
            dir: dir.to_path_buf(),
            producers: BTreeMap::new(),
            snapshots: snapshot::list(dir)?,
            ongoing: BTreeMap::new(),
        };
        let from = manager.load_newest_at_or_below(log_end)?;
        Ok((manager, from))
    }

    /// Drops the snapshots above `end`, durably, and replaces the state with the newest
    /// readable snapshot at or below it (corrupt ones are deleted). Returns its offset.
    fn load_newest_at_or_below(&mut self, end: Offset) -> Result<Option<Offset>, LogError> {
        let above: Vec<Offset> = self.snapshots.range(end.next()..).copied().collect();
        self.remove_snapshots(&above)?;
        self.producers.clear();
        self.ongoing.clear();
        while let Some(&offset) = self.snapshots.last() {
            match snapshot::read(&self.dir, offset) {
                Ok(producers) => {
                    self.producers = producers;
                    self.rebuild_ongoing();
                    return Ok(Some(offset));
                }
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %offset, %error,
                        "ignoring a corrupt producer state snapshot");
                    self.remove_snapshots(&[offset])?;
                }
            }
        }
        Ok(None)
    }

    fn rebuild_ongoing(&mut self) {
        self.ongoing = self
            .producers
            .iter()
            .filter_map(|(&id, entry)| Some((entry.current_txn_first_offset?, id)))
            .collect();
    }

    /// Removes snapshot files, fsyncing the directory: a deleted snapshot that came back
    /// after a crash could describe batches a truncation removed.
    fn remove_snapshots(&mut self, offsets: &[Offset]) -> Result<(), LogError> {
        for &offset in offsets {
            snapshot::remove(&self.dir, offset)?;
            self.snapshots.remove(&offset);
        }
        if !offsets.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Checks a batch a producer sends to the leader (see the module comment). A batch with
    /// no producer id (-1) is not idempotent and always appended.
    ///
    /// An unknown producer id may start at any sequence and any epoch, as in Kafka since
    /// KIP-360: its state may have expired, or gone with the segments retention deleted
    /// before a restart, and refusing it (UNKNOWN_PRODUCER_ID) would fail a live producer
    /// that merely paused. The price is that a retry arriving after its producer expired is
    /// not recognised, which `producer.id.expiration.ms` (a day) makes unlikely.
    pub(crate) fn check_leader_append(
        &self,
        header: &BatchHeader,
    ) -> Result<AppendCheck, LogError> {
        if !is_idempotent(header) {
            if header.is_transactional() || header.is_control() {
                return Err(LogError::corrupt(
                    "a transactional or control batch needs a producer id",
                ));
            }
            return Ok(AppendCheck::Append);
        }
        let producer_id = header.producer_id;
        if header.is_control() {
            return self.check_marker(header);
        }
        if header.producer_epoch < 0 || header.base_sequence < 0 {
            return Err(LogError::corrupt(format!(
                "batch of producer {producer_id} has epoch {} and base sequence {}; an \
                 idempotent batch needs both non-negative",
                header.producer_epoch, header.base_sequence
            )));
        }
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(AppendCheck::Append);
        };
        let (epoch, first_seq) = (header.producer_epoch, header.base_sequence);
        if epoch < entry.epoch {
            return Err(LogError::ProducerFenced {
                producer_id,
                epoch,
                current_epoch: entry.epoch,
            });
        }
        if let Some(first) = entry.current_txn_first_offset
            && !header.is_transactional()
        {
            return Err(LogError::InvalidTxnState {
                producer_id,
                reason: format!(
                    "a non-transactional batch arrived while the producer's transaction \
                     from offset {first} is open; end the transaction first"
                ),
            });
        }
        if epoch > entry.epoch {
            // A new epoch restarts the sequence: anything else means batches were lost.
            if first_seq != 0 {
                return Err(LogError::OutOfOrderSequence {
                    producer_id,
                    epoch,
                    expected: 0,
                    got: first_seq,
                });
            }
            return Ok(AppendCheck::Append);
        }
        if let Some(original) = entry.find_duplicate(first_seq, last_sequence(header)) {
            return Ok(AppendCheck::Duplicate(original));
        }
        // An entry without batches is one a marker moved to a new epoch: like a data batch
        // of a new epoch, the producer's first batch in it starts at 0.
        let expected = entry
            .last_batch()
            .map_or(0, |last| increment_sequence(last.last_seq, 1));
        if expected != first_seq {
            return Err(LogError::OutOfOrderSequence {
                producer_id,
                epoch,
                expected,
                got: first_seq,
            });
        }
        Ok(AppendCheck::Append)
    }

    /// Checks a transaction marker the coordinator has the leader append. Markers carry no
    /// sequence, only an epoch: the epoch the producer moved to when its transaction ended
    /// (transaction v2), newer than every batch of that transaction. A marker is appended
    /// only when its epoch is newer than the producer's here (or the producer is unknown
    /// here: it added the partition but nothing of it landed, and the marker fences any
    /// late batch of the finished transaction). A marker whose epoch the producer already
    /// has is a copy sent again, or a late copy arriving while the producer's next
    /// transaction (which runs under that epoch) is open here: appending it would end that
    /// transaction early, so it is skipped, as is a marker of an older epoch.
    fn check_marker(&self, header: &BatchHeader) -> Result<AppendCheck, LogError> {
        let producer_id = header.producer_id;
        let epoch = header.producer_epoch;
        if epoch < 0 {
            return Err(LogError::corrupt(format!(
                "transaction marker of producer {producer_id} has epoch {epoch}"
            )));
        }
        match self.producers.get(&producer_id) {
            Some(entry) if epoch <= entry.epoch => Ok(AppendCheck::StaleMarker),
            _ => Ok(AppendCheck::Append),
        }
    }

    /// The first offset of the earliest open transaction: read_committed consumers see
    /// nothing at or above it (the last stable offset is the smaller of it and the high
    /// watermark).
    pub(crate) fn first_unstable_offset(&self) -> Option<Offset> {
        self.ongoing.keys().next().copied()
    }

    /// Every open transaction as (producer id, first offset), earliest first.
    pub(crate) fn open_transactions(&self) -> Vec<(i64, Offset)> {
        self.ongoing
            .iter()
            .map(|(&first, &id)| (id, first))
            .collect()
    }

    /// Records an appended batch, unchecked (leader appends were checked before, replicated
    /// ones mirror the leader). A batch at or below the producer's last recorded one is
    /// ignored, so that replaying an overlapping range cannot record a batch twice.
    ///
    /// A marker ends the producer's transaction and returns it; the caller records an
    /// aborted one in the aborted-transaction index.
    pub(crate) fn record_batch(&mut self, header: &BatchHeader) -> Option<CompletedTxn> {
        if !is_idempotent(header) {
            return None;
        }
        if header.is_control() {
            return self.record_marker(header);
        }
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_CACHED),
                last_timestamp_ms: header.max_timestamp_ms,
                current_txn_first_offset: None,
            });
        if entry
            .last_batch()
            .is_some_and(|last| last.last_offset >= header.base_offset)
        {
            return None;
        }
        if entry.epoch != header.producer_epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == PRODUCER_BATCHES_CACHED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMetadata {
            first_seq: header.base_sequence,
            last_seq: last_sequence(header),
            first_offset: header.base_offset,
            last_offset: header.last_offset(),
            max_timestamp_ms: header.max_timestamp_ms,
        });
        entry.last_timestamp_ms = header.max_timestamp_ms;
        if header.is_transactional() && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(header.base_offset);
            self.ongoing.insert(header.base_offset, header.producer_id);
        }
        None
    }

    /// Records a marker: ends the producer's open transaction and, for a newer epoch, moves
    /// the producer to it with no cached batch (see `check_leader_append`).
    fn record_marker(&mut self, header: &BatchHeader) -> Option<CompletedTxn> {
        let producer_id = header.producer_id;
        let marker_offset = header.base_offset;
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_CACHED),
                last_timestamp_ms: header.max_timestamp_ms,
                current_txn_first_offset: None,
            });
        // A replay overlapping what is recorded must not end a later transaction.
        if entry
            .last_batch()
            .is_some_and(|last| last.last_offset >= marker_offset)
        {
            return None;
        }
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(header.max_timestamp_ms);
        let first_offset = match entry.current_txn_first_offset.take() {
            Some(first) => {
                self.ongoing.remove(&first);
                first
            }
            None => marker_offset,
        };
        let last_stable_offset = self.first_unstable_offset().unwrap_or(marker_offset.next());
        Some(CompletedTxn {
            producer_id,
            first_offset,
            last_offset: marker_offset,
            last_stable_offset,
        })
    }

    /// Writes a snapshot of the state as of `offset` (the log end: every batch below it is
    /// recorded) and keeps the newest `PRODUCER_SNAPSHOTS_KEPT`. Rewriting the newest
    /// snapshot's offset is skipped: the state there has not changed.
    pub(crate) fn take_snapshot(&mut self, offset: Offset) -> Result<(), LogError> {
        if self.snapshots.last() == Some(&offset) {
            return Ok(());
        }
        snapshot::write(&self.dir, offset, &self.producers)?;
        self.snapshots.insert(offset);
        let excess = self.snapshots.len().saturating_sub(PRODUCER_SNAPSHOTS_KEPT);
        let oldest: Vec<Offset> = self.snapshots.iter().take(excess).copied().collect();
        self.remove_snapshots(&oldest)
    }

    /// The log was truncated to end at `end`: reloads the newest snapshot at or below it and
    /// returns the offset to replay from, as `open` does.
    pub(crate) fn truncate_to(&mut self, end: Offset) -> Result<Option<Offset>, LogError> {
        self.load_newest_at_or_below(end)
    }

    /// The log was emptied: forgets every producer and snapshot.
    pub(crate) fn truncate_fully(&mut self) -> Result<(), LogError> {
        self.producers.clear();
        self.ongoing.clear();
        let all: Vec<Offset> = self.snapshots.iter().copied().collect();
        self.remove_snapshots(&all)
    }

    /// Deletes snapshots below the log start, whose batches retention or DeleteRecords
    /// removed. The state itself stays: a producer whose batches were deleted is kept until
    /// it expires, as in Kafka, so that its next batch is still checked.
    pub(crate) fn delete_snapshots_below(&mut self, log_start: Offset) -> Result<(), LogError> {
        let below: Vec<Offset> = self.snapshots.range(..log_start).copied().collect();
        self.remove_snapshots(&below)
    }

    /// Forgets producers whose last batch is at least `expiration_ms` older than `now_ms`,
    /// except those with an open transaction. Returns how many were removed.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: u64) -> usize {
        let expiration_ms = i64::try_from(expiration_ms).unwrap_or(i64::MAX);
        let before = self.producers.len();
        self.producers.retain(|_, entry| {
            entry.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(entry.last_timestamp_ms) < expiration_ms
        });
        before - self.producers.len()
    }

    /// Every producer with a batch, ordered by producer id.
    pub(crate) fn entries(&self) -> Vec<ProducerSnapshotEntry> {
        self.producers
            .iter()
            .map(|(&producer_id, entry)| {
                // A producer a marker just moved to a new epoch has no batch of it yet: it is
                // listed with sequence and offsets -1, as Kafka's DescribeProducers shows it.
                let last = entry.last_batch();
                ProducerSnapshotEntry {
                    producer_id,
                    producer_epoch: entry.epoch,
                    last_sequence: last.map_or(-1, |b| b.last_seq),
                    last_timestamp_ms: entry.last_timestamp_ms,
                    first_offset: last.map_or(Offset(-1), |b| b.first_offset),
                    last_offset: last.map_or(Offset(-1), |b| b.last_offset),
                    current_txn_first_offset: entry.current_txn_first_offset,
                }
            })
            .collect()
    }

    /// Producer id -> last offset of its last batch, for the cleaner, which keeps that batch
    /// (empty if need be) so that the state survives compaction and a rebuild from the log.
    pub(crate) fn last_batch_offsets(&self) -> HashMap<i64, Offset> {
        self.producers
            .iter()
            .filter_map(|(&id, entry)| Some((id, entry.last_batch()?.last_offset)))
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn snapshot_offsets(&self) -> Vec<Offset> {
        self.snapshots.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests;
