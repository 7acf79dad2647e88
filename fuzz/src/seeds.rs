//! The seed corpus: a handful of small, real encodings per target, built with the product's
//! own encoders so the fuzzer starts from inputs that pass validation and reach deep code.
//! `cargo run --example write_corpus` writes them to `corpus/<target>/`.

use bytes::Bytes;
use ferrolog_broker::service::fuzzing::records_to_batch;
use ferrolog_log::{
    Compression, ControlType, Header, LeaderEpoch, Log, LogConfig, Offset, RecordBatchBuilder,
    assign_offsets, build_control_batch,
};
use ferrolog_metadata::ClusterImage;
use ferrolog_metadata::raft::fuzzing::encode_snapshot_image;
use ferrolog_metadata::records::{
    ConfigChangeRecord, ConfigResourceType, CreatePartitionsRecord, CreateTopicRecord,
    DeleteTopicRecord, FenceBrokerRecord, MetadataRecord, PartitionAssignment,
    PartitionChangeRecord, ProducerIdsRecord, Record, RegisterBrokerRecord, UnfenceBrokerRecord,
};
use ferrolog_proto::v1;
use prost::Message;

use crate::{NOW_MS, join_framed};

/// One seed: its target, its file name, its bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push((target, format!("seed-{name}"), bytes));
    };
    for (name, bytes) in record_batches() {
        add("record_batch", name, bytes);
    }
    for (name, bytes) in produce_requests() {
        add("grpc_records", name, bytes);
    }
    for (name, bytes) in record_sequences() {
        add("metadata_record", name, bytes);
    }
    for (name, bytes) in snapshots() {
        add("metadata_snapshot", name, bytes);
    }
    let (producer_snapshot, txn_index) = log_state_files();
    add("producer_snapshot", "transactions", producer_snapshot);
    add("txn_index", "two-aborts", txn_index);
    seeds
}

fn header(key: &str, value: Option<&'static [u8]>) -> Header {
    Header {
        key: key.to_owned(),
        value: value.map(Bytes::from_static),
    }
}

fn one_record_batch() -> Vec<u8> {
    let mut builder = RecordBatchBuilder::new(NOW_MS);
    builder.push(NOW_MS, Some(b"key"), Some(b"value"), &[]);
    builder.build().to_vec()
}

fn record_batches() -> Vec<(&'static str, Vec<u8>)> {
    let mut mixed = RecordBatchBuilder::new(1_000);
    let headers = [header("trace-id", Some(b"abc")), header("", None)];
    mixed.push(1_000, Some(b"k1"), Some(b"v1"), &headers);
    mixed.push(999, None, None, &[]);
    mixed.push(5_000, Some(b""), Some(&[7u8; 40]), &headers[..1]);
    let mixed = mixed.build().to_vec();

    let mut stamped = mixed.clone();
    assign_offsets(&mut stamped, Offset(100), LeaderEpoch(3));

    let mut many = RecordBatchBuilder::new(NOW_MS);
    for i in 0..40u8 {
        many.push(NOW_MS + i64::from(i), Some(&[i]), Some(&[i; 3]), &[]);
    }
    let many = many.build().to_vec();

    let mut second = RecordBatchBuilder::new(NOW_MS);
    second.push(NOW_MS, None, Some(b"second"), &[]);
    let mut second = second.build().to_vec();
    assign_offsets(&mut second, Offset(1), LeaderEpoch(0));
    let two_batches = [one_record_batch(), second].concat();

    let compressed = |codec: Compression| {
        let mut builder = RecordBatchBuilder::new(NOW_MS);
        for i in 0..20u8 {
            let value = format!("event {i} of a compressed batch");
            builder.push(
                NOW_MS + i64::from(i),
                Some(&[i % 3]),
                Some(value.as_bytes()),
                &headers[..1],
            );
        }
        builder
            .build_compressed(codec)
            .expect("compressing into memory cannot fail")
            .to_vec()
    };

    vec![
        ("one-record", one_record_batch()),
        ("keys-values-headers-nulls", mixed),
        ("stamped-offset-100-epoch-3", stamped),
        ("forty-records", many),
        ("two-batches", two_batches),
        ("gzip", compressed(Compression::Gzip)),
        ("snappy", compressed(Compression::Snappy)),
        ("lz4", compressed(Compression::Lz4)),
        ("zstd", compressed(Compression::Zstd)),
    ]
}

