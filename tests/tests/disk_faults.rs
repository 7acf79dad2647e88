//! Disk faults on real `ferrolog server` processes: a full disk, a failed fsync, and a read
//! that fails or returns damaged bytes. Each shows what a client is told (a stable error
//! code, never a corrupt-record or internal error for a disk that is merely full), that
//! nothing acknowledged is lost or changed, and that the node goes on serving what it can.
//!
//! The full disk is a size-limited tmpfs the test mounts (it needs root, as in CI; without
//! the permission the test says so and skips). Failed fsyncs and read errors come from the
//! storage engine's test-only fault hook (`ferrolog_log::TEST_FAULTS_ENV`): the test arms it
//! with a rule file every server it starts inherits, and writes rules into that file while
//! the servers run.
//!
//! Requests go over raw gRPC, not the Rust client, so each test sees the exact code a
//! broker answers with rather than what a retrying producer makes of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferrolog_proto::v1::admin_service_client::AdminServiceClient;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_proto::v1::{
    Acks, CreateTopicRequest, FetchFormat, FetchRequest, MetadataRequest, ProduceRequest,
    ProduceResponse, Record,
};
use ferrolog_tests::history::{self, Ack, Read};
use ferrolog_tests::{Cluster, Server, init_logging, send_signal};
use tonic::transport::Channel;

/// How long a produce may wait for its acknowledgement on the broker.
const PRODUCE_TIMEOUT_MS: u32 = 10_000;
/// Bound on one gRPC call from the test (connect included).
const CALL_LIMIT: Duration = Duration::from_secs(20);
/// How long writes may take to resume once space is freed, or leadership to move.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// Bytes a fetch asks for at once.
const FETCH_MAX_BYTES: u32 = 1024 * 1024;
/// Upper bound on fetch rounds when reading a partition back.
const MAX_FETCH_ROUNDS: usize = 10_000;

/// The code a broker puts in a failed call's metadata (`ferrolog-error-code`).
fn error_code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(ferrolog_proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned()
}

async fn connect(address: &str) -> anyhow::Result<Channel> {
    let channel = tokio::time::timeout(
        CALL_LIMIT,
        Channel::from_shared(format!("http://{address}"))?.connect(),
    )
    .await
    .context("connect timed out")??;
    Ok(channel)
}

/// Bounds one call; a timeout is a test failure, never a hang.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<Result<T, tonic::Status>> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(result) => Ok(result.map(tonic::Response::into_inner)),
        Err(_) => bail!("{what} did not answer within {CALL_LIMIT:?}"),
    }
}

/// A record whose value names its id (`d-<id>-`), padded to `size` bytes.
fn numbered(id: u64, size: usize) -> Record {
    let mut value = format!("d-{id}-").into_bytes();
    value.resize(size.max(value.len()), b'x');
    Record {
        value: Some(Bytes::from(value)),
        ..Default::default()
    }
}

/// The id a `numbered` value names.
fn id_of(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value.get(..32.min(value.len()))?).ok()?;
    text.strip_prefix("d-")?.split('-').next()?.parse().ok()
}

/// Produces one numbered record at acks=all.
async fn produce_one(
    client: &mut ClientServiceClient<Channel>,
    topic: &str,
    id: u64,
    size: usize,
) -> anyhow::Result<Result<ProduceResponse, tonic::Status>> {
    bounded(
        "produce",
        client.produce(ProduceRequest {
            topic: topic.to_owned(),
            partition: 0,
            acks: Acks::All.into(),
            records: vec![numbered(id, size)],
            timeout_ms: PRODUCE_TIMEOUT_MS,
            ..Default::default()
        }),
    )
    .await
}

