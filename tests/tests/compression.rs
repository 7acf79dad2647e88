//! Batch compression checked against an independent implementation of Kafka's RecordBatch v2:
//! kafka-python (pinned in tests/python/requirements.txt, run by
//! tests/python/kafka_batches.py in the venv scripts/python-env.sh makes).
//!
//! - Batches kafka-python builds, in every codec (snappy both in the xerial framing the Java
//!   client writes and as one raw block as librdkafka writes), are produced raw over gRPC to a
//!   real server and read back field for field: by structured fetch, by `ferrolog consume
//!   --format json`, by raw fetch (the stored batch is kafka-python's bytes, the broker's base
//!   offset and leader epoch aside), and by kafka-python again.
//! - The other way: batches `ferrolog produce --compression C` builds, and batches the broker
//!   recompresses for a topic's `compression.type`, fetched raw and read by kafka-python.
//! - Bad batches kafka-python builds (decompression bombs, corrupt payloads under a valid CRC,
//!   codec ids 5 to 7) are refused with their stable code, and lose nothing.
//! - Every codec on an RF=3 topic keeps every acknowledged record across a leader SIGKILL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferrolog_client::{ClientConfig, Compression};
use ferrolog_proto::status::code_of;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::{
    Acks, ErrorCode, FetchFormat, FetchRequest, ProduceRequest, ProduceResponse, Record,
};
use ferrolog_tests::history;
use ferrolog_tests::python::{kafka_batches, unhex};
use ferrolog_tests::workload::{Outcome, Workload, read_to_high_watermark};
use ferrolog_tests::{
    Cluster, Server, assert_ok, init_logging, run_cli_within, stderr, stdout, wait_until,
};
use serde_json::Value;
use tonic::transport::Channel;

/// Longest one produce or fetch call may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Longest reading a partition to its high watermark may take.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// How long a leader election or a replica's return may take on a loaded machine.
const ELECTION_DEADLINE: Duration = Duration::from_secs(60);
/// How long a workload may take to make the progress a phase waits for.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(120);
/// Acknowledged records each codec's workload must gain in each phase of the RF=3 test.
const PROGRESS_PER_PHASE: u64 = 150;
/// Byte positions in the RecordBatch v2 header (see `ferrolog_log::batch`).
const LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const ATTRIBUTES_AT: usize = 21;
/// Base offset and length: the bytes before a batch's length-counted part.
const LOG_OVERHEAD: usize = 12;
/// The broker's bound on one batch's decompressed records, named in a bomb's refusal.
const MAX_DECOMPRESSED_BYTES: usize = ferrolog_log::DEFAULT_MAX_DECOMPRESSED_BYTES;

/// One record as kafka-python wrote or read it.
#[derive(Clone, Debug, PartialEq)]
struct PyRecord {
    /// The offset delta within the batch it was built in; the absolute offset when read.
    offset: i64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// One batch kafka-python built, and the records it put in it.
struct Variant {
    /// none, gzip, snappy (xerial), snappy-raw, lz4 or zstd.
    name: String,
    codec_id: i16,
    batch: Vec<u8>,
    records: Vec<PyRecord>,
}

/// One batch kafka-python read.
#[derive(Debug)]
struct PyBatch {
    base_offset: i64,
    codec_id: i16,
    crc_valid: bool,
    record_count: i64,
    records: Vec<PyRecord>,
}

fn field<'a>(v: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    v.get(name)
        .with_context(|| format!("kafka_batches.py printed no {name:?} in {v}"))
}

fn int(v: &Value, name: &str) -> anyhow::Result<i64> {
    field(v, name)?
        .as_i64()
        .with_context(|| format!("{name:?} is not an integer in {v}"))
}

fn text<'a>(v: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    field(v, name)?
        .as_str()
        .with_context(|| format!("{name:?} is not text in {v}"))
}

/// Hex or null, as the script prints keys and values.
fn opt_bytes(v: &Value) -> anyhow::Result<Option<Vec<u8>>> {
    match v {
        Value::Null => Ok(None),
        Value::String(hex) => Ok(Some(unhex(hex)?)),
        other => bail!("expected hex or null, got {other}"),
    }
}

fn array<'a>(v: &'a Value, name: &str) -> anyhow::Result<&'a Vec<Value>> {
    field(v, name)?
        .as_array()
        .with_context(|| format!("{name:?} is not a list in {v}"))
}

