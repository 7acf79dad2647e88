//! Decoded records: what a consumer sees once a batch is taken apart.

use bytes::Bytes;

use crate::batch::{BatchHeader, records_section, walk_records};
use crate::compression::DEFAULT_MAX_DECOMPRESSED_BYTES;
use crate::error::LogError;
use crate::types::Offset;
use crate::varint::Cursor;

/// A record header: a UTF-8 key and an optional value.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// One record of a decoded batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Absolute offset: the batch base offset plus the record's offset delta.
    pub offset: Offset,
    /// Absolute timestamp: the batch base timestamp plus the record's delta.
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Decodes the records of one batch into absolute offsets and timestamps, decompressing a
/// compressed batch (at most `DEFAULT_MAX_DECOMPRESSED_BYTES`). Bounds are checked as in
/// `validate_batch`, but not the CRC: run `verify_crc` or `validate_batch` first.
pub fn decode_records(batch: &[u8]) -> Result<Vec<Record>, LogError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_size_bytes() != batch.len() {
        return Err(LogError::corrupt(format!(
            "batch length says {} bytes but the buffer holds {}",
            header.total_size_bytes(),
            batch.len()
        )));
    }
    let section = records_section(batch, &header, DEFAULT_MAX_DECOMPRESSED_BYTES)?;
    let capacity = usize::try_from(header.record_count)
        .unwrap_or(0)
        .min(section.len());
    let mut records = Vec::with_capacity(capacity);
    walk_records(&section, header.record_count, |view| {
        let timestamp_ms = if header.has_log_append_time() {
            header.max_timestamp_ms
        } else {
            header
                .base_timestamp_ms
                .wrapping_add(view.timestamp_delta_ms)
        };
        // Only `validate_batch` checks the deltas; an arbitrary one must not overflow here.
        let offset = header
            .base_offset
            .0
            .checked_add(i64::from(view.offset_delta))
            .ok_or_else(|| {
                LogError::corrupt(format!(
                    "offset delta {} overflows base offset {}",
                    view.offset_delta, header.base_offset
                ))
            })?;
        records.push(Record {
            offset: Offset(offset),
            timestamp_ms,
            key: view.key.map(Bytes::copy_from_slice),
            value: view.value.map(Bytes::copy_from_slice),
            headers: decode_headers(view.headers, view.header_count)?,
        });
        Ok(())
    })?;
    Ok(records)
}

fn decode_headers(raw: &[u8], count: i32) -> Result<Vec<Header>, LogError> {
    let mut cursor = Cursor::new(raw);
    let mut headers = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(raw.len()));
    for _ in 0..count {
        let key = cursor
            .nullable_bytes("header key")?
            .ok_or_else(|| LogError::corrupt("header key is null"))?;
        let key = std::str::from_utf8(key)
            .map_err(|_| LogError::corrupt("header key is not UTF-8"))?
            .to_owned();
        let value = cursor
            .nullable_bytes("header value")?
            .map(Bytes::copy_from_slice);
        headers.push(Header { key, value });
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BATCH_HEADER_BYTES, assign_offsets, validate_batch};
    use crate::builder::RecordBatchBuilder;
    use crate::types::LeaderEpoch;

    #[test]
    fn records_round_trip_with_keys_values_headers_and_nulls() {
        let headers = vec![
            Header {
                key: "trace-id".into(),
                value: Some(Bytes::from_static(b"abc")),
            },
            Header {
                key: "".into(),
                value: None,
            },
        ];
        let mut builder = RecordBatchBuilder::new(1_000);
        builder.push(1_000, Some(b"k1"), Some(b"v1"), &headers);
        builder.push(999, None, None, &[]);
        builder.push(5_000, Some(b""), Some(&[0u8; 300]), &headers[..1]);
        assert_eq!(builder.record_count(), 3);
        let mut buf = builder.build();
        assign_offsets(&mut buf, Offset(100), LeaderEpoch(1));
        let header = validate_batch(&buf).expect("valid batch");
        assert_eq!(header.max_timestamp_ms, 5_000);
        assert_eq!(header.last_offset(), Offset(102));

        let records = decode_records(&buf).expect("decodes");
        assert_eq!(
            records,
            vec![
                Record {
                    offset: Offset(100),
                    timestamp_ms: 1_000,
                    key: Some(Bytes::from_static(b"k1")),
                    value: Some(Bytes::from_static(b"v1")),
                    headers: headers.clone(),
                },
                Record {
                    offset: Offset(101),
                    timestamp_ms: 999,
                    key: None,
                    value: None,
                    headers: vec![],
                },
                Record {
                    offset: Offset(102),
                    timestamp_ms: 5_000,
                    key: Some(Bytes::new()),
                    value: Some(Bytes::from(vec![0u8; 300])),
                    headers: headers[..1].to_vec(),
                },
            ]
        );
    }

    /// `decode_records` does not check offset deltas (only `validate_batch` does), so a delta
    /// past the end of the `i64` range must be refused, not overflow.
    #[test]
    fn an_offset_delta_that_overflows_the_base_offset_is_corrupt() {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(0, None, Some(b"a"), &[]);
        builder.push(0, None, Some(b"b"), &[]);
        let mut buf = builder.build().to_vec();
        // The highest base offset whose next offset still fits.
        assign_offsets(&mut buf, Offset(i64::MAX - 2), LeaderEpoch(0));
        let records = decode_records(&buf).expect("offsets up to i64::MAX - 1 fit");
        assert_eq!(records[1].offset, Offset(i64::MAX - 1));
        // Second record: length, attributes, ts delta, offset delta (zig-zag 1 = 2); zig-zag 6
        // is delta 3, past the end of the range.
        let second = BATCH_HEADER_BYTES + 1 + usize::from(buf[BATCH_HEADER_BYTES] / 2);
        assert_eq!(buf[second + 3], 2);
        buf[second + 3] = 6;
        assert!(matches!(
            decode_records(&buf),
            Err(LogError::CorruptBatch { .. })
        ));
    }

    #[test]
    fn decoding_garbage_fails_without_panicking() {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(0, Some(b"key"), Some(b"value"), &[]);
        let buf = builder.build().to_vec();
        for cut in 0..buf.len() {
            assert!(decode_records(&buf[..cut]).is_err());
        }
        for byte in BATCH_HEADER_BYTES..buf.len() {
            let mut bad = buf.clone();
            bad[byte] = 0xff;
            let _ = decode_records(&bad);
        }
    }
}
