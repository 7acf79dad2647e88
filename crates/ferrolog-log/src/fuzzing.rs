//! Entry points for the fuzz targets (`fuzz/`) into decoders of bytes read from disk, which
//! are otherwise private. Not for any other use: the signatures follow the fuzz targets.

use crate::error::LogError;
use crate::producer_state::snapshot;
use crate::txn_index::{TXN_INDEX_ENTRY_BYTES, decode_txn_index, encode_txn_index};
use crate::types::Offset;

/// Decodes a producer state snapshot file expected at `offset` and, if it is accepted,
/// returns it encoded again (the canonical form: producers ordered by id).
pub fn reencode_producer_snapshot(bytes: &[u8], offset: Offset) -> Result<Vec<u8>, LogError> {
    let producers = snapshot::decode(bytes, offset)?;
    Ok(snapshot::encode(offset, &producers))
}

/// Decodes an aborted-transaction index file as a segment load does, returning how many
/// leading bytes it keeps and those bytes encoded again (equal to them, as the format has
/// a single encoding).
pub fn reencode_txn_index(bytes: &[u8]) -> (usize, Vec<u8>) {
    let entries = decode_txn_index(bytes);
    (
        entries.len() * TXN_INDEX_ENTRY_BYTES,
        encode_txn_index(&entries),
    )
}