fn py_record(v: &Value) -> anyhow::Result<PyRecord> {
    let headers = array(v, "headers")?
        .iter()
        .map(|h| {
            let key = h[0]
                .as_str()
                .context("a header key is not text")?
                .to_owned();
            Ok((key, opt_bytes(&h[1])?))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(PyRecord {
        offset: int(v, "offset")?,
        timestamp: int(v, "timestamp")?,
        key: opt_bytes(field(v, "key")?)?,
        value: opt_bytes(field(v, "value")?)?,
        headers,
    })
}

fn py_records(v: &Value) -> anyhow::Result<Vec<PyRecord>> {
    array(v, "records")?.iter().map(py_record).collect()
}

/// `kafka_batches.py build`: one batch per codec variant, with the records in it.
fn python_variants() -> anyhow::Result<Vec<Variant>> {
    let out = kafka_batches(&["build"])?;
    out.as_array()
        .context("build printed no list")?
        .iter()
        .map(|v| {
            Ok(Variant {
                name: text(v, "variant")?.to_owned(),
                codec_id: i16::try_from(int(v, "codec_id")?)?,
                batch: unhex(text(v, "batch")?)?,
                records: py_records(v)?,
            })
        })
        .collect()
}

/// `kafka_batches.py read`: what kafka-python reads in `batches` (concatenated, as fetched).
fn python_read(batches: &[u8]) -> anyhow::Result<Vec<PyBatch>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("batches.bin");
    std::fs::write(&path, batches)?;
    let out = kafka_batches(&["read", path.to_str().context("a UTF-8 temp path")?])?;
    out.as_array()
        .context("read printed no list")?
        .iter()
        .map(|b| {
            Ok(PyBatch {
                base_offset: int(b, "base_offset")?,
                codec_id: i16::try_from(int(b, "codec_id")?)?,
                crc_valid: field(b, "crc_valid")?.as_bool().context("crc_valid")?,
                record_count: int(b, "record_count")?,
                records: py_records(b)?,
            })
        })
        .collect()
}

/// The records kafka-python wrote, at the offsets a log that put the batch at `base` gives.
fn at_base(records: &[PyRecord], base: i64) -> Vec<PyRecord> {
    records
        .iter()
        .map(|r| PyRecord {
            offset: base + r.offset,
            ..r.clone()
        })
        .collect()
}

/// A record fetched in the structured form, as kafka-python's view of it.
fn from_grpc(r: &Record) -> PyRecord {
    PyRecord {
        offset: r.offset,
        timestamp: r.timestamp_ms.unwrap_or(i64::MIN),
        key: r.key.as_ref().map(|k| k.to_vec()),
        value: r.value.as_ref().map(|v| v.to_vec()),
        headers: r
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.as_ref().map(|v| v.to_vec())))
            .collect(),
    }
}

/// Appends to `mismatches` one line per field where `found` differs from `expected`, naming
/// `what` (the codec and the reader), so a failure says exactly which field of which record.
fn compare(what: &str, expected: &[PyRecord], found: &[PyRecord], mismatches: &mut Vec<String>) {
    if expected.len() != found.len() {
        mismatches.push(format!(
            "{what}: {} records where {} were written",
            found.len(),
            expected.len()
        ));
    }
    for (e, f) in expected.iter().zip(found) {
        let mut fields = Vec::new();
        if e.offset != f.offset {
            fields.push(format!("offset {} != {}", f.offset, e.offset));
        }
        if e.timestamp != f.timestamp {
            fields.push(format!("timestamp {} != {}", f.timestamp, e.timestamp));
        }
        if e.key != f.key {
            fields.push(format!("key {:?} != {:?}", f.key, e.key));
        }
        if e.value != f.value {
            let show =
                |v: &Option<Vec<u8>>| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
            fields.push(format!(
                "value {:?} != {:?}",
                show(&f.value),
                show(&e.value)
            ));
        }
        if e.headers != f.headers {
            fields.push(format!("headers {:?} != {:?}", f.headers, e.headers));
        }
        if !fields.is_empty() {
            mismatches.push(format!(
                "{what}: record {}: {}",
                e.offset,
                fields.join("; ")
            ));
        }
    }
}

/// Splits concatenated batches at their length fields.
fn split_batches(mut bytes: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    let mut batches = Vec::new();
    while !bytes.is_empty() {
        ensure!(
            bytes.len() >= LOG_OVERHEAD,
            "{} trailing bytes",
            bytes.len()
        );
        let length = i32::from_be_bytes(bytes[LENGTH_AT..LENGTH_AT + 4].try_into()?);
        let size = LOG_OVERHEAD + usize::try_from(length).context("negative batch length")?;
        ensure!(
            size <= bytes.len(),
            "a batch of {size} bytes in {} bytes",
            bytes.len()
        );
        let (batch, rest) = bytes.split_at(size);
        batches.push(batch);
        bytes = rest;
    }
    Ok(batches)
}

fn base_offset_of(batch: &[u8]) -> i64 {
    i64::from_be_bytes(
        batch[..8]
            .try_into()
            .expect("a batch has 8 bytes of base offset"),
    )
}

fn codec_id_of(batch: &[u8]) -> i16 {
    i16::from_be_bytes([batch[ATTRIBUTES_AT], batch[ATTRIBUTES_AT + 1]]) & 0x07
}

