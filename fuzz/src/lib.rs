//! The bodies of Ferrolog's fuzz targets, one function per target in `fuzz_targets/`, and
//! the seed corpus they start from (`seeds`, written to `corpus/` by the `write_corpus`
//! example).
//!
//! Every target feeds untrusted bytes to a decoder that a client, a peer or a disk can reach.
//! None may panic, hang or allocate without bound on any input, and whatever a decoder
//! accepts must survive its round trip: a valid batch rebuilds into the same records, an
//! image rebuilds from its own records. A failed assertion here is a bug in the product
//! code (or in the property this file states), never in the input.

use bytes::Buf;
use ferrolog_broker::service::fuzzing::{batches_to_records, next_offset, records_to_batch};
use ferrolog_log::fuzzing::{reencode_producer_snapshot, reencode_txn_index};
use ferrolog_log::{
    BatchHeader, BatchIter, LeaderEpoch, Offset, RecordBatchBuilder, TXN_INDEX_ENTRY_BYTES,
    assign_offsets, decode_records, validate_batch, verify_crc,
};
use ferrolog_metadata::raft::fuzzing::{decode_snapshot_image, encode_snapshot_image};
use ferrolog_metadata::records::MetadataRecord;
use ferrolog_metadata::{ClusterImage, PartitionId};
use ferrolog_proto::v1;
use prost::Message;

pub mod seeds;

/// The broker's clock as `records_to_batch` sees it: the timestamp of records without one.
pub const NOW_MS: i64 = 1_700_000_000_000;
/// The base offset and leader epoch `record_batch` stamps on a valid batch, as the log does on
/// append.
const STAMP_BASE_OFFSET: Offset = Offset(1 << 40);
const STAMP_LEADER_EPOCH: LeaderEpoch = LeaderEpoch(7);
/// The records `metadata_record` applies from one input at most. Every record clones the
/// image (to compare on refusal), so long inputs cost quadratic time; 32 records reach any
/// combination of record kinds while keeping an execution short.
const MAX_RECORDS_PER_INPUT: usize = 32;
/// The index `metadata_snapshot` rebuilds a framed record list at.
const SNAPSHOT_INDEX: u64 = 42;

/// RecordBatch v2 decoding and validation (ferrolog-log), on one buffer read as a single
/// batch and as concatenated batches (a fetch response, a segment).
///
/// Checks: a batch `validate_batch` accepts passes `verify_crc`, decodes into exactly
/// `record_count` records at consecutive offsets, stays valid with other offsets stamped by
/// `assign_offsets`, and rebuilds with `RecordBatchBuilder` into a batch that decodes to the
/// same records.
pub fn record_batch(data: &[u8]) {
    if let Ok(header) = BatchHeader::parse(data) {
        let _ = (
            header.total_size_bytes(),
            header.last_offset(),
            header.next_offset(),
            header.compression().ok(),
            header.has_log_append_time(),
        );
    }
    let crc = verify_crc(data);
    let decoded = decode_records(data);
    if let Ok(records) = &decoded {
        let header = BatchHeader::parse(data).expect("decode_records parsed this header");
        let expected = usize::try_from(header.record_count).unwrap_or(0);
        assert_eq!(
            records.len(),
            expected,
            "decoded a different number of records"
        );
    }
    if let Ok(header) = validate_batch(data) {
        assert_eq!(crc.ok(), Some(header), "a valid batch failed its CRC check");
        let records = decoded.expect("a valid batch decodes");
        check_valid_batch(data, &header, &records);
    }
    let mut consumed = 0usize;
    for item in BatchIter::new(data) {
        let Ok((header, batch)) = item else { break };
        assert_eq!(batch.len(), header.total_size_bytes());
        assert!(
            verify_crc(batch).is_ok(),
            "BatchIter yielded a batch with a bad CRC"
        );
        consumed += batch.len();
    }
    assert!(consumed <= data.len());
}

