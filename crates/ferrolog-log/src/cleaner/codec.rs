//! The cleaner's one contact with compression: reading a batch's records section and writing
//! a rebuilt one with the batch's own codec.
//!
//! Until the compression codecs land (`crate::compression`), only uncompressed batches are
//! stored, and a compressed one is an error here as everywhere else. The two functions below
//! are the whole seam: once `compression::{compress, decompress}` exist they call them, and
//! the rest of the cleaner never looks at a codec id.

use std::borrow::Cow;

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader};
use crate::error::LogError;

/// The raw records of `batch` (everything after the header), decompressed if needed.
pub(crate) fn records_of<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, LogError> {
    match header.compression_codec() {
        0 => Ok(Cow::Borrowed(&batch[BATCH_HEADER_BYTES..])),
        codec => Err(LogError::UnsupportedCompression { codec }),
    }
}

/// Encodes `raw` records for a batch whose original header is `header`, with its codec.
pub(crate) fn encode_records(header: &BatchHeader, raw: Vec<u8>) -> Result<Vec<u8>, LogError> {
    match header.compression_codec() {
        0 => Ok(raw),
        codec => Err(LogError::UnsupportedCompression { codec }),
    }
}