/// A gRPC client of one node's ClientService, on a runtime of its own, every call bounded.
struct Grpc {
    runtime: tokio::runtime::Runtime,
    client: ClientServiceClient<Channel>,
}

impl Grpc {
    fn connect(address: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let channel = runtime.block_on(async {
            tokio::time::timeout(
                CALL_DEADLINE,
                Channel::from_shared(format!("http://{address}"))?.connect(),
            )
            .await
            .with_context(|| format!("connect to {address}"))?
            .with_context(|| format!("connect to {address}"))
        })?;
        let client = ClientServiceClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024);
        Ok(Self { runtime, client })
    }

    /// Produces one raw batch with acks=all; the outer error is a call that never answered.
    fn produce(
        &mut self,
        topic: &str,
        batch: &[u8],
    ) -> anyhow::Result<Result<ProduceResponse, tonic::Status>> {
        let request = ProduceRequest {
            topic: topic.to_owned(),
            partition: 0,
            acks: Acks::All as i32,
            record_batch: Bytes::copy_from_slice(batch),
            ..Default::default()
        };
        let client = &mut self.client;
        self.runtime.block_on(async {
            let answer = tokio::time::timeout(CALL_DEADLINE, client.produce(request))
                .await
                .with_context(|| format!("produce to {topic}: no answer in {CALL_DEADLINE:?}"))?;
            Ok(answer.map(tonic::Response::into_inner))
        })
    }

    fn fetch(
        &mut self,
        topic: &str,
        offset: i64,
        format: FetchFormat,
    ) -> anyhow::Result<ferrolog_proto::v1::FetchResponse> {
        let request = FetchRequest {
            topic: topic.to_owned(),
            partition: 0,
            offset,
            max_bytes: 1024 * 1024,
            max_wait_ms: 0,
            format: format as i32,
            isolation_level: ferrolog_proto::v1::IsolationLevel::ReadUncommitted as i32,
        };
        let client = &mut self.client;
        self.runtime.block_on(async {
            let answer = tokio::time::timeout(CALL_DEADLINE, client.fetch(request))
                .await
                .with_context(|| format!("fetch {topic}@{offset}: no answer"))?
                .with_context(|| format!("fetch {topic}@{offset}"))?;
            Ok(answer.into_inner())
        })
    }

    /// Fetches partition 0 of `topic` from `from` to its high watermark, in `format`, and
    /// returns each answer.
    fn fetch_all(
        &mut self,
        topic: &str,
        from: i64,
        format: FetchFormat,
    ) -> anyhow::Result<Vec<ferrolog_proto::v1::FetchResponse>> {
        let started = Instant::now();
        let mut offset = from;
        let mut answers = Vec::new();
        loop {
            ensure!(
                started.elapsed() < READ_DEADLINE,
                "reading {topic} from {from} took over {READ_DEADLINE:?}; at {offset}"
            );
            let answer = self.fetch(topic, offset, format)?;
            let (next, high_watermark) = (answer.next_offset, answer.high_watermark);
            answers.push(answer);
            if next >= high_watermark {
                return Ok(answers);
            }
            ensure!(next > offset, "fetch of {topic}@{offset} did not move on");
            offset = next;
        }
    }

    /// Every record of partition 0 of `topic` below its high watermark, structured.
    fn records(&mut self, topic: &str) -> anyhow::Result<Vec<Record>> {
        Ok(self
            .fetch_all(topic, 0, FetchFormat::Records)?
            .into_iter()
            .flat_map(|a| a.records)
            .collect())
    }

    /// Every batch of partition 0 of `topic` below its high watermark, as stored.
    fn batches(&mut self, topic: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self
            .fetch_all(topic, 0, FetchFormat::Batches)?
            .into_iter()
            .flat_map(|a| a.record_batches.to_vec())
            .collect())
    }

    fn high_watermark(&mut self, topic: &str) -> anyhow::Result<i64> {
        Ok(self.fetch(topic, 0, FetchFormat::Records)?.high_watermark)
    }
}

/// Creates a one-partition topic on a single node.
fn create_topic(server: &Server, topic: &str, configs: &[&str]) -> anyhow::Result<()> {
    let mut args = vec![
        "topic",
        "create",
        topic,
        "--partitions",
        "1",
        "--replication-factor",
        "1",
    ];
    for config in configs {
        args.extend(["--config", config]);
    }
    assert_ok(&server.cli(&args, None)?);
    Ok(())
}

/// `ferrolog consume TOPIC --format json` of `count` records, each line parsed.
fn consume_json(broker: &str, topic: &str, count: usize) -> anyhow::Result<Vec<Value>> {
    let count_arg = count.to_string();
    let out = run_cli_within(
        broker,
        &[
            "consume",
            topic,
            "--from-beginning",
            "--partition",
            "0",
            "--max-messages",
            &count_arg,
            "--timeout-ms",
            "10000",
            "--format",
            "json",
        ],
        None,
        Duration::from_secs(120),
    )?;
    ensure!(
        out.status.success(),
        "consume {topic} failed: {}",
        stderr(&out)
    );
    stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("line {line:?}")))
        .collect()
}

