//! The soak (`scripts/soak.sh MINUTES`, not part of CI): three nodes under a steady load at
//! about half of the throughput they just measured, a fault every few minutes, and every
//! node's resident memory, open file descriptors and threads sampled every 10 s.
//!
//! - **Load**: `ferrolog bench produce` (the same binary as the servers) first measures the
//!   cluster's acks=all throughput on a 6-partition RF=3 topic of 1 KiB records, then runs
//!   at half of it until the end. That topic has size-based retention, so the disks stay
//!   bounded however long the soak runs.
//! - **History**: beside it, the acks=all workload of the fault tests writes numbered
//!   records to a topic without retention; after every fault what was written since the
//!   previous check, and at the end everything, is read back, and the history checker must
//!   find nothing lost, misplaced, reordered or acknowledged twice.
//! - **Faults**, in turn: SIGKILL and restart, SIGSTOP for longer than the session timeout,
//!   SIGTERM (controlled shutdown) and restart, SIGKILL of the controller leader. Node 1 is
//!   only ever paused, never restarted, so one process lives through the whole soak: its
//!   curve is the one that shows a leak.
//!
//! Output in `SOAK_OUT` (default `target/soak`): `samples.csv` (elapsed_s, node, pid,
//! rss_kib, fds, sockets, threads; sockets are the fds that are sockets), `faults.csv`
//! (elapsed_s, fault), `load.log` (the benchmark's output) and `summary.txt`, which
//! `scripts/soak.sh` prints and plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferrolog_tests::history::{self, Ack};
use ferrolog_tests::workload::{Workload, read_from_to_high_watermark};
use ferrolog_tests::{Cluster, ferrolog_bin, init_logging, run_cli};

/// Soak length when `SOAK_MINUTES` is not set.
const DEFAULT_MINUTES: u64 = 5;
/// Time between faults when `SOAK_FAULT_EVERY_SECS` is not set.
const DEFAULT_FAULT_EVERY: Duration = Duration::from_secs(120);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

const LOAD_TOPIC: &str = "soak-load";
const LOAD_PARTITIONS: u32 = 6;
const LOAD_RECORD_BYTES: u64 = 1024;
/// Records of the throughput measurement: long enough (several seconds) to be a rate.
const MEASURE_RECORDS: u64 = 400_000;
/// `retention.bytes` and `segment.bytes` of the load topic: about 2.3 GB on disk over the
/// three nodes whatever the soak's length.
const LOAD_RETENTION_BYTES: u64 = 128 * 1024 * 1024;
const LOAD_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Pause before a benchmark that ended early (a fault outlasted its delivery timeout) is
/// started again.
const LOAD_RESTART_PAUSE: Duration = Duration::from_secs(1);

const HISTORY_TOPIC: &str = "soak-history";
const HISTORY_PARTITIONS: u32 = 3;

/// How long a SIGSTOPped node stays stopped: past the broker session timeout, so it is
/// fenced and its leaderships move.
const PAUSE_FOR: Duration = Duration::from_secs(12);
/// How long a killed node stays down before it is restarted.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// How long every node may take to be ready again after a fault.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);
/// The workload must make this much progress after each fault.
const PROGRESS_AFTER_FAULT: u64 = 200;

/// The node that is never restarted: its process lives through the whole soak.
const LONG_LIVED_NODE: i32 = 1;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(i32),
    Pause(i32),
    Terminate(i32),
    KillControllerLeader,
}

/// The faults in the order they come round. Node 1 is only paused (see the module doc).
const FAULTS: [Fault; 6] = [
    Fault::Kill(2),
    Fault::Pause(LONG_LIVED_NODE),
    Fault::Terminate(3),
    Fault::KillControllerLeader,
    Fault::Kill(3),
    Fault::Terminate(2),
];

