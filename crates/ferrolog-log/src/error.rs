//! The one error type of the storage engine.

use crate::compression::Compression;
use crate::types::Offset;

/// Everything that can go wrong in the storage engine. Variants that a client can cause
/// (`CorruptBatch`, `UnsupportedCompression`, `DecompressedTooLarge`, `RecordTooLarge`,
/// `OffsetOutOfRange`, `ProducerFenced`, `OutOfOrderSequence`, `InvalidTxnState`) are meant to be mapped to a
/// client-visible code by the broker; the others are local failures.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file system operation failed; `context` says which one, as a short verb phrase.
    #[error("failed to {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A batch failed validation or its CRC does not match: it is never stored or served.
    #[error("corrupt record batch: {reason}")]
    CorruptBatch { reason: String },
    /// The batch attributes name a codec that does not exist (ids 5 to 7).
    #[error(
        "unknown compression codec {codec}; known codecs are 0 none, 1 gzip, 2 snappy, 3 lz4, \
         4 zstd"
    )]
    UnsupportedCompression { codec: i16 },
    /// A compressed batch decompresses to more than the bound: a decompression bomb, or a
    /// batch far larger than any producer builds.
    #[error(
        "{codec} record batch decompresses to more than {max_bytes} bytes; the broker refuses \
         it (a decompression bomb or an oversized batch)"
    )]
    DecompressedTooLarge {
        codec: Compression,
        max_bytes: usize,
    },
    /// One batch is larger than `max_message_bytes`.
    #[error("record batch of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    RecordTooLarge { size_bytes: usize, max_bytes: u32 },
    /// The requested offset is not in the log.
    #[error("offset {requested} is out of range; valid offsets are {log_start}..{log_end}")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    /// DeleteRecords asked to delete records that are not committed yet.
    #[error(
        "cannot delete records before offset {requested}: it is beyond the high watermark \
         {high_watermark}, and only committed records can be deleted"
    )]
    BeyondHighWatermark {
        requested: Offset,
        high_watermark: Offset,
    },
    /// A timestamp cannot be stored or looked up (reserved for timestamp validation).
    #[error("timestamp is out of the range this log accepts")]
    TimestampOutOfRange,
    /// A replicated batch does not start at the log end offset.
    #[error("replicated batch starts at offset {actual} but the log ends at {expected}")]
    NonContiguousAppend { expected: Offset, actual: Offset },
    /// A checkpoint file (high watermark, leader epochs) cannot be parsed.
    #[error("corrupt checkpoint file {file}: {reason}")]
    CorruptCheckpoint { file: &'static str, reason: String },
    /// The segment files on disk do not form one contiguous log.
    #[error("inconsistent segments: {reason}")]
    InconsistentSegments { reason: String },
    /// An fsync of this log failed earlier. The kernel may have dropped the unwritten pages
    /// and a later fsync can report success without them (the fsyncgate lesson), so the log
    /// takes no more writes and vouches for no more durability until it is reopened, when
    /// recovery sees what the disk really holds.
    #[error("an earlier fsync of this log failed; it is offline until the broker restarts")]
    SyncFailed,
    /// An idempotent producer's batch carries an epoch older than one the partition has
    /// seen for its producer id: a newer instance of the producer took over (Kafka's
    /// INVALID_PRODUCER_EPOCH / PRODUCER_FENCED). Nothing was appended.
    #[error(
        "producer {producer_id} is fenced: its batch has epoch {epoch} but the partition has \
         seen epoch {current_epoch}"
    )]
    ProducerFenced {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    /// An idempotent producer's batch does not follow its previous one: a gap, a batch from
    /// before the last five, or a new epoch not starting at 0 (Kafka's
    /// OUT_OF_ORDER_SEQUENCE_NUMBER). Nothing was appended.
    #[error(
        "out of order sequence number for producer {producer_id} (epoch {epoch}): expected \
         sequence {expected}, got {got}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        expected: i32,
        got: i32,
    },
    /// A producer's batch does not fit its transaction state: a non-transactional batch while
    /// the producer has a transaction open in this partition (Kafka's INVALID_TXN_STATE; the
    /// producer must end the transaction first). Nothing was appended.
    #[error("invalid transaction state for producer {producer_id}: {reason}")]
    InvalidTxnState { producer_id: i64, reason: String },
}

impl LogError {
    pub(crate) fn corrupt(reason: impl Into<String>) -> LogError {
        LogError::CorruptBatch {
            reason: reason.into(),
        }
    }
}

/// Attaches a short verb phrase to I/O errors, as in `file.sync_data().context("sync segment")`.
pub(crate) trait IoContext<T> {
    fn context(self, context: &'static str) -> Result<T, LogError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: &'static str) -> Result<T, LogError> {
        self.map_err(|source| LogError::Io { context, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_message_names_the_valid_range() {
        let err = LogError::OffsetOutOfRange {
            requested: Offset(3),
            log_start: Offset(10),
            log_end: Offset(20),
        };
        assert_eq!(
            err.to_string(),
            "offset 3 is out of range; valid offsets are 10..20"
        );
    }

    #[test]
    fn producer_errors_name_the_producer_epochs_and_sequences() {
        let fenced = LogError::ProducerFenced {
            producer_id: 7,
            epoch: 2,
            current_epoch: 3,
        };
        assert_eq!(
            fenced.to_string(),
            "producer 7 is fenced: its batch has epoch 2 but the partition has seen epoch 3"
        );
        let out_of_order = LogError::OutOfOrderSequence {
            producer_id: 7,
            epoch: 3,
            expected: 10,
            got: 12,
        };
        assert_eq!(
            out_of_order.to_string(),
            "out of order sequence number for producer 7 (epoch 3): expected sequence 10, got 12"
        );
    }

    #[test]
    fn io_errors_carry_their_context() {
        let result: std::io::Result<()> = Err(std::io::Error::other("disk gone"));
        let err = result
            .context("sync segment")
            .expect_err("an error was given");
        assert_eq!(err.to_string(), "failed to sync segment: disk gone");
    }
}