/// What `consume --format json` prints for a record: text (lossy) for bytes, headers as a
/// map (the last value of a repeated key wins).
fn cli_json(topic: &str, r: &PyRecord) -> Value {
    let lossy = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let headers: BTreeMap<String, Option<String>> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), lossy(v)))
        .collect();
    serde_json::json!({
        "topic": topic,
        "partition": 0,
        "offset": r.offset,
        "timestamp_ms": r.timestamp,
        "key": lossy(&r.key),
        "value": lossy(&r.value),
        "headers": headers,
    })
}

/// Batches kafka-python builds land, and every reader gives back every field it wrote: the
/// decoding of every codec agrees with an independent implementation.
#[test]
fn batches_kafka_python_builds_read_back_field_for_field_in_every_codec() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: kafka-python builds one batch per codec, with edge-case records");
    let variants = python_variants()?;
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    ensure!(
        names == ["none", "gzip", "snappy", "snappy-raw", "lz4", "zstd"],
        "unexpected variants {names:?}"
    );
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let mut grpc = Grpc::connect(&server.grpc_address)?;
    let mut mismatches = Vec::new();

    for v in &variants {
        let topic = format!("py-{}", v.name);
        let n = i64::try_from(v.records.len())?;
        create_topic(&server, &topic, &[])?;

        tracing::info!(
            "phase: {}: the batch ({} bytes, {n} records) is produced twice as a raw \
             record_batch; the broker stamps offsets 0 and {n}",
            v.name,
            v.batch.len()
        );
        for expected_base in [0, n] {
            let answer = grpc
                .produce(&topic, &v.batch)?
                .map_err(|s| anyhow::anyhow!("{}: produce refused: {s:?}", v.name))?;
            ensure!(
                (answer.base_offset, answer.last_offset) == (expected_base, expected_base + n - 1),
                "{}: produced at {}..={}, expected {expected_base}..",
                v.name,
                answer.base_offset,
                answer.last_offset
            );
        }
        let expected: Vec<PyRecord> = [at_base(&v.records, 0), at_base(&v.records, n)].concat();

        tracing::info!(
            "phase: {}: a structured fetch gives every field kafka-python wrote",
            v.name
        );
        let fetched: Vec<PyRecord> = grpc.records(&topic)?.iter().map(from_grpc).collect();
        compare(
            &format!("{} via structured fetch", v.name),
            &expected,
            &fetched,
            &mut mismatches,
        );

        tracing::info!(
            "phase: {}: a raw fetch gives kafka-python's bytes back, base offset and leader \
             epoch (outside the CRC) stamped by the broker",
            v.name
        );
        let raw = grpc.batches(&topic)?;
        let stored = split_batches(&raw)?;
        ensure!(
            stored.len() == 2,
            "{}: {} stored batches",
            v.name,
            stored.len()
        );
        for (batch, base) in stored.iter().zip([0, n]) {
            let sent = &v.batch;
            if base_offset_of(batch) != base {
                mismatches.push(format!(
                    "{}: stored base offset {} != {base}",
                    v.name,
                    base_offset_of(batch)
                ));
            }
            if batch.len() != sent.len()
                || batch[LENGTH_AT..LEADER_EPOCH_AT] != sent[LENGTH_AT..LEADER_EPOCH_AT]
                || batch[MAGIC_AT..] != sent[MAGIC_AT..]
            {
                let first_difference = batch
                    .iter()
                    .zip(sent.iter())
                    .enumerate()
                    .skip(LENGTH_AT)
                    .find(|(i, (a, b))| a != b && !(LEADER_EPOCH_AT..MAGIC_AT).contains(i))
                    .map(|(i, _)| i);
                mismatches.push(format!(
                    "{}: the stored batch at {base} is not the batch sent ({} bytes stored, {} \
                     sent, first difference at byte {first_difference:?})",
                    v.name,
                    batch.len(),
                    sent.len()
                ));
            }
        }

        tracing::info!(
            "phase: {}: kafka-python reads the stored batches back",
            v.name
        );
        let read = python_read(&raw)?;
        for (b, base) in read.iter().zip([0, n]) {
            if !b.crc_valid
                || b.codec_id != v.codec_id
                || b.record_count != n
                || b.base_offset != base
            {
                mismatches.push(format!(
                    "{}: kafka-python read a stored batch as {b:?}",
                    v.name
                ));
            }
        }
        let reread: Vec<PyRecord> = read.into_iter().flat_map(|b| b.records).collect();
        compare(
            &format!("{} read back by kafka-python", v.name),
            &expected,
            &reread,
            &mut mismatches,
        );

        tracing::info!(
            "phase: {}: `ferrolog consume --format json` prints the same",
            v.name
        );
        let printed = consume_json(&server.grpc_address, &topic, expected.len())?;
        let wanted: Vec<Value> = expected.iter().map(|r| cli_json(&topic, r)).collect();
        if printed.len() != wanted.len() {
            mismatches.push(format!(
                "{}: consume printed {} records, {} expected",
                v.name,
                printed.len(),
                wanted.len()
            ));
        }
        for (p, w) in printed.iter().zip(&wanted) {
            if p != w {
                mismatches.push(format!("{}: consume printed {p}, expected {w}", v.name));
            }
        }
    }
    ensure!(
        server.stderr_tail().iter().all(|l| !l.contains("panicked")),
        "the server panicked: {:?}",
        server.stderr_tail()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches between what kafka-python wrote and what was read back:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}

