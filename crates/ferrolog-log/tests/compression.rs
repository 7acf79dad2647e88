//! Compressed batches through `Log`: stored as sent, or recompressed when the topic's
//! `compression.type` names a codec; read back, replicated and recovered byte for byte.

mod common;

use bytes::BytesMut;
use common::small_config;
use ferrolog_log::{
    BatchIter, Compression, LeaderEpoch, Log, LogConfig, LogError, Offset, RecordBatchBuilder,
    decode_records,
};

const T0_MS: i64 = 1_700_000_000_000;

fn json_batch(codec: Compression, first: u32, count: u32) -> BytesMut {
    let mut builder = RecordBatchBuilder::new(T0_MS);
    for i in first..first + count {
        let key = format!("customer-{}", i % 7);
        let value = format!(r#"{{"order":{i},"status":"shipped","currency":"EUR"}}"#);
        builder.push(
            T0_MS + i64::from(i),
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &[],
        );
    }
    builder.build_compressed(codec).expect("builds")
}

fn stored_batches(log: &Log) -> Result<Vec<(Compression, Vec<u8>)>, LogError> {
    let read = log.read(log.log_start_offset(), u32::MAX, log.log_end_offset())?;
    BatchIter::new(&read.batches)
        .map(|item| {
            let (header, bytes) = item?;
            Ok((header.compression()?, bytes.to_vec()))
        })
        .collect()
}

#[test]
fn with_compression_type_producer_every_codec_is_stored_as_sent_and_survives_reopening()
-> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sent = Vec::new();
    {
        let mut log = Log::open(dir.path(), small_config())?;
        for (i, codec) in Compression::ALL.into_iter().enumerate() {
            let mut batch = json_batch(codec, i as u32 * 20, 20);
            log.append_batch(&mut batch, LeaderEpoch(1), T0_MS)?;
            sent.push((codec, batch.to_vec()));
        }
        log.flush()?;
    }
    let log = Log::open(dir.path(), small_config())?;
    assert_eq!(log.log_end_offset(), Offset(100));
    assert_eq!(
        stored_batches(&log)?,
        sent,
        "the bytes on disk are the producer's"
    );
    let mut offsets = Vec::new();
    for (_, bytes) in &sent {
        offsets.extend(decode_records(bytes)?.iter().map(|r| r.offset.0));
    }
    assert_eq!(offsets, (0..100).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn with_a_topic_codec_the_log_recompresses_batches_that_arrive_with_another() -> Result<(), LogError>
{
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        compression: Some(Compression::Zstd),
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config)?;
    let mut expected = Vec::new();
    for (i, codec) in Compression::ALL.into_iter().enumerate() {
        let batch = json_batch(codec, i as u32 * 10, 10);
        expected.extend(
            decode_records(&batch)?
                .into_iter()
                .map(|r| (r.key, r.value, r.timestamp_ms)),
        );
        log.append_owned_batch(batch, LeaderEpoch(1), T0_MS)?;
    }
    let stored = stored_batches(&log)?;
    assert_eq!(stored.len(), 5);
    assert!(stored.iter().all(|(codec, _)| *codec == Compression::Zstd));
    let mut read = Vec::new();
    for (i, (_, bytes)) in stored.iter().enumerate() {
        for (j, record) in decode_records(bytes)?.into_iter().enumerate() {
            assert_eq!(record.offset, Offset((i * 10 + j) as i64));
            read.push((record.key, record.value, record.timestamp_ms));
        }
    }
    assert_eq!(
        read, expected,
        "keys, values and timestamps survive recompression"
    );
    Ok(())
}

#[test]
fn a_bomb_is_refused_and_the_log_takes_the_next_batch() -> Result<(), LogError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        max_decompressed_bytes: 1024 * 1024,
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config)?;
    let mut builder = RecordBatchBuilder::new(T0_MS);
    let zeros = vec![0u8; 512 * 1024];
    for _ in 0..4 {
        builder.push(T0_MS, None, Some(&zeros), &[]);
    }
    let mut bomb = builder.build_compressed(Compression::Gzip).expect("builds");
    assert!(bomb.len() < 8 * 1024);
    let refused = log.append_batch(&mut bomb, LeaderEpoch(1), T0_MS);
    assert!(
        matches!(
            refused,
            Err(LogError::DecompressedTooLarge {
                codec: Compression::Gzip,
                max_bytes: 1_048_576
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        log.log_end_offset(),
        Offset(0),
        "nothing of the bomb was stored"
    );
    let mut ok = json_batch(Compression::Lz4, 0, 5);
    assert_eq!(
        log.append_batch(&mut ok, LeaderEpoch(1), T0_MS)?
            .base_offset,
        Offset(0)
    );
    Ok(())
}
