//! The storage engine of one Ferrolog partition: Kafka RecordBatch v2 batches (uncompressed or
//! with Kafka's gzip, snappy, lz4 and zstd codecs) in segment files with sparse offset and time
//! indexes, crash recovery, retention, compaction (the log cleaner, `cleaner`), the
//! per-partition replication state (high watermark, leader-epoch cache), idempotent
//! producers' state with its snapshots (`producer_state`), and the storage half of
//! transactions: markers (`control`), open transactions and the last stable offset, the
//! per-segment aborted-transaction index (`txn_index`) and read_committed filtering
//! (`read_committed`). The transaction coordinator itself lives in the broker.
//!
//! This crate **must not depend on networking, async runtimes or Raft**: it is synchronous
//! `std::fs` code. Durability policy and group commit belong to the broker, which drives
//! `Log::flush`, `Log::sync_handle` and `Log::mark_flushed`.

mod batch;
mod builder;
mod checkpoint;
mod cleaner;
mod compression;
mod config;
mod control;
mod epoch_cache;
mod error;
mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod log;
mod producer_state;
mod read_committed;
mod recent;
mod record;
mod segment;
mod stored_batch;
mod sync_probe;
mod test_faults;
mod txn_index;
mod types;
mod varint;

pub use batch::{
    BATCH_HEADER_BYTES, BatchHeader, BatchIter, assign_offsets, validate_batch,
    validate_batch_within, verify_crc,
};
pub use builder::{RecordBatchBuilder, compress_batch, set_producer_fields, set_transactional};
pub use cleaner::{
    BatchRetention, BatchVerdict, CleanOutcome, CleanStats, CleanTask, CleanedLog, CleanerOptions,
    CompactEveryDataBatch, DEFAULT_DEDUPE_BUFFER_BYTES, DirtyState, Throttle,
};
pub use compression::{Compression, DEFAULT_MAX_DECOMPRESSED_BYTES, compress, decompress};
pub use config::{CompactionConfig, DEFAULT_PRODUCER_ID_EXPIRATION_MS, FlushPolicy, LogConfig};
pub use control::{ControlType, build_control_batch, parse_control_batch};
pub use error::LogError;
pub use log::{AppendInfo, Log, ReadResult, RetentionOutcome, SyncHandle};
pub use producer_state::{
    PRODUCER_BATCHES_CACHED, PRODUCER_SNAPSHOTS_KEPT, ProducerSnapshotEntry, ProducerStateRecovery,
};
pub use read_committed::{ReadCommittedFilter, filter_read_committed};
pub use recent::{PARTITION_RECENT_MAX_BYTES, RecentBatchBudget};
pub use record::{Header, Record, decode_records};
pub use stored_batch::validate_stored_batch;
pub use sync_probe::{SyncObserver, install_sync_observer};
pub use test_faults::TEST_FAULTS_ENV;
pub use txn_index::{AbortedTxn, TXN_INDEX_ENTRY_BYTES};
pub use types::{LeaderEpoch, Offset};