fn check_valid_batch(data: &[u8], header: &BatchHeader, records: &[ferrolog_log::Record]) {
    assert_eq!(records.len() as i64, i64::from(header.record_count));
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.offset, Offset(header.base_offset.0 + i as i64));
    }
    assert_eq!(records.last().map(|r| r.offset), Some(header.last_offset()));

    let mut stamped = data.to_vec();
    assign_offsets(&mut stamped, STAMP_BASE_OFFSET, STAMP_LEADER_EPOCH);
    let restamped = validate_batch(&stamped).expect("stamping offsets keeps a batch valid");
    assert_eq!(
        restamped,
        BatchHeader {
            base_offset: STAMP_BASE_OFFSET,
            partition_leader_epoch: STAMP_LEADER_EPOCH,
            ..*header
        }
    );
    let shifted = decode_records(&stamped).expect("a stamped batch decodes");
    for (before, after) in records.iter().zip(&shifted) {
        let delta = before.offset.0 - header.base_offset.0;
        assert_eq!(after.offset, Offset(STAMP_BASE_OFFSET.0 + delta));
        assert_eq!(
            (&after.key, &after.value, &after.headers, after.timestamp_ms),
            (
                &before.key,
                &before.value,
                &before.headers,
                before.timestamp_ms
            )
        );
    }

    // The builder writes only non-negative timestamps relative to the base, and never the
    // log-append-time flag (which replaces every record's timestamp on decode).
    let rebuildable = !header.has_log_append_time()
        && header.base_timestamp_ms >= 0
        && records.iter().all(|r| r.timestamp_ms >= 0);
    if rebuildable {
        let mut builder = RecordBatchBuilder::new(header.base_timestamp_ms);
        for r in records {
            builder.push(
                r.timestamp_ms,
                r.key.as_deref(),
                r.value.as_deref(),
                &r.headers,
            );
        }
        let mut rebuilt = builder.build();
        assign_offsets(
            &mut rebuilt,
            header.base_offset,
            header.partition_leader_epoch,
        );
        let rebuilt_header = validate_batch(&rebuilt).expect("a rebuilt batch is valid");
        assert_eq!(rebuilt_header.record_count, header.record_count);
        assert_eq!(rebuilt_header.last_offset(), header.last_offset());
        let again = decode_records(&rebuilt).expect("a rebuilt batch decodes");
        assert_eq!(again, records, "a rebuilt batch decodes to other records");
    }
}

/// The gRPC produce and fetch conversions (ferrolog-broker): a prost-decoded
/// `v1::ProduceRequest` whose structured records `records_to_batch` turns into a batch, and
/// whose `record_batch` bytes go through the produce path's `validate_batch` and the fetch
/// side's `batches_to_records` and `next_offset`.
///
/// Checks: `records_to_batch` refuses exactly the requests with a negative timestamp; the
/// batch it builds is valid, and converts back to the same records at offsets 0, 1, ...
pub fn grpc_records(data: &[u8]) {
    let Ok(request) = v1::ProduceRequest::decode(data) else {
        return;
    };
    if !request.records.is_empty() {
        let negative = request
            .records
            .iter()
            .any(|r| r.timestamp_ms.unwrap_or(NOW_MS) < 0);
        match records_to_batch(&request.records, NOW_MS) {
            Ok(batch) => {
                assert!(!negative, "records_to_batch accepted a negative timestamp");
                check_converted_batch(&request.records, &batch);
            }
            Err(_) => assert!(negative, "records_to_batch refused valid records"),
        }
    }
    if !request.record_batch.is_empty() {
        let _ = validate_batch(&request.record_batch);
    }
    let from = Offset(i64::from(request.partition));
    if let Ok(records) = batches_to_records(&request.record_batch, from) {
        assert!(
            records.iter().all(|r| r.offset >= from.0),
            "returned a record before `from`"
        );
    }
    let _ = next_offset(&request.record_batch, from);
}