/// Reads partition 0 of `topic` from offset 0 up to its high watermark.
async fn read_back(
    client: &mut ClientServiceClient<Channel>,
    topic: &str,
) -> anyhow::Result<Vec<Read>> {
    let mut reads = Vec::new();
    let mut offset = 0;
    for _ in 0..MAX_FETCH_ROUNDS {
        let response = bounded(
            "fetch",
            client.fetch(FetchRequest {
                topic: topic.to_owned(),
                partition: 0,
                offset,
                max_bytes: FETCH_MAX_BYTES,
                max_wait_ms: 0,
                format: FetchFormat::Records.into(),
                isolation_level: ferrolog_proto::v1::IsolationLevel::ReadUncommitted as i32,
            }),
        )
        .await?
        .with_context(|| format!("fetch {topic} at {offset}"))?;
        for record in &response.records {
            let id = record
                .value
                .as_deref()
                .and_then(id_of)
                .with_context(|| format!("the record at {} names no id", record.offset))?;
            reads.push(Read {
                partition: 0,
                offset: record.offset,
                id,
            });
        }
        if response.next_offset >= response.high_watermark {
            return Ok(reads);
        }
        ensure!(
            response.next_offset > offset,
            "a fetch at {offset} made no progress"
        );
        offset = response.next_offset;
    }
    bail!("{topic} did not read back within {MAX_FETCH_ROUNDS} fetches")
}

/// Checks the acknowledged records against a read-back: none lost, moved or reordered.
fn assert_history(acks: &[Ack], reads: &[Read]) -> history::Report {
    let report = history::check(acks, reads);
    assert!(report.is_safe(), "{report}");
    report
}

/// A single-threaded runtime is enough for one client; servers run in their own processes.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn create_topic(address: &str, topic: &str, replication_factor: i32) -> anyhow::Result<()> {
    let mut admin = AdminServiceClient::new(connect(address).await?);
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        // Brokers may still be registering just after a start.
        let created = bounded(
            "create topic",
            admin.create_topic(CreateTopicRequest {
                name: topic.to_owned(),
                partitions: 1,
                replication_factor,
                ..Default::default()
            }),
        )
        .await?;
        match created {
            Ok(_) => return Ok(()),
            Err(status) if Instant::now() < deadline => {
                tracing::info!(%status, "create topic refused; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => bail!("cannot create {topic}: {status}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fault hook's rule file.

/// The rule file every server this process starts reads (see `ferrolog_log::test_faults`).
/// One per test process; tests that share a process use distinct path substrings.
fn fault_rules_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let file =
            std::env::temp_dir().join(format!("ferrolog-disk-faults-{}.rules", std::process::id()));
        // SAFETY: set once, before this test starts any server, and read only through
        // std::env (which locks) by this process: nextest runs each test in its own process,
        // and under `cargo test` the OnceLock sets it before any test here spawns a server.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(ferrolog_log::TEST_FAULTS_ENV, &file);
        }
        file
    })
}

/// Serialises edits of the rule file between tests sharing a process.
static RULES_LOCK: Mutex<()> = Mutex::new(());

/// One rule (`fsync-once SUBSTRING` or `read SUBSTRING`) in the fault file, in force until
/// dropped; the file goes with its last rule, so no test leaves one behind.
struct FaultRule(String);

impl FaultRule {
    fn add(rule: &str) -> anyhow::Result<Self> {
        let _guard = RULES_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(fault_rules_file())?;
        writeln!(file, "{rule}")?;
        Ok(Self(rule.to_owned()))
    }
}

impl Drop for FaultRule {
    fn drop(&mut self) {
        let _guard = RULES_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::fs::read_to_string(fault_rules_file()).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|line| *line != self.0)
            .map(|line| format!("{line}\n"))
            .collect();
        let _ = if kept.is_empty() {
            std::fs::remove_file(fault_rules_file())
        } else {
            std::fs::write(fault_rules_file(), kept)
        };
    }
}

// ---------------------------------------------------------------------------------------
// A full disk.