/// Batches compressed by Ferrolog (the CLI's producer, and the broker recompressing for a
/// topic's `compression.type`) are read by kafka-python as the records that were produced:
/// the encoding of every codec agrees with an independent implementation.
#[test]
fn batches_ferrolog_compresses_are_read_by_kafka_python_in_every_codec() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let mut grpc = Grpc::connect(&server.grpc_address)?;
    let mut mismatches = Vec::new();
    // Text lines with keys: compressible, spanning several codec blocks.
    let lines: Vec<(String, String)> = (0..600)
        .map(|i| {
            (
                format!("key-{}", i % 5),
                format!("record {i:04} produced by ferrolog, compressed on the client; ").repeat(4),
            )
        })
        .collect();
    let input: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();

    for codec in Compression::ALL {
        let topic = format!("cli-{codec}");
        create_topic(&server, &topic, &[])?;
        tracing::info!(
            "phase: {codec}: `ferrolog produce --compression {codec}` sends {} records",
            lines.len()
        );
        let out = server.cli(
            &[
                "produce",
                &topic,
                "--compression",
                codec.name(),
                "--key-separator",
                "=",
                "--partition",
                "0",
            ],
            Some(&input),
        )?;
        assert_ok(&out);

        tracing::info!("phase: {codec}: the stored batches, fetched raw, carry codec {codec}");
        let raw = grpc.batches(&topic)?;
        let stored = split_batches(&raw)?;
        ensure!(!stored.is_empty(), "{codec}: nothing stored");
        for batch in &stored {
            if codec_id_of(batch) != codec.id() {
                mismatches.push(format!(
                    "{codec}: a stored batch at {} has codec {}",
                    base_offset_of(batch),
                    codec_id_of(batch)
                ));
            }
        }
        // Timestamps are the producer's clock: Ferrolog's structured fetch says what they are.
        let timestamps: Vec<i64> = grpc
            .records(&topic)?
            .iter()
            .map(|r| r.timestamp_ms.unwrap_or(i64::MIN))
            .collect();
        ensure!(
            timestamps.len() == lines.len(),
            "{codec}: {} records",
            timestamps.len()
        );
        let expected: Vec<PyRecord> = lines
            .iter()
            .zip(&timestamps)
            .enumerate()
            .map(|(i, ((key, value), timestamp))| PyRecord {
                offset: i as i64,
                timestamp: *timestamp,
                key: Some(key.clone().into_bytes()),
                value: Some(value.clone().into_bytes()),
                headers: Vec::new(),
            })
            .collect();

        tracing::info!(
            "phase: {codec}: kafka-python reads {} batches as the records produced",
            stored.len()
        );
        let read = python_read(&raw)?;
        for b in &read {
            if !b.crc_valid || b.codec_id != codec.id() {
                mismatches.push(format!("{codec}: kafka-python read a batch as {b:?}"));
            }
        }
        let reread: Vec<PyRecord> = read.into_iter().flat_map(|b| b.records).collect();
        compare(
            &format!("{codec} from the CLI read by kafka-python"),
            &expected,
            &reread,
            &mut mismatches,
        );
    }

    tracing::info!(
        "phase: topics with compression.type=C recompress kafka-python's uncompressed and \
         raw-snappy batches; kafka-python reads what the broker wrote"
    );
    let variants = python_variants()?;
    let sources: Vec<&Variant> = variants
        .iter()
        .filter(|v| v.name == "none" || v.name == "snappy-raw")
        .collect();
    ensure!(sources.len() == 2, "no none and snappy-raw variants");
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let topic = format!("recompressed-{codec}");
        create_topic(&server, &topic, &[&format!("compression.type={codec}")])?;
        let mut expected = Vec::new();
        for source in &sources {
            let answer = grpc
                .produce(&topic, &source.batch)?
                .map_err(|s| anyhow::anyhow!("{codec} topic refused {}: {s:?}", source.name))?;
            expected.extend(at_base(&source.records, answer.base_offset));
        }
        let raw = grpc.batches(&topic)?;
        for batch in split_batches(&raw)? {
            if codec_id_of(batch) != codec.id() {
                mismatches.push(format!(
                    "compression.type={codec}: the batch at {} is stored with codec {}",
                    base_offset_of(batch),
                    codec_id_of(batch)
                ));
            }
        }
        let read = python_read(&raw)?;
        for b in &read {
            if !b.crc_valid || b.codec_id != codec.id() {
                mismatches.push(format!(
                    "compression.type={codec}: kafka-python read a batch as {b:?}"
                ));
            }
        }
        let reread: Vec<PyRecord> = read.into_iter().flat_map(|b| b.records).collect();
        compare(
            &format!("compression.type={codec} read by kafka-python"),
            &expected,
            &reread,
            &mut mismatches,
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches between what Ferrolog compressed and what kafka-python read:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    Ok(())
}