#[test]
#[ignore = "long-running: scripts/soak.sh MINUTES runs it"]
fn soak() -> anyhow::Result<()> {
    init_logging();
    let minutes = env_u64("SOAK_MINUTES")?.unwrap_or(DEFAULT_MINUTES);
    let fault_every = env_u64("SOAK_FAULT_EVERY_SECS")?
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_FAULT_EVERY);
    let out = std::env::var_os("SOAK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/soak"));
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let soak_for = Duration::from_secs(minutes * 60);

    tracing::info!(
        minutes,
        ?fault_every,
        out = %out.display(),
        "phase: three nodes, a load topic with size-based retention and a history topic"
    );
    let mut cluster = Cluster::start(3, &[])?;
    for id in cluster.ids() {
        cluster.wait_ready(id, RECOVERY_DEADLINE)?;
    }
    create_topic(
        &cluster,
        LOAD_TOPIC,
        LOAD_PARTITIONS,
        &[
            format!("retention.bytes={LOAD_RETENTION_BYTES}"),
            format!("segment.bytes={LOAD_SEGMENT_BYTES}"),
        ],
    )?;
    create_topic(&cluster, HISTORY_TOPIC, HISTORY_PARTITIONS, &[])?;
    let brokers = cluster.brokers_csv();

    tracing::info!("phase: measure the cluster's acks=all throughput of 1 KiB records");
    let measured = measure_throughput(&brokers, &out)?;
    let rate = (measured / 2).max(1);
    tracing::info!(
        measured,
        rate,
        "phase: soak at half of the measured throughput"
    );

    let started = Instant::now();
    let end = started + soak_for;
    let load_before = records_in(&cluster, LOAD_TOPIC)?;
    let samples = Sampler::start(&cluster, started, &out.join("samples.csv"))?;
    let load = Load::start(brokers.clone(), rate, end, out.join("load.log"))?;
    let mut faults_csv = File::create(out.join("faults.csv"))?;
    writeln!(faults_csv, "elapsed_s,fault")?;

    let mut acks: Vec<Ack> = Vec::new();
    let mut failed_sends = 0usize;
    let mut round = 0u64;
    let mut workload = Workload::start_numbered(
        cluster.node(LONG_LIVED_NODE).client_config(),
        HISTORY_TOPIC,
        HISTORY_PARTITIONS,
        0,
    );
    let mut checks = Vec::new();
    let mut checked_up_to = BTreeMap::new();
    let mut next_fault = started + fault_every;
    while next_fault < end {
        sleep_until(next_fault);
        let fault = FAULTS[(round as usize) % FAULTS.len()];
        let at = started.elapsed().as_secs();
        tracing::info!(round, ?fault, at, "phase: fault");
        let description = inject(&mut cluster, fault)?;
        writeln!(faults_csv, "{at},{description}")?;
        samples.set_pids(&cluster);
        for id in cluster.ids() {
            cluster
                .wait_ready(id, RECOVERY_DEADLINE)
                .with_context(|| format!("after {description}"))?;
        }
        let before = workload.acknowledged();
        workload
            .wait_progress(
                before,
                PROGRESS_AFTER_FAULT,
                RECOVERY_DEADLINE,
                "after the fault",
            )
            .with_context(|| format!("after {description}"))?;

        tracing::info!(
            round,
            "phase: what was written since the last check is read back and checked"
        );
        let outcome = workload.stop()?;
        acks.extend(outcome.acks);
        failed_sends += outcome.failed;
        checks.push(check_history(
            &cluster,
            &acks,
            &mut checked_up_to,
            &description,
        )?);
        round += 1;
        workload = Workload::start_numbered(
            cluster.node(LONG_LIVED_NODE).client_config(),
            HISTORY_TOPIC,
            HISTORY_PARTITIONS,
            round * Workload::IDS_PER_RUN,
        );
        next_fault += fault_every;
    }
    sleep_until(end);

    tracing::info!("phase: stop the load and check the whole history once more");
    let mut load_report = load.stop()?;
    // What the cluster took, not what was asked of it: the benchmark falls behind its rate
    // while a fault holds its partitions up.
    let load_after = records_in(&cluster, LOAD_TOPIC)?;
    load_report.achieved_per_second =
        load_after.saturating_sub(load_before) / started.elapsed().as_secs().max(1);
    let outcome = workload.stop()?;
    acks.extend(outcome.acks);
    failed_sends += outcome.failed;
    checks.push(check_history(
        &cluster,
        &acks,
        &mut BTreeMap::new(),
        "the end (everything)",
    )?);
    let series = samples.stop()?;

    let summary = summarize(
        minutes,
        measured,
        rate,
        round,
        &load_report,
        acks.len(),
        failed_sends,
        &checks,
        &series,
    );
    fs::write(out.join("summary.txt"), &summary)?;
    println!("{summary}");
    Ok(())
}