/// A size-limited tmpfs mounted for one test and unmounted when dropped (after the server
/// on it, which must be declared after it so it is dropped first).
struct Tmpfs {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB; `Ok(None)` when mounting is not permitted here.
    fn mount(size_mib: u32) -> anyhow::Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let mount_point = dir.path().join("disk");
        std::fs::create_dir(&mount_point)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&mount_point)
            .output()
            .context("run mount")?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a size-limited tmpfs (this test needs root, as in CI): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Self {
            mount_point,
            _dir: dir,
        }))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open: detach it now, it goes when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

/// Size of the test's tmpfs: room for the metadata log and a few MiB of records.
const TMPFS_MIB: u32 = 16;
/// A file the test writes on the same tmpfs and deletes to free space.
const FILLER_BYTES: usize = 6 * 1024 * 1024;
/// Value size of each record: the disk fills in a few hundred produces.
const FULL_DISK_RECORD_BYTES: usize = 16 * 1024;
/// Upper bound on produces while filling (16 MiB / 16 KiB = 1024 would fill it twice over).
const MAX_FILL_PRODUCES: u64 = 2_000;
/// Produces tried once the disk is full, each of which must fail cleanly.
const PRODUCES_WHILE_FULL: u64 = 5;

fn process_alive(pid: i32) -> bool {
    send_signal(pid, 0) == 0
}