/// Decompression bombs, corrupt compressed payloads under a valid CRC and unknown codec ids,
/// all built by kafka-python, are each refused with a stable code and a message that says
/// why; the server stays up, stores none of them, and takes a valid batch afterwards.
#[test]
fn bad_compressed_batches_are_refused_with_stable_codes_and_lose_nothing() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: kafka-python builds the bad batches (bombs of 100 MiB of zeros)");
    let bad = kafka_batches(&["bad"])?;
    let bad = bad.as_array().context("bad printed no list")?;
    let variants = python_variants()?;
    let (gzip, zstd) = (&variants[1], &variants[5]);
    ensure!((gzip.name.as_str(), zstd.name.as_str()) == ("gzip", "zstd"));
    let n = i64::try_from(gzip.records.len())?;

    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path())?;
    let mut grpc = Grpc::connect(&server.grpc_address)?;
    const TOPIC: &str = "guarded";
    create_topic(&server, TOPIC, &[])?;

    tracing::info!("phase: a valid gzip batch is acknowledged first; nothing may disturb it");
    let first = grpc
        .produce(TOPIC, &gzip.batch)?
        .map_err(|s| anyhow::anyhow!("the valid batch was refused: {s:?}"))?;
    ensure!(first.base_offset == 0);

    let mut mismatches = Vec::new();
    for case in bad {
        let name = text(case, "name")?;
        let kind = text(case, "kind")?;
        let batch = unhex(text(case, "batch")?)?;
        tracing::info!("phase: {name} ({} bytes) is produced", batch.len());
        let (code, message_part) = match kind {
            "bomb" => (
                ErrorCode::RecordTooLarge,
                format!("decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes"),
            ),
            // The message names the codec whose data does not decompress.
            "corrupt" => (
                ErrorCode::CorruptRecord,
                name.split(['-', ' ']).next().unwrap_or_default().to_owned(),
            ),
            "codec" => {
                let id = name.rsplit(' ').next().unwrap_or_default();
                (
                    ErrorCode::CorruptRecord,
                    format!("unknown compression codec {id}"),
                )
            }
            other => bail!("unknown kind {other:?} of {name}"),
        };
        match grpc.produce(TOPIC, &batch)? {
            Ok(answer) => mismatches.push(format!("{name}: accepted at {}", answer.base_offset)),
            Err(status) => {
                tracing::info!(
                    "  refused: {:?} {:?} {:?}",
                    status.code(),
                    code_of(&status),
                    status.message()
                );
                if status.code() != tonic::Code::InvalidArgument
                    || code_of(&status) != Some(code)
                    || !status.message().contains(&message_part)
                    || status.message().is_empty()
                {
                    mismatches.push(format!(
                        "{name}: refused as {:?} {:?} {:?}, expected InvalidArgument {} \
                         naming {message_part:?}",
                        status.code(),
                        code_of(&status),
                        status.message(),
                        code.as_str_name()
                    ));
                }
            }
        }
        if let Some(status) = server.exit_status()? {
            bail!("the server exited after {name}: {status}");
        }
        let high_watermark = grpc.high_watermark(TOPIC)?;
        if high_watermark != n {
            mismatches.push(format!(
                "{name}: the high watermark moved to {high_watermark} (expected {n})"
            ));
        }
    }

    tracing::info!("phase: a valid zstd batch lands right after the acknowledged one");
    let after = grpc
        .produce(TOPIC, &zstd.batch)?
        .map_err(|s| anyhow::anyhow!("the valid batch after the bad ones was refused: {s:?}"))?;
    ensure!(
        after.base_offset == n,
        "the batch after the bad ones landed at {}, expected {n}",
        after.base_offset
    );
    let expected = [at_base(&gzip.records, 0), at_base(&zstd.records, n)].concat();
    let fetched: Vec<PyRecord> = grpc.records(TOPIC)?.iter().map(from_grpc).collect();
    compare(
        "records around the bad batches",
        &expected,
        &fetched,
        &mut mismatches,
    );
    if let Some(status) = server.exit_status()? {
        bail!("the server exited: {status}");
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} bad batches (or the final checks) mismatched:\n{}",
        mismatches.len(),
        bad.len(),
        mismatches.join("\n")
    );
    Ok(())
}

