//! Conversions between the wire's structured records and RecordBatch v2 bytes.

use bytes::BytesMut;
use ferrolog_log::{BatchIter, Header, Offset, RecordBatchBuilder, decode_records};
use ferrolog_proto::v1;

use crate::BrokerError;

/// Builds one batch from structured records; an unset timestamp means `now_ms`.
pub fn records_to_batch(records: &[v1::Record], now_ms: i64) -> Result<BytesMut, BrokerError> {
    let base_timestamp_ms = records
        .first()
        .and_then(|r| r.timestamp_ms)
        .unwrap_or(now_ms);
    if base_timestamp_ms < 0 {
        return Err(BrokerError::InvalidRequest(format!(
            "record timestamp {base_timestamp_ms} is negative; use Unix milliseconds"
        )));
    }
    let mut builder = RecordBatchBuilder::new(base_timestamp_ms);
    let mut headers = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let timestamp_ms = record.timestamp_ms.unwrap_or(now_ms);
        if timestamp_ms < 0 {
            return Err(BrokerError::InvalidRequest(format!(
                "record {i} has negative timestamp {timestamp_ms}; use Unix milliseconds"
            )));
        }
        headers.clear();
        headers.extend(record.headers.iter().map(|h| Header {
            key: h.key.clone(),
            value: h.value.clone(),
        }));
        builder.push(
            timestamp_ms,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
    }
    Ok(builder.build())
}

/// Decodes concatenated batches into structured records, skipping those before `from`
/// (a fetch starts at the batch that contains `from`).
pub fn batches_to_records(batches: &[u8], from: Offset) -> Result<Vec<v1::Record>, BrokerError> {
    let mut records = Vec::new();
    for batch in BatchIter::new(batches) {
        let (header, bytes) = batch?;
        // Transaction markers are the log's bookkeeping, never a consumer's record.
        if header.is_control() {
            continue;
        }
        for record in decode_records(bytes)? {
            if record.offset < from {
                continue;
            }
            records.push(v1::Record {
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|h| v1::RecordHeader {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
                timestamp_ms: Some(record.timestamp_ms),
                offset: record.offset.0,
            });
        }
    }
    Ok(records)
}

/// The offset after the last batch in `batches`, or `from` when there is none.
pub fn next_offset(batches: &[u8], from: Offset) -> Offset {
    BatchIter::new(batches)
        .map_while(Result::ok)
        .last()
        .map_or(from, |(header, _)| header.next_offset().max(from))
}