fn env_u64(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => {
            Ok(Some(v.parse().with_context(|| {
                format!("{name}={v:?} is not a number")
            })?))
        }
        Err(_) => Ok(None),
    }
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn create_topic(
    cluster: &Cluster,
    topic: &str,
    partitions: u32,
    configs: &[String],
) -> anyhow::Result<()> {
    let partitions = partitions.to_string();
    let mut args = vec![
        "topic",
        "create",
        topic,
        "--partitions",
        &partitions,
        "--replication-factor",
        "3",
    ];
    for config in configs {
        args.extend(["--config", config.as_str()]);
    }
    let out = run_cli(&cluster.brokers_csv(), &args, None)?;
    ferrolog_tests::assert_ok(&out);
    Ok(())
}

/// The `ferrolog bench produce` arguments of the load topic; `throughput` 0 is as fast as
/// possible.
fn bench_args(records: u64, throughput: u64) -> Vec<String> {
    [
        "bench",
        "produce",
        "--topic",
        LOAD_TOPIC,
        "--records",
        &records.to_string(),
        "--record-size",
        &LOAD_RECORD_BYTES.to_string(),
        "--throughput",
        &throughput.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs the benchmark at full speed and returns its records/s.
fn measure_throughput(brokers: &str, out: &Path) -> anyhow::Result<u64> {
    let args = bench_args(MEASURE_RECORDS, 0);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = ferrolog_tests::run_cli_within(brokers, &args, None, Duration::from_secs(300))?;
    let text = ferrolog_tests::stdout(&output);
    fs::write(out.join("measure.log"), &text)?;
    ensure!(
        output.status.success(),
        "the throughput measurement failed: {}",
        ferrolog_tests::stderr(&output)
    );
    parse_records_per_second(&text)
        .with_context(|| format!("no throughput line in the benchmark's output:\n{text}"))
}

/// The records/s of a `throughput: N records/s, M MB/s` line.
fn parse_records_per_second(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("throughput: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .map(|n| n as u64)
}

/// The background load: `ferrolog bench produce` at a fixed rate until the end of the soak,
/// started again whenever a run ends early.
struct Load {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<LoadReport>>,
}

#[derive(Debug, Default)]
struct LoadReport {
    runs: u32,
    failed_runs: u32,
    /// Records the load topic grew by over the soak, per second.
    achieved_per_second: u64,
}

/// Records ever appended to `topic`: the sum of its partitions' high watermarks.
fn records_in(cluster: &Cluster, topic: &str) -> anyhow::Result<u64> {
    let described = cluster.describe(LONG_LIVED_NODE, topic)?;
    let total: i64 = described
        .partitions
        .iter()
        .map(|p| p.high_watermark.max(0))
        .sum();
    Ok(u64::try_from(total).unwrap_or(0))
}

impl Load {
    fn start(brokers: String, rate: u64, end: Instant, log: PathBuf) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || run_load(&brokers, rate, end, &log, &stop))
        };
        Ok(Self { stop, thread })
    }

    fn stop(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
    }
}