/// The topic of one codec in the RF=3 test.
fn rf3_topic(codec: Compression) -> String {
    format!("rf3-{codec}")
}

/// (leader, ISR size, log end offset, high watermark) of partition 0 of `topic` as node
/// `via` sees it (the offsets of its own replica).
fn partition_state(cluster: &Cluster, via: i32, topic: &str) -> Option<(i32, usize, i64, i64)> {
    let described = cluster.describe(via, topic).ok()?;
    let p = described.partitions.iter().find(|p| p.partition == 0)?;
    Some((p.leader, p.isr.len(), p.log_end_offset, p.high_watermark))
}

/// `partition elect-leader TOPIC 0 --leader TARGET`, retried until node `via` sees it done.
fn elect(cluster: &Cluster, via: i32, topic: &str, target: i32) -> anyhow::Result<()> {
    let target_arg = target.to_string();
    let args = [
        "partition",
        "elect-leader",
        topic,
        "0",
        "--leader",
        &target_arg,
    ];
    let mut last = String::new();
    wait_until(
        &format!("{target} to lead {topic}"),
        ELECTION_DEADLINE,
        || {
            if partition_state(cluster, via, topic).is_some_and(|(l, ..)| l == target) {
                return Some(());
            }
            match run_cli_within(cluster.address(via), &args, None, Duration::from_secs(20)) {
                Ok(out) if !out.status.success() => last = stderr(&out),
                Err(error) => last = format!("{error:#}"),
                Ok(_) => {}
            }
            None
        },
    )
    .with_context(|| format!("last error: {last}"))
}