/// A full disk: producers are told STORAGE_ERROR (not CORRUPT_RECORD, not INTERNAL_ERROR),
/// the process stays up serving metadata and reads, everything acknowledged reads back
/// unchanged, and writes resume once space is freed.
#[test]
fn a_full_disk_refuses_writes_with_storage_error_keeps_serving_reads_and_recovers()
-> anyhow::Result<()> {
    init_logging();
    let Some(disk) = Tmpfs::mount(TMPFS_MIB)? else {
        return Ok(());
    };
    let filler = disk.mount_point.join("filler");
    std::fs::write(&filler, vec![0xAAu8; FILLER_BYTES])?;
    let server = Server::start(&disk.mount_point.join("data"))?;
    let topic = "full";
    runtime()?.block_on(async {
        create_topic(&server.grpc_address, topic, 1).await?;
        let channel = connect(&server.grpc_address).await?;
        let mut client = ClientServiceClient::new(channel);

        tracing::info!("phase: produce until the disk is full");
        let mut acks = Vec::new();
        let mut next_id = 0;
        let first_refusal = loop {
            ensure!(
                next_id < MAX_FILL_PRODUCES,
                "the disk never filled after {next_id} produces"
            );
            let id = next_id;
            next_id += 1;
            match produce_one(&mut client, topic, id, FULL_DISK_RECORD_BYTES).await? {
                Ok(response) => acks.push(Ack {
                    id,
                    partition: 0,
                    offset: response.base_offset,
                }),
                Err(status) => break status,
            }
        };
        tracing::info!(acknowledged = acks.len(), status = %first_refusal, "disk full");
        assert_eq!(
            error_code(&first_refusal),
            "STORAGE_ERROR",
            "a full disk is a storage error: {first_refusal}"
        );
        assert!(!acks.is_empty(), "some records fit before the disk filled");

        tracing::info!("phase: while full, every produce is refused the same way");
        for _ in 0..PRODUCES_WHILE_FULL {
            let id = next_id;
            next_id += 1;
            match produce_one(&mut client, topic, id, FULL_DISK_RECORD_BYTES).await? {
                // A produce may fit in what a failed one gave back: then it counts.
                Ok(response) => acks.push(Ack {
                    id,
                    partition: 0,
                    offset: response.base_offset,
                }),
                Err(status) => {
                    assert_eq!(error_code(&status), "STORAGE_ERROR", "while full: {status}")
                }
            }
        }

        tracing::info!("phase: the node is up and serves metadata and every acknowledged read");
        assert!(
            process_alive(server.pid()),
            "the server died of a full disk"
        );
        let metadata = bounded(
            "metadata",
            client.metadata(MetadataRequest {
                topics: vec![topic.to_owned()],
            }),
        )
        .await??;
        ensure!(
            metadata.topics.iter().any(|t| t.name == topic),
            "metadata lacks {topic}: {metadata:?}"
        );
        let reads = read_back(&mut client, topic).await?;
        let report = assert_history(&acks, &reads);
        tracing::info!(%report, "read back while the disk is full");

        tracing::info!("phase: space is freed; writes resume");
        std::fs::remove_file(&filler)?;
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let resumed_at = loop {
            let id = next_id;
            next_id += 1;
            match produce_one(&mut client, topic, id, FULL_DISK_RECORD_BYTES).await? {
                Ok(response) => {
                    acks.push(Ack {
                        id,
                        partition: 0,
                        offset: response.base_offset,
                    });
                    break id;
                }
                Err(status) if Instant::now() < deadline => {
                    assert_eq!(error_code(&status), "STORAGE_ERROR", "{status}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => bail!("writes did not resume after space was freed: {status}"),
            }
        };
        for id in next_id..next_id + 10 {
            let response = produce_one(&mut client, topic, id, FULL_DISK_RECORD_BYTES)
                .await?
                .with_context(|| format!("produce {id} after space was freed"))?;
            acks.push(Ack {
                id,
                partition: 0,
                offset: response.base_offset,
            });
        }

        tracing::info!("phase: everything acknowledged, before and after, reads back");
        let reads = read_back(&mut client, topic).await?;
        let report = assert_history(&acks, &reads);
        tracing::info!(%report, resumed_at, "full-disk history");
        assert!(process_alive(server.pid()));
        anyhow::Ok(())
    })?;
    drop(server);
    drop(disk);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A failed fsync.

/// Nodes of the fsync test's cluster: RF=3, so two other in-sync replicas can take over.
const CLUSTER_NODES: usize = 3;
/// Acknowledged records before the fsync fails.
const RECORDS_BEFORE_FAULT: u64 = 50;
/// Acknowledged records on the new leader after it took over.
const RECORDS_AFTER_MOVE: u64 = 20;
/// Small records: this test is about the protocol, not the bytes.
const SMALL_RECORD_BYTES: usize = 64;

/// The partition's leader as `topic describe` reports it through node `via`.
fn leader_of(cluster: &Cluster, via: i32, topic: &str) -> Option<i32> {
    let describe = cluster.describe(via, topic).ok()?;
    let leader = describe.partitions.first()?.leader;
    Some(leader).filter(|l| *l > 0)
}

/// An fsync failure on the leader: the produce waiting for it is refused with STORAGE_ERROR
/// (never acknowledged, although the hook lets the next fsync "succeed", as Linux does), the
/// leader refuses everything after, its leadership moves to another in-sync replica, and
/// every record acknowledged before reads back from the new leader, which takes writes.
#[test]
fn an_fsync_failure_is_never_acknowledged_and_moves_the_leadership() -> anyhow::Result<()> {
    init_logging();
    let rules = fault_rules_file();
    tracing::info!(rules = %rules.display(), "fault hook armed");
    let cluster = Cluster::start(
        CLUSTER_NODES,
        &[
            "--replica-lag-time-max-ms",
            "2000",
            // Keeps the preferred-leader election from moving leadership back meanwhile.
            "--leader-rebalance-interval-ms",
            "0",
        ],
    )?;
    for id in cluster.ids() {
        cluster.wait_ready(id, RECOVERY_DEADLINE)?;
    }
    let topic = "fsync-victim";
    let outcome = runtime()?.block_on(async {
        create_topic(cluster.address(1), topic, CLUSTER_NODES as i32).await?;
        let old_leader = ferrolog_tests::wait_until("a leader", RECOVERY_DEADLINE, || {
            leader_of(&cluster, 1, topic)
        })?;
        let mut leader_client =
            ClientServiceClient::new(connect(cluster.address(old_leader)).await?);

        tracing::info!(
            old_leader,
            "phase: records acknowledged by all three replicas"
        );
        let mut acks = Vec::new();
        for id in 0..RECORDS_BEFORE_FAULT {
            let response = produce_one(&mut leader_client, topic, id, SMALL_RECORD_BYTES)
                .await?
                .with_context(|| format!("produce {id}"))?;
            acks.push(Ack {
                id,
                partition: 0,
                offset: response.base_offset,
            });
        }

        tracing::info!("phase: the leader's next fsync of the partition fails");
        let rule = FaultRule::add(&format!("fsync-once node-{old_leader}/{topic}-0/"))?;
        let victim_id = RECORDS_BEFORE_FAULT;
        let refused = produce_one(&mut leader_client, topic, victim_id, SMALL_RECORD_BYTES)
            .await?
            .expect_err("a produce whose fsync failed must not be acknowledged");
        assert_eq!(error_code(&refused), "STORAGE_ERROR", "{refused}");
        tracing::info!(status = %refused, "the waiting produce was refused");

        tracing::info!(
            "phase: the failed leader takes nothing more, although fsync would now work"
        );
        let again = produce_one(&mut leader_client, topic, victim_id + 1, SMALL_RECORD_BYTES)
            .await?
            .expect_err("a failed log takes no more writes");
        let code = error_code(&again);
        assert!(
            code == "STORAGE_ERROR" || code == "NOT_LEADER",
            "after the failure: {again}"
        );

        tracing::info!("phase: the leadership moves to another in-sync replica");
        let new_leader = ferrolog_tests::wait_until(
            "the leadership to leave the failed broker",
            RECOVERY_DEADLINE,
            || leader_of(&cluster, old_leader, topic).filter(|l| *l != old_leader),
        )?;
        tracing::info!(old_leader, new_leader, "leadership moved");
        let mut new_client = ClientServiceClient::new(connect(cluster.address(new_leader)).await?);

        tracing::info!("phase: the new leader takes writes (once the failed replica left the ISR)");
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let mut next_id = victim_id + 2;
        let mut after = 0;
        while after < RECORDS_AFTER_MOVE {
            let id = next_id;
            next_id += 1;
            match produce_one(&mut new_client, topic, id, SMALL_RECORD_BYTES).await? {
                Ok(response) => {
                    after += 1;
                    acks.push(Ack {
                        id,
                        partition: 0,
                        offset: response.base_offset,
                    });
                }
                Err(status) if Instant::now() < deadline => {
                    tracing::info!(%status, "new leader not writable yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => bail!("the new leader takes no writes: {status}"),
            }
        }

        tracing::info!("phase: every acknowledged record reads back from the new leader");
        let reads = read_back(&mut new_client, topic).await?;
        let report = assert_history(&acks, &reads);
        let victim_present = reads.iter().any(|r| r.id == victim_id);
        tracing::info!(%report, victim_present, "fsync-failure history");
        let isr_after = cluster
            .describe(new_leader, topic)?
            .partitions
            .first()
            .map(|p| p.isr.clone())
            .unwrap_or_default();
        anyhow::Ok((
            old_leader,
            new_leader,
            report,
            victim_present,
            isr_after,
            rule,
        ))
    })?;
    let (old_leader, new_leader, report, victim_present, isr_after, rule) = outcome;
    eprintln!(
        "fsync failure on node {old_leader}: leadership moved to node {new_leader}; ISR now \
         {isr_after:?}; {report}; the refused record {} on the new leader",
        if victim_present {
            "is present (unacknowledged, allowed)"
        } else {
            "is absent"
        }
    );
    assert!(
        cluster.is_running(old_leader),
        "the failed node keeps running"
    );
    drop(rule);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Read errors and damaged bytes.

/// Records produced before the read faults, one batch each.
const READ_FAULT_RECORDS: u64 = 10;

/// A fetch of partition 0 at `offset` in `format`.
async fn fetch_at(
    client: &mut ClientServiceClient<Channel>,
    topic: &str,
    offset: i64,
    format: FetchFormat,
) -> anyhow::Result<Result<ferrolog_proto::v1::FetchResponse, tonic::Status>> {
    bounded(
        "fetch",
        client.fetch(FetchRequest {
            topic: topic.to_owned(),
            partition: 0,
            offset,
            max_bytes: FETCH_MAX_BYTES,
            max_wait_ms: 0,
            format: format.into(),
            isolation_level: ferrolog_proto::v1::IsolationLevel::ReadUncommitted as i32,
        }),
    )
    .await
}

/// EIO on read is reported (STORAGE_ERROR), and bytes the disk damaged are refused by the
/// CRC check (CORRUPT_RECORD), in both fetch formats: a fetch never returns bad bytes, and
/// the intact rest of the log is still served.
#[test]
fn read_errors_and_damaged_bytes_are_reported_never_served() -> anyhow::Result<()> {
    init_logging();
    fault_rules_file();
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let (eio_topic, crc_topic) = ("read-eio", "read-crc");
    runtime()?.block_on(async {
        let mut client = ClientServiceClient::new(connect(&server.grpc_address).await?);
        let mut offsets: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for topic in [eio_topic, crc_topic] {
            create_topic(&server.grpc_address, topic, 1).await?;
            for id in 0..READ_FAULT_RECORDS {
                let response = produce_one(&mut client, topic, id, SMALL_RECORD_BYTES)
                    .await?
                    .with_context(|| format!("produce {id} to {topic}"))?;
                offsets.entry(topic).or_default().push(response.base_offset);
            }
        }

        tracing::info!("phase: every read of the segment fails with EIO");
        let rule = FaultRule::add(&format!("read /{eio_topic}-0/"))?;
        for format in [FetchFormat::Records, FetchFormat::Batches] {
            let refused = fetch_at(&mut client, eio_topic, 0, format)
                .await?
                .expect_err("a failed read is reported, not served");
            assert_eq!(error_code(&refused), "STORAGE_ERROR", "{refused}");
        }
        assert!(process_alive(server.pid()));
        drop(rule);
        let healed = read_back(&mut client, eio_topic).await?;
        assert_eq!(
            healed.iter().map(|r| r.id).collect::<Vec<_>>(),
            (0..READ_FAULT_RECORDS).collect::<Vec<_>>(),
            "once the disk reads again, the data is all there"
        );

        tracing::info!("phase: one byte of the first batch is flipped on disk");
        let segment = dir
            .path()
            .join(format!("{crc_topic}-0/00000000000000000000.log"));
        let first_batch_end = flip_last_byte_of_first_batch(&segment)?;
        tracing::info!(segment = %segment.display(), first_batch_end, "damaged");
        for format in [FetchFormat::Records, FetchFormat::Batches] {
            let refused = fetch_at(&mut client, crc_topic, 0, format)
                .await?
                .expect_err("a corrupt batch is never served");
            assert_eq!(error_code(&refused), "CORRUPT_RECORD", "{refused}");
            assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused}");
        }
        tracing::info!("phase: the batches after it are intact and still served");
        let second = offsets[crc_topic][1];
        let rest = fetch_at(&mut client, crc_topic, second, FetchFormat::Records)
            .await?
            .context("fetch after the damaged batch")?;
        let ids: Vec<u64> = rest
            .records
            .iter()
            .filter_map(|r| r.value.as_deref().and_then(id_of))
            .collect();
        assert_eq!(ids, (1..READ_FAULT_RECORDS).collect::<Vec<_>>());
        assert!(process_alive(server.pid()));
        anyhow::Ok(())
    })
}

/// Flips the last byte of the first batch of a segment (inside its records, which the CRC
/// covers) and returns where that batch ends.
fn flip_last_byte_of_first_batch(segment: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .with_context(|| format!("open {}", segment.display()))?;
    // A batch starts with its base offset (8 bytes) and its length after those 12 bytes.
    let mut head = [0u8; 12];
    file.read_exact_at(&mut head, 0)?;
    let length = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
    let end = 12 + u64::try_from(length).context("negative batch length")?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, end - 1)?;
    byte[0] ^= 0x5A;
    file.write_all_at(&byte, end - 1)?;
    Ok(end)
}
