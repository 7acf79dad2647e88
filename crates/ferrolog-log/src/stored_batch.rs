//! What a batch at rest in a segment may look like, which is more than what a producer may
//! send (`validate_batch`).
//!
//! The log cleaner keeps every surviving record's offset (as Kafka does for v2 batches): a
//! cleaned batch keeps its base offset and last offset delta while some of its records are
//! gone, so its offset deltas are ascending with gaps, and a batch whose records all went
//! may stay as an empty header (record count 0) to keep a segment's end offset. Followers
//! replicate such batches as they are. Recovery therefore checks stored batches with this
//! rule, never with the produce path's "delta `i` for record `i`".

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader, verify_crc, walk_records};
use crate::cleaner::codec::is_compressed;
use crate::error::LogError;

/// Checks one stored batch: CRC, a record count in `0..=last_offset_delta + 1`, offset
/// deltas strictly ascending within `0..=last_offset_delta`, and every varint and length in
/// bounds. An empty batch has no records section at all. The records of a compressed batch
/// are not decompressed: its CRC vouches for them (as in Kafka's recovery), and a batch that
/// decompresses beyond a bound set later must not make recovery truncate the log there.
pub fn validate_stored_batch(buf: &[u8]) -> Result<BatchHeader, LogError> {
    let header = verify_crc(buf)?;
    if header.record_count < 0
        || header.last_offset_delta < 0
        || i64::from(header.record_count) > i64::from(header.last_offset_delta) + 1
    {
        return Err(LogError::corrupt(format!(
            "record count {} does not fit last offset delta {}",
            header.record_count, header.last_offset_delta
        )));
    }
    if header.record_count == 0 {
        if buf.len() != BATCH_HEADER_BYTES {
            return Err(LogError::corrupt(
                "an empty batch carries a records section",
            ));
        }
        return Ok(header);
    }
    if is_compressed(&header)? {
        return Ok(header);
    }
    let records = &buf[BATCH_HEADER_BYTES..];
    let mut previous: Option<i32> = None;
    walk_records(records, header.record_count, |record| {
        let delta = record.offset_delta;
        if delta < 0 || delta > header.last_offset_delta || previous.is_some_and(|p| delta <= p) {
            return Err(LogError::corrupt(format!(
                "offset delta {delta} is not ascending within 0..={}",
                header.last_offset_delta
            )));
        }
        previous = Some(delta);
        Ok(())
    })?;
    Ok(header)
}