/// Every codec on an RF=3 topic, produced with acks=all through a SIGKILL of the partitions'
/// leader and the election after it, keeps every acknowledged record as sent and in order
/// (retried duplicates allowed: producers are not idempotent yet), its batches stay in the
/// codec, and the killed replica catches up to the same log end.
#[test]
fn every_codec_keeps_every_acknowledged_record_across_a_leader_sigkill_on_rf3() -> anyhow::Result<()>
{
    init_logging();
    tracing::info!("phase: three nodes; one RF=3 topic per codec, every replica in sync");
    let mut cluster = Cluster::start(3, &[])?;
    cluster.wait_for_leader(ELECTION_DEADLINE)?;
    for codec in Compression::ALL {
        cluster.create_topic(1, &rf3_topic(codec), 1, 3)?;
    }
    let all_in_sync = |cluster: &Cluster, via: i32| {
        Compression::ALL
            .iter()
            .all(|c| {
                partition_state(cluster, via, &rf3_topic(*c))
                    .is_some_and(|(leader, isr, ..)| leader > 0 && isr == 3)
            })
            .then_some(())
    };
    wait_until("every replica in sync", ELECTION_DEADLINE, || {
        all_in_sync(&cluster, 1)
    })?;

    let victim = partition_state(&cluster, 1, &rf3_topic(Compression::None))
        .context("describe")?
        .0;
    tracing::info!("phase: node {victim} is made leader of every codec's topic");
    for codec in Compression::ALL {
        elect(&cluster, 1, &rf3_topic(codec), victim)?;
    }
    let observer = cluster
        .ids()
        .into_iter()
        .find(|id| *id != victim)
        .context("another node")?;

    tracing::info!("phase: an acks=all workload per codec produces numbered records");
    let brokers: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.address(id).to_owned())
        .collect();
    let workloads: Vec<(Compression, Workload)> = Compression::ALL
        .iter()
        .map(|codec| {
            let client = ClientConfig::with_brokers(brokers.clone());
            let workload = Workload::start_compressed(client, &rf3_topic(*codec), 1, 0, *codec);
            (*codec, workload)
        })
        .collect();
    let progress = |phase: &str| -> anyhow::Result<()> {
        for (codec, workload) in &workloads {
            let now = workload.acknowledged();
            workload.wait_progress(
                now,
                PROGRESS_PER_PHASE,
                PROGRESS_DEADLINE,
                &format!("{phase} ({codec})"),
            )?;
        }
        Ok(())
    };
    progress("before the kill")?;

    tracing::info!("phase: SIGKILL of node {victim}, leader of every codec's partition");
    cluster.kill(victim)?;
    wait_until("a new leader for every codec", ELECTION_DEADLINE, || {
        Compression::ALL
            .iter()
            .all(|c| {
                partition_state(&cluster, observer, &rf3_topic(*c))
                    .is_some_and(|(leader, ..)| leader > 0 && leader != victim)
            })
            .then_some(())
    })?;
    tracing::info!("phase: every codec's workload goes on under the new leaders");
    progress("after the kill")?;

    tracing::info!("phase: node {victim} restarts and rejoins every ISR as a follower");
    cluster.start_node(victim)?;
    cluster.wait_ready(victim, ELECTION_DEADLINE)?;
    wait_until("every replica in sync again", ELECTION_DEADLINE, || {
        all_in_sync(&cluster, observer)
    })?;
    progress("after the restart")?;

    tracing::info!("phase: the workloads stop; the history checker reads every codec back");
    // Stopped all at once: each stop waits for its producer's last acknowledgements.
    let outcomes: Vec<(Compression, Outcome)> = std::thread::scope(|scope| {
        let stopping: Vec<_> = workloads
            .into_iter()
            .map(|(codec, workload)| (codec, scope.spawn(move || workload.stop())))
            .collect();
        stopping
            .into_iter()
            .map(|(codec, handle)| {
                let outcome = handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("stopping the {codec} workload panicked"))??;
                Ok((codec, outcome))
            })
            .collect::<anyhow::Result<_>>()
    })?;
    let mut failures = Vec::new();
    for (codec, Outcome { acks, failed }) in &outcomes {
        let topic = rf3_topic(*codec);
        let client = ClientConfig::with_brokers(brokers.clone());
        let reads = read_to_high_watermark(client, &topic, 1)?;
        let report = history::check(acks, &reads);
        tracing::info!("{codec}: {report}; {failed} sends failed");
        if !report.is_safe() || report.acknowledged == 0 {
            failures.push(format!("{codec}: {report}"));
        }
    }

    tracing::info!("phase: every stored batch is in its topic's codec (read at the leader)");
    for codec in Compression::ALL {
        let topic = rf3_topic(codec);
        let leader = partition_state(&cluster, observer, &topic)
            .context("describe")?
            .0;
        let mut grpc = Grpc::connect(cluster.address(leader))?;
        let raw = grpc.batches(&topic)?;
        let batches = split_batches(&raw)?;
        let wrong: Vec<i64> = batches
            .iter()
            .filter(|b| codec_id_of(b) != codec.id())
            .map(|b| base_offset_of(b))
            .collect();
        if !wrong.is_empty() || batches.is_empty() {
            failures.push(format!(
                "{codec}: {} of {} batches are not in codec {codec} (at {wrong:?})",
                wrong.len(),
                batches.len()
            ));
        }
    }

    tracing::info!(
        "phase: the killed node caught up: every replica, node {victim}'s included, ends at the \
         leader's high watermark"
    );
    for codec in Compression::ALL {
        let topic = rf3_topic(codec);
        let caught_up = wait_until(
            &format!("every replica of {topic} to end at the high watermark"),
            ELECTION_DEADLINE,
            || {
                let leader = partition_state(&cluster, observer, &topic)?.0;
                let high_watermark = partition_state(&cluster, leader, &topic)?.3;
                let ends = cluster
                    .ids()
                    .into_iter()
                    .map(|id| Some((id, partition_state(&cluster, id, &topic)?.2)))
                    .collect::<Option<Vec<_>>>()?;
                ends.iter()
                    .all(|(_, end)| *end == high_watermark)
                    .then_some((leader, ends))
            },
        );
        match caught_up {
            Ok((leader, ends)) => {
                tracing::info!("{codec}: leader {leader}; log end per node {ends:?}")
            }
            Err(error) => failures.push(format!("{codec}: {error:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The comparison the cross-check rests on names each field that differs, and nothing when
/// the records agree.
#[test]
fn compare_names_every_differing_field_of_every_record() {
    let written = PyRecord {
        offset: 7,
        timestamp: 1_000,
        key: Some(b"k".to_vec()),
        value: None,
        headers: vec![("h".to_owned(), None)],
    };
    let mut mismatches = Vec::new();
    compare(
        "same",
        std::slice::from_ref(&written),
        std::slice::from_ref(&written),
        &mut mismatches,
    );
    assert!(mismatches.is_empty(), "{mismatches:?}");

    let read = PyRecord {
        timestamp: 1_001,
        value: Some(Vec::new()),
        headers: vec![("h".to_owned(), Some(Vec::new()))],
        ..written.clone()
    };
    compare(
        "zstd",
        std::slice::from_ref(&written),
        &[read],
        &mut mismatches,
    );
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    for part in [
        "zstd: record 7",
        "timestamp 1001 != 1000",
        "value",
        "headers",
    ] {
        assert!(
            mismatches[0].contains(part),
            "{part:?} not in {mismatches:?}"
        );
    }
    assert!(!mismatches[0].contains("key"), "{mismatches:?}");

    mismatches.clear();
    compare("short", &[written.clone(), written], &[], &mut mismatches);
    assert_eq!(mismatches, ["short: 0 records where 2 were written"]);
}