fn check_converted_batch(sent: &[v1::Record], batch: &[u8]) {
    let header = validate_batch(batch).expect("records_to_batch builds a valid batch");
    assert_eq!(usize::try_from(header.record_count).ok(), Some(sent.len()));
    let received = batches_to_records(batch, Offset::ZERO).expect("a built batch converts back");
    let expected: Vec<v1::Record> = sent
        .iter()
        .enumerate()
        .map(|(i, r)| v1::Record {
            timestamp_ms: Some(r.timestamp_ms.unwrap_or(NOW_MS)),
            offset: i as i64,
            ..r.clone()
        })
        .collect();
    assert_eq!(
        received, expected,
        "records changed on their way through a batch"
    );
    assert_eq!(next_offset(batch, Offset::ZERO), Offset(sent.len() as i64));
}

/// Metadata record decoding and apply (ferrolog-metadata): the input is a sequence of
/// length-delimited `MetadataRecord`s, applied in order, each at the next index, to the image
/// `seeds::base_image` builds; records past `MAX_RECORDS_PER_INPUT` are ignored.
///
/// Checks: applying never panics; a refused record leaves the image unchanged; an accepted
/// one moves `applied_index`; the final image rebuilds exactly from its own records (what a
/// snapshot stores).
pub fn metadata_record(data: &[u8]) {
    let mut image = seeds::base_image();
    let mut buf = data;
    for _ in 0..MAX_RECORDS_PER_INPUT {
        if !buf.has_remaining() {
            break;
        }
        let Ok(record) = MetadataRecord::decode_length_delimited(&mut buf) else {
            break;
        };
        let index = image.applied_index + 1;
        let before = image.clone();
        match image.apply(index, &record) {
            Ok(()) => assert_eq!(image.applied_index, index),
            Err(_) => assert_eq!(image, before, "a refused record changed the image"),
        }
        read_image(&image);
    }
    check_rebuilds_from_own_records(&image);
}

/// Snapshot decoding (ferrolog-metadata). The first byte picks the decoder: even, the rest is
/// a state-machine snapshot payload (postcard) for `decode_snapshot_image`; odd, the rest is
/// a list of records, each a 2-byte little-endian length and that many bytes, for
/// `ClusterImage::from_records`.
///
/// Checks: decoding never panics; an image decoded either way is at its stated index and
/// rebuilds from its own records, and through a snapshot payload of its own.
pub fn metadata_snapshot(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let image = if mode % 2 == 0 {
        match decode_snapshot_image(rest) {
            Ok(image) => image,
            Err(_) => return,
        }
    } else {
        let records = split_framed(rest);
        match ClusterImage::from_records(SNAPSHOT_INDEX, &records) {
            Ok(image) => {
                assert_eq!(image.applied_index, SNAPSHOT_INDEX);
                image
            }
            Err(_) => return,
        }
    };
    read_image(&image);
    check_rebuilds_from_own_records(&image);
    let payload = encode_snapshot_image(&image).expect("an image encodes as a snapshot");
    let decoded = decode_snapshot_image(&payload).expect("an image's own snapshot decodes");
    assert_eq!(decoded, image, "an image changed through its own snapshot");
}

/// Where a producer state snapshot names its offset (after magic, version and CRC); the
/// target reads the expected offset from there so that inputs reach past the offset check.
const SNAPSHOT_OFFSET_AT: usize = 10;

/// Producer state snapshot decoding (ferrolog-log), as `Log::open` reads a `.snapshot`
/// file, expecting the offset the input itself names.
///
/// Checks: decoding never panics; a snapshot it accepts encodes to a canonical form that
/// decodes again and encodes to the same bytes.
pub fn producer_snapshot(data: &[u8]) {
    let offset = data
        .get(SNAPSHOT_OFFSET_AT..SNAPSHOT_OFFSET_AT + 8)
        .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
        .map_or(0, i64::from_be_bytes);
    let Ok(canonical) = reencode_producer_snapshot(data, Offset(offset)) else {
        return;
    };
    let again = reencode_producer_snapshot(&canonical, Offset(offset))
        .expect("a snapshot's own encoding decodes");
    assert_eq!(
        again, canonical,
        "a snapshot changed through its own encoding"
    );
}

