//! The cleaner's one contact with compression: reading a batch's records section and writing
//! a rebuilt one with the batch's own codec, so the rest of the cleaner never looks at a
//! codec id.

use std::borrow::Cow;

use crate::batch::{BatchHeader, records_section};
use crate::compression::{Compression, compress};
use crate::error::LogError;

/// The raw records of `batch` (everything after the header), decompressed if needed, at
/// most `max_bytes` of them.
pub(crate) fn records_of<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
    max_bytes: usize,
) -> Result<Cow<'a, [u8]>, LogError> {
    records_section(batch, header, max_bytes)
}

/// Encodes `raw` records for a batch whose original header is `header`, with its codec.
pub(crate) fn encode_records(header: &BatchHeader, raw: Vec<u8>) -> Result<Vec<u8>, LogError> {
    match header.compression()? {
        Compression::None => Ok(raw),
        codec => compress(codec, &raw),
    }
}

/// Whether the batch's records are compressed.
pub(crate) fn is_compressed(header: &BatchHeader) -> Result<bool, LogError> {
    Ok(header.compression()? != Compression::None)
}