fn run_load(
    brokers: &str,
    rate: u64,
    end: Instant,
    log: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<LoadReport> {
    let mut report = LoadReport::default();
    while !stop.load(Ordering::Acquire) {
        let left = end.saturating_duration_since(Instant::now());
        let records = rate.saturating_mul(left.as_secs());
        if records == 0 {
            break;
        }
        let mut child = spawn_bench(brokers, records, rate, log)?;
        report.runs += 1;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if stop.load(Ordering::Acquire) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        match status {
            Some(status) if !status.success() => {
                report.failed_runs += 1;
                tracing::warn!(%status, "the load benchmark ended early; starting it again");
                std::thread::sleep(LOAD_RESTART_PAUSE);
            }
            _ => {}
        }
    }
    Ok(report)
}

fn spawn_bench(brokers: &str, records: u64, rate: u64, log: &Path) -> anyhow::Result<Child> {
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(ferrolog_bin())
        .args(bench_args(records, rate))
        .env("FERROLOG_BROKERS", brokers)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn the load benchmark")
}

/// One passed history check: after which fault, and what the checker said.
struct Check {
    after: String,
    report: String,
}

/// Reads `HISTORY_TOPIC` back from `from` (each partition's offset; everything when empty)
/// and checks the acknowledgements at or above it; moves `from` to where this read ended.
/// After a fault only the new part is read (the whole of it takes long under load); the
/// final check reads everything, so a record lost later from an earlier part is still found.
fn check_history(
    cluster: &Cluster,
    acks: &[Ack],
    from: &mut BTreeMap<u32, i64>,
    after: &str,
) -> anyhow::Result<Check> {
    let (reads, ends) = read_from_to_high_watermark(
        cluster.node(LONG_LIVED_NODE).client_config(),
        HISTORY_TOPIC,
        HISTORY_PARTITIONS,
        from,
    )?;
    let in_range: Vec<Ack> = acks
        .iter()
        .filter(|a| {
            from.get(&a.partition)
                .is_none_or(|start| a.offset >= *start)
        })
        .copied()
        .collect();
    let report = history::check(&in_range, &reads);
    tracing::info!(after, %report, "history checked");
    if !report.is_safe() {
        bail!("history check after {after}: {report}");
    }
    *from = ends;
    Ok(Check {
        after: after.to_owned(),
        report: report.to_string(),
    })
}

fn inject(cluster: &mut Cluster, fault: Fault) -> anyhow::Result<String> {
    Ok(match fault {
        Fault::Kill(id) => {
            cluster.kill(id)?;
            std::thread::sleep(DOWN_FOR);
            cluster.restart(id)?;
            format!("SIGKILL node {id}, restart after {DOWN_FOR:?}")
        }
        Fault::Pause(id) => {
            cluster.pause(id);
            std::thread::sleep(PAUSE_FOR);
            cluster.resume(id);
            format!("SIGSTOP node {id} for {PAUSE_FOR:?}")
        }
        Fault::Terminate(id) => {
            let status = cluster.terminate(id)?;
            cluster.restart(id)?;
            format!("SIGTERM node {id} ({status}), restart")
        }
        Fault::KillControllerLeader => {
            let leader = cluster.wait_for_leader(RECOVERY_DEADLINE)?;
            // The long-lived node keeps its process: kill another voter in its place.
            let victim = if leader == LONG_LIVED_NODE { 2 } else { leader };
            cluster.kill(victim)?;
            std::thread::sleep(DOWN_FOR);
            cluster.restart(victim)?;
            format!("SIGKILL controller leader (node {leader}; killed node {victim}), restart")
        }
    })
}

/// One sample of one node.
#[derive(Clone, Copy, Debug)]
struct Sample {
    elapsed_s: u64,
    pid: i32,
    rss_kib: u64,
    fds: u64,
    /// Of `fds`, the sockets (client and peer connections, listeners); the rest are files.
    sockets: u64,
    threads: u64,
}

/// Samples every node's process every [`SAMPLE_EVERY`] on its own thread.
struct Sampler {
    pids: Arc<Mutex<BTreeMap<i32, i32>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<BTreeMap<i32, Vec<Sample>>>>,
}

impl Sampler {
    fn start(cluster: &Cluster, started: Instant, csv: &Path) -> anyhow::Result<Self> {
        let pids = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut file = File::create(csv).with_context(|| format!("create {}", csv.display()))?;
        writeln!(file, "elapsed_s,node,pid,rss_kib,fds,sockets,threads")?;
        let sampler_pids = Arc::clone(&pids);
        let sampler_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut series: BTreeMap<i32, Vec<Sample>> = BTreeMap::new();
            let mut next = Instant::now();
            while !sampler_stop.load(Ordering::Acquire) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(200)));
                    continue;
                }
                next += SAMPLE_EVERY;
                let elapsed_s = started.elapsed().as_secs();
                let current: Vec<(i32, i32)> = sampler_pids
                    .lock()
                    .map_err(|_| anyhow::anyhow!("pid table poisoned"))?
                    .iter()
                    .map(|(n, p)| (*n, *p))
                    .collect();
                for (node, pid) in current {
                    // A node between a kill and its restart has no process to sample.
                    let Some(sample) = sample_process(pid, elapsed_s) else {
                        continue;
                    };
                    writeln!(
                        file,
                        "{},{node},{},{},{},{},{}",
                        sample.elapsed_s,
                        sample.pid,
                        sample.rss_kib,
                        sample.fds,
                        sample.sockets,
                        sample.threads
                    )?;
                    series.entry(node).or_default().push(sample);
                }
                file.flush()?;
            }
            Ok(series)
        });
        let sampler = Self { pids, stop, thread };
        sampler.set_pids(cluster);
        Ok(sampler)
    }

    /// Samples the nodes' current processes from now on (after a restart).
    fn set_pids(&self, cluster: &Cluster) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        pids.clear();
        for id in cluster.ids() {
            if cluster.is_running(id) {
                pids.insert(id, cluster.node(id).pid());
            }
        }
    }

    fn stop(self) -> anyhow::Result<BTreeMap<i32, Vec<Sample>>> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler thread panicked"))?
    }
}