/// Aborted-transaction index decoding (ferrolog-log), as a segment load reads a
/// `.txnindex` file.
///
/// Checks: decoding never panics; it keeps a prefix of whole entries, and that prefix is
/// exactly what its entries encode to.
pub fn txn_index(data: &[u8]) {
    let (kept, encoded) = reencode_txn_index(data);
    assert!(kept <= data.len(), "kept more than the input");
    assert_eq!(kept % TXN_INDEX_ENTRY_BYTES, 0, "kept a partial entry");
    assert_eq!(
        encoded,
        data[..kept],
        "the kept entries re-encode differently"
    );
}

/// Splits `bytes` into records framed by a 2-byte little-endian length; a short last frame
/// takes what is left.
pub fn split_framed(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    while bytes.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
        let end = (2 + len).min(bytes.len());
        records.push(bytes[2..end].to_vec());
        bytes = &bytes[end..];
    }
    records
}

/// Frames `records` as `split_framed` reads them.
pub fn join_framed(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        let len = u16::try_from(record.len()).expect("seed records are small");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// Calls the image's accessors, which brokers and the controller use on whatever the
/// records made of it.
fn read_image(image: &ClusterImage) {
    for (name, topic) in &image.topics {
        assert_eq!(image.topic(name).map(|t| &t.name), Some(name));
        let _ = topic.replication_factor();
        for (i, partition) in topic.partitions.iter().enumerate() {
            let _ = (partition.target_replicas(), partition.is_reassigning());
            let id = PartitionId(u32::try_from(i).expect("few partitions"));
            assert_eq!(topic.partition(id), Some(partition));
        }
    }
}

/// An image must rebuild exactly from `to_records`, encoded: that is what a snapshot holds
/// and what a broker behind the purged log receives.
fn check_rebuilds_from_own_records(image: &ClusterImage) {
    let encoded: Vec<Vec<u8>> = image
        .to_records()
        .iter()
        .map(Message::encode_to_vec)
        .collect();
    let rebuilt = ClusterImage::from_records(image.applied_index, &encoded)
        .expect("an image's own records apply");
    assert_eq!(&rebuilt, image, "an image changed through its own records");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_its_target_and_the_committed_corpus_is_current() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (target, name, bytes) in seeds::all() {
            match target {
                "record_batch" => record_batch(&bytes),
                "grpc_records" => grpc_records(&bytes),
                "metadata_record" => metadata_record(&bytes),
                "metadata_snapshot" => metadata_snapshot(&bytes),
                "producer_snapshot" => producer_snapshot(&bytes),
                "txn_index" => txn_index(&bytes),
                other => panic!("seed for unknown target {other}"),
            }
            let path = corpus.join(target).join(&name);
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; run the write_corpus example", path.display())
            });
            assert_eq!(
                committed,
                bytes,
                "{} is stale; run the write_corpus example",
                path.display()
            );
        }
    }

    #[test]
    fn every_bit_flip_and_cut_of_the_log_state_seeds_runs_clean() {
        let (snapshot, index) = seeds::log_state_files();
        for (bytes, target) in [
            (snapshot, producer_snapshot as fn(&[u8])),
            (index, txn_index as fn(&[u8])),
        ] {
            target(&bytes);
            for at in 0..bytes.len() {
                target(&bytes[..at]);
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[at] ^= 1 << bit;
                    target(&flipped);
                }
            }
        }
    }

    #[test]
    fn framing_round_trips() {
        let records = vec![vec![1, 2, 3], vec![], vec![9; 300]];
        assert_eq!(split_framed(&join_framed(&records)), records);
        assert_eq!(split_framed(&[5, 0, 1]), vec![vec![1]]);
    }
}