fn produce_requests() -> Vec<(&'static str, Vec<u8>)> {
    let record = |key: Option<&'static [u8]>, value: &'static [u8], ts: Option<i64>| v1::Record {
        key: key.map(Bytes::from_static),
        value: Some(Bytes::from_static(value)),
        headers: Vec::new(),
        timestamp_ms: ts,
        offset: 0,
    };
    let request = |records: Vec<v1::Record>, record_batch: Vec<u8>| v1::ProduceRequest {
        topic: "orders".into(),
        partition: 0,
        acks: v1::Acks::All.into(),
        records,
        record_batch: record_batch.into(),
        timeout_ms: 1_000,
        producer: None,
    };
    let with_headers = v1::Record {
        headers: vec![
            v1::RecordHeader {
                key: "trace-id".into(),
                value: Some(Bytes::from_static(b"abc")),
            },
            v1::RecordHeader {
                key: "empty".into(),
                value: None,
            },
        ],
        ..record(None, b"v", None)
    };
    let structured = vec![
        record(Some(b"k1"), b"v1", Some(NOW_MS)),
        record(Some(b"k2"), b"v2", Some(NOW_MS - 5)),
        with_headers.clone(),
    ];
    let built = records_to_batch(&structured, NOW_MS).expect("seed records are valid");
    vec![
        (
            "structured-records",
            request(structured, Vec::new()).encode_to_vec(),
        ),
        (
            "record-with-headers",
            request(vec![with_headers], Vec::new()).encode_to_vec(),
        ),
        (
            "negative-timestamp",
            request(vec![record(None, b"v", Some(-1))], Vec::new()).encode_to_vec(),
        ),
        (
            "record-batch",
            request(Vec::new(), one_record_batch()).encode_to_vec(),
        ),
        (
            "converted-batch",
            request(Vec::new(), built.to_vec()).encode_to_vec(),
        ),
    ]
}

fn metadata(record: Record) -> MetadataRecord {
    MetadataRecord {
        record: Some(record),
    }
}

fn register(broker_id: i32) -> MetadataRecord {
    metadata(Record::RegisterBroker(RegisterBrokerRecord {
        broker_id,
        address: format!("broker-{broker_id}:9092"),
        incarnation_id: 100 + broker_id as u64,
    }))
}

fn create_topic(name: &str, replicas: &[&[i32]], configs: &[(&str, &str)]) -> MetadataRecord {
    metadata(Record::CreateTopic(CreateTopicRecord {
        name: name.into(),
        topic_id: format!("{name}-id"),
        assignments: replicas
            .iter()
            .enumerate()
            .map(|(i, r)| PartitionAssignment {
                partition: i as i32,
                replicas: r.to_vec(),
            })
            .collect(),
        configs: configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }))
}

/// A change of the cluster-wide dynamic topic defaults.
fn cluster_config(set: &[(&str, &str)], delete: &[&str]) -> MetadataRecord {
    metadata(Record::ConfigChange(ConfigChangeRecord {
        topic: String::new(),
        set: set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        delete: delete.iter().map(|d| (*d).to_owned()).collect(),
        resource_type: ConfigResourceType::Cluster as i32,
    }))
}

/// The image every `metadata_record` input is applied to: three brokers (the third fenced),
/// a cluster-wide default, a topic `orders` with two partitions and a config, and a topic
/// `audit`.
pub fn base_image() -> ClusterImage {
    let records = [
        register(1),
        register(2),
        register(3),
        metadata(Record::FenceBroker(FenceBrokerRecord {
            broker_id: 3,
            incarnation_id: 103,
        })),
        cluster_config(&[("segment.ms", "3600000")], &[]),
        create_topic("orders", &[&[1, 2], &[2, 3]], &[("retention.ms", "60000")]),
        create_topic("audit", &[&[1]], &[]),
        producer_ids(1, 0, 1000),
    ];
    let mut image = ClusterImage::default();
    for (i, record) in records.iter().enumerate() {
        image
            .apply(i as u64 + 1, record)
            .expect("the base image's records apply");
    }
    image
}

fn delimited(records: &[MetadataRecord]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|r| r.encode_length_delimited_to_vec())
        .collect()
}