/// Resident memory and threads from `/proc/PID/status`, open descriptors from
/// `/proc/PID/fd`; `None` when the process is gone.
fn sample_process(pid: i32, elapsed_s: u64) -> Option<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    let (mut fds, mut sockets) = (0, 0);
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        let is_socket = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        sockets += u64::from(is_socket);
    }
    Some(Sample {
        elapsed_s,
        pid,
        rss_kib: field("VmRSS:")?,
        fds,
        sockets,
        threads: field("Threads:")?,
    })
}

/// A figure at three points of a process's life: after its first tenth (warmed up), its
/// largest, and its last.
fn shape(samples: &[Sample], value: impl Fn(&Sample) -> u64) -> (u64, u64, u64) {
    let warm = samples.get(samples.len() / 10).map_or(0, &value);
    let max = samples.iter().map(&value).max().unwrap_or(0);
    let last = samples.last().map_or(0, &value);
    (warm, max, last)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    minutes: u64,
    measured: u64,
    rate: u64,
    faults: u64,
    load: &LoadReport,
    acknowledged: usize,
    failed_sends: usize,
    checks: &[Check],
    series: &BTreeMap<i32, Vec<Sample>>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "soak: {minutes} min, 3 nodes; measured {measured} records/s of {LOAD_RECORD_BYTES} B \
         (acks=all, RF=3), load asked at {rate} records/s, taken at {} records/s on average; \
         {faults} faults; load benchmark runs: {} ({} ended early)",
        load.achieved_per_second, load.runs, load.failed_runs
    );
    let _ = writeln!(
        s,
        "history: {acknowledged} acknowledged, {failed_sends} sends failed, {} checks, each \
         safe (nothing lost, misplaced, reordered or acknowledged twice)",
        checks.len()
    );
    if let Some(last) = checks.last() {
        let _ = writeln!(s, "final check (after {}): {}", last.after, last.report);
    }
    let _ = writeln!(
        s,
        "\nper process (warm = after the first tenth of its life):\n\
         node  pid      life_s  rss_mib warm/max/last     fds warm/max/last  sockets warm/max/last  \
         threads warm/max/last"
    );
    for (node, samples) in series {
        let mut by_pid: Vec<(i32, Vec<Sample>)> = Vec::new();
        for sample in samples {
            match by_pid.last_mut() {
                Some((pid, list)) if *pid == sample.pid => list.push(*sample),
                _ => by_pid.push((sample.pid, vec![*sample])),
            }
        }
        for (pid, list) in by_pid {
            let life = list.last().map_or(0, |l| l.elapsed_s) - list[0].elapsed_s;
            let (rw, rm, rl) = shape(&list, |x| x.rss_kib / 1024);
            let (fw, fm, fl) = shape(&list, |x| x.fds);
            let (sw, sm, sl) = shape(&list, |x| x.sockets);
            let (tw, tm, tl) = shape(&list, |x| x.threads);
            let _ = writeln!(
                s,
                "{node:<5} {pid:<8} {life:<7} {rw:>6}/{rm}/{rl:<14} {fw:>6}/{fm}/{fl:<12} \
                 {sw:>6}/{sm}/{sl:<14} {tw:>5}/{tm}/{tl}"
            );
        }
    }
    s
}