fn record_sequences() -> Vec<(&'static str, Vec<u8>)> {
    let change = metadata(Record::PartitionChange(PartitionChangeRecord {
        topic: "orders".into(),
        partition: 1,
        leader: 3,
        leader_epoch: 1,
        partition_epoch: 1,
        replicas: vec![4, 2, 3],
        isr: vec![2, 3],
        adding_replicas: vec![4],
        removing_replicas: vec![2],
    }));
    let add_partitions = metadata(Record::CreatePartitions(CreatePartitionsRecord {
        topic: "orders".into(),
        topic_id: "orders-id".into(),
        assignments: vec![PartitionAssignment {
            partition: 2,
            replicas: vec![3, 1],
        }],
    }));
    let config = metadata(Record::ConfigChange(ConfigChangeRecord {
        topic: "orders".into(),
        set: [("cleanup.policy".to_owned(), "compact".to_owned())].into(),
        delete: vec!["retention.ms".into()],
        resource_type: ConfigResourceType::Topic as i32,
    }));
    let fence = |broker_id| {
        metadata(Record::FenceBroker(FenceBrokerRecord {
            broker_id,
            incarnation_id: 101,
        }))
    };
    let unfence = metadata(Record::UnfenceBroker(UnfenceBrokerRecord {
        broker_id: 3,
        incarnation_id: 103,
    }));
    let delete = |name: &str| {
        metadata(Record::DeleteTopic(DeleteTopicRecord {
            name: name.into(),
            topic_id: format!("{name}-id"),
        }))
    };
    vec![
        ("register-broker", delimited(&[register(4)])),
        (
            "create-topic-and-move-leader",
            delimited(&[
                create_topic("events", &[&[1, 2, 3]], &[("segment.bytes", "1048576")]),
                change.clone(),
            ]),
        ),
        ("reassign-partition", delimited(&[register(4), change])),
        ("create-partitions", delimited(&[add_partitions])),
        ("config-change", delimited(&[config])),
        (
            "cluster-config-change",
            // One entry per map: a protobuf map's encoding order is not fixed.
            delimited(&[
                cluster_config(&[("retention.ms", "3600000")], &[]),
                cluster_config(&[("segment.bytes", "4096")], &[]),
                cluster_config(&[], &["segment.bytes"]),
            ]),
        ),
        ("fence-and-unfence", delimited(&[fence(1), unfence])),
        (
            "delete-and-recreate",
            delimited(&[delete("audit"), create_topic("audit", &[&[2]], &[])]),
        ),
        ("refused-delete", delimited(&[delete("missing")])),
        (
            "producer-id-blocks",
            // Two blocks, then one that overlaps them (refused).
            delimited(&[
                producer_ids(1, 0, 1000),
                producer_ids(2, 1000, 2000),
                producer_ids(1, 1500, 2500),
            ]),
        ),
    ]
}

fn producer_ids(broker_id: i32, first: i64, next: i64) -> MetadataRecord {
    metadata(Record::ProducerIds(ProducerIdsRecord {
        broker_id,
        incarnation_id: 100 + broker_id as u64,
        first_producer_id: first,
        next_producer_id: next,
    }))
}

fn snapshots() -> Vec<(&'static str, Vec<u8>)> {
    let snapshot = |image: &ClusterImage| {
        let payload = encode_snapshot_image(image).expect("an image encodes");
        [vec![0u8], payload].concat()
    };
    let base = base_image();
    let records: Vec<Vec<u8>> = base
        .to_records()
        .iter()
        .map(Message::encode_to_vec)
        .collect();
    vec![
        ("empty-image", snapshot(&ClusterImage::default())),
        ("base-image", snapshot(&base)),
        (
            "framed-records",
            [vec![1u8], join_framed(&records)].concat(),
        ),
    ]
}

/// A producer state snapshot and an aborted-transaction index as a `Log` writes them: an
/// idempotent producer, a transaction left open, an aborted one, and one aborted under a
/// bumped epoch (KIP-890), so the snapshot holds an open transaction and a producer with
/// no cached batch. Built in a scratch directory that is removed again.
pub fn log_state_files() -> (Vec<u8>, Vec<u8>) {
    // Unique per call: the corpus tests build these seeds on parallel threads.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("ferrolog-fuzz-seeds-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = write_log_state(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    files
}

fn write_log_state(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    const EPOCH: LeaderEpoch = LeaderEpoch(1);
    let mut log = Log::open(dir, LogConfig::default()).expect("a scratch log opens");
    let mut append = |producer_id: i64, epoch: i16, seq: i32, transactional: bool| {
        let mut builder = RecordBatchBuilder::new(NOW_MS).with_producer(producer_id, epoch, seq);
        if transactional {
            builder = builder.transactional();
        }
        builder.push(NOW_MS, Some(b"key"), Some(b"value"), &[]);
        log.append_batch(&mut builder.build(), EPOCH, NOW_MS)
            .expect("a seed batch appends");
    };
    append(1, 0, 0, false);
    append(2, 0, 0, true);
    append(3, 0, 0, true);
    append(4, 0, 0, true);
    append(1, 0, 1, false);
    for (producer_id, epoch) in [(3, 0), (4, 1)] {
        let mut marker = build_control_batch(producer_id, epoch, ControlType::Abort, 5, NOW_MS);
        log.append_batch(&mut marker, EPOCH, NOW_MS)
            .expect("a seed marker appends");
    }
    log.flush().expect("the scratch log flushes");
    let end = log.log_end_offset();
    let snapshot = std::fs::read(dir.join(format!("{:020}.snapshot", end.0)))
        .expect("flush wrote a snapshot at the log end");
    let index =
        std::fs::read(dir.join(format!("{:020}.txnindex", 0))).expect("the aborts wrote an index");
    (snapshot, index)
}
