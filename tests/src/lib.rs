//! The harness of the whole-cluster tests: starts real `ferrolog` processes on loopback
//! ports, kills (SIGKILL), stops (SIGTERM), pauses (SIGSTOP) and restarts them, and runs the
//! CLI as a user would. [`Server`] is one node; [`Cluster`] is several nodes that form one
//! metadata quorum and keep their ports across restarts.
//!
//! The binary is found through `FERROLOG_BIN`, or next to the test executable in the
//! cargo target directory; `scripts/test.sh` builds it before the tests run.
//!
//! What a node knows (topic layout, ISR, offsets, the quorum, brokers, groups) is read
//! through [`describe`], the admin API in wire types; [`workload`] and [`history`] are the
//! acks=all producer and the checker every fault test judges its history with; [`python`] runs
//! kafka-python, the independent implementation the compression tests cross-check against.
//!
//! Every test calls [`init_logging`] first and tells its story in phases, each opened by
//! `tracing::info!("phase: ...")` saying why the next step matters, so a failure's output
//! shows which phase it was in.

pub mod describe;
pub mod history;
pub mod python;
pub mod readme;
pub mod txn_history;
pub mod workload;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a server may take from spawn to its ready line (recovery included).
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Path of the `ferrolog` binary under test.
pub fn ferrolog_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FERROLOG_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/ferrolog
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let bin = profile_dir.join("ferrolog");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --bin ferrolog` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Installs the tests' tracing subscriber: output through the test harness's capture (so
/// only a failing test's log is shown), filtered by `RUST_LOG` (default: `info`, with the
/// client's retries quiet). Idempotent: every test calls it, the first one installs it.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,ferrolog_client=error")
            }),
        )
        .with_test_writer()
        .try_init();
}

/// A server's `RUST_LOG`: `FERROLOG_SERVER_LOG`, or warnings and errors only.
pub fn server_log_filter() -> String {
    std::env::var("FERROLOG_SERVER_LOG").unwrap_or_else(|_| "warn".into())
}

/// How many of a server's last stderr lines a failed start reports.
const STDERR_TAIL_LINES: usize = 40;

/// A running `ferrolog server` process.
pub struct Server {
    child: Child,
    pub data_dir: PathBuf,
    pub grpc_address: String,
    pub http_address: String,
    /// Every argument after `server --data-dir DIR`, so a restart repeats them exactly.
    args: Vec<String>,
    label: String,
    /// The server's `RUST_LOG`, kept for a restart.
    log_filter: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts a single-node server on free loopback ports with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, &[])
    }

    /// Like [`Server::start`] with extra `ferrolog server` arguments. The client and HTTP
    /// ports are picked by the server (port 0); the controller port, unless `extra_args`
    /// names one, is picked here once so a restart keeps it (and two single-node servers
    /// never both take the default 9293).
    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if !extra_args.contains(&"--controller-listen") {
            let port = free_ports(1)?[0];
            args.push("--controller-listen".into());
            args.push(format!("127.0.0.1:{port}"));
        }
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        Self::spawn(data_dir, args, "server".into(), server_log_filter())
    }

    /// Like [`Server::start`], on client, HTTP and controller ports picked here once, so
    /// [`Server::restart_after_kill`] brings it back on the same addresses and a client
    /// that was sending to it reaches it again.
    pub fn start_keeping_ports(data_dir: &Path) -> anyhow::Result<Self> {
        let ports = free_ports(3)?;
        let [client, http, controller] = [0, 1, 2].map(|i| format!("127.0.0.1:{}", ports[i]));
        Self::start_exact(
            data_dir,
            &[
                "--listen",
                &client,
                "--http-listen",
                &http,
                "--controller-listen",
                &controller,
            ],
            "server",
        )
    }

    /// Starts a server with exactly these arguments after `server --data-dir DIR`: no port
    /// defaults are added, so `args` must name `--listen` and `--http-listen` itself (clap
    /// refuses a flag given twice). `label` prefixes the server's stderr lines.
    pub fn start_exact(data_dir: &Path, args: &[&str], label: &str) -> anyhow::Result<Self> {
        Self::start_exact_logging(data_dir, args, label, &server_log_filter())
    }

    /// Like [`Server::start_exact`], with `log_filter` as the server's `RUST_LOG`.
    pub fn start_exact_logging(
        data_dir: &Path,
        args: &[&str],
        label: &str,
        log_filter: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn(
            data_dir,
            args.iter().map(|s| (*s).to_owned()).collect(),
            label.to_owned(),
            log_filter.to_owned(),
        )
    }

    fn spawn(
        data_dir: &Path,
        args: Vec<String>,
        label: String,
        log_filter: String,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(ferrolog_bin())
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .env("RUST_LOG", &log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn ferrolog server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let stderr = child.stderr.take().context("server stderr")?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        {
            // Forwards the server's stderr, each line tagged with the node it came from, and
            // keeps the last lines for the error of a failed start.
            let tail = Arc::clone(&stderr_tail);
            let label = label.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    eprintln!("[{label}] {line}");
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("ferrolog ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(STARTUP_DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Lets the forwarding thread read what the process wrote before it died.
                std::thread::sleep(Duration::from_millis(100));
                let tail: Vec<String> = stderr_tail
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                bail!(
                    "{label} did not become ready within {STARTUP_DEADLINE:?} (exit: {status:?}); \
                     last stderr lines:\n{}",
                    tail.join("\n")
                );
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
                .with_context(|| format!("ready line {line:?} lacks {name}"))
        };
        Ok(Self {
            grpc_address: field("grpc=")?,
            http_address: field("http=")?,
            child,
            data_dir: data_dir.to_path_buf(),
            args,
            label,
            log_filter,
            stderr_tail,
        })
    }

    /// The last lines the server wrote to stderr (at most 40).
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process's exit status if it has exited (a crash, a panic that took it down), or
    /// `None` while it runs.
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait().context("poll the server process")
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(mut self) -> anyhow::Result<PathBuf> {
        self.signal(libc::SIGKILL);
        self.child.wait().context("wait for killed server")?;
        Ok(self.data_dir.clone())
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                bail!("server ignored SIGTERM for 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Restarts a server on the same data directory with the same arguments: new client
    /// and HTTP ports when they were port 0, the same ports when they were named.
    pub fn restart_after_kill(self) -> anyhow::Result<Self> {
        let args = self.args.clone();
        let label = self.label.clone();
        let log_filter = self.log_filter.clone();
        let dir = self.kill()?;
        Self::spawn(&dir, args, label, log_filter)
    }

    /// Runs a CLI command against this server and returns its output.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        run_cli(&self.grpc_address, args, stdin)
    }

    pub fn client_config(&self) -> ferrolog_client::ClientConfig {
        ferrolog_client::ClientConfig::with_brokers([self.grpc_address.clone()])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long a CLI command may run before [`run_cli`] kills it and fails.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `ferrolog <args>` with `--brokers` from FERROLOG_BROKERS, bounded to 60 s.
pub fn run_cli(brokers: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    run_cli_within(brokers, args, stdin, CLI_DEADLINE)
}

/// Like [`run_cli`], bounded to `limit`: the command is SIGKILLed and an error returned
/// when it runs longer.
pub fn run_cli_within(
    brokers: &str,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> anyhow::Result<Output> {
    let mut child = Command::new(ferrolog_bin())
        .args(args)
        .env("FERROLOG_BROKERS", brokers)
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn ferrolog cli")?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("cli stdin")?;
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    wait_bounded(child, limit, &format!("`ferrolog {}`", args.join(" ")))
}

/// Waits for `child` and collects its output, or SIGKILLs it and fails once `limit` has
/// passed; `what` names it in the error.
pub fn wait_bounded(child: Child, limit: Duration, what: &str) -> anyhow::Result<Output> {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.with_context(|| format!("wait for {what}")),
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            bail!("{what} did not finish within {limit:?}")
        }
    }
}

/// Runs `command` (no standard input; output collected) to its end within `limit`, SIGKILLing
/// it past that.
pub fn run_bounded(command: &mut Command, limit: Duration, what: &str) -> anyhow::Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    wait_bounded(child, limit, what)
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` on an HTTP/1.0 endpoint (a node's `/metrics`, `/ready`): the status code and
/// the body. Bounded: 2 s to connect, 5 s to answer.
pub fn http_get(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::Read;
    let socket: std::net::SocketAddr = address
        .parse()
        .with_context(|| format!("HTTP address {address}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2))
        .with_context(|| format!("connect {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")
        .with_context(|| format!("send to {address}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("read from {address}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{address} answered no HTTP status line"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// The sum of every sample of `metric` whose labels include all of `labels` (each written
/// as in the exposition, `rpc="replica_fetch"`), in Prometheus text from `/metrics`.
pub fn metric_sum(exposition: &str, metric: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (label_set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let wanted = labels
                .iter()
                .all(|l| label_set.split(',').any(|have| have == *l));
            wanted.then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// Ports handed out by [`free_ports`] in this process, never handed out twice.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Picks `count` distinct free loopback ports, to be bound later by servers.
///
/// A node that restarts must get its ports back, so they are taken below the kernel's
/// ephemeral range when it leaves room: there no outgoing connection (of a CLI run, or of
/// one node to another) takes the port while its node is down. Each candidate is bound once
/// to check that it is free, and all are held until the last is found so they are distinct.
pub fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held: Vec<TcpListener> = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    const LOW: u16 = 10_000;
    if ephemeral_low > LOW + 1_000 {
        let span = u64::from(ephemeral_low - LOW);
        let mut state = random_seed();
        for _ in 0..10_000 {
            if ports.len() == count {
                break;
            }
            // xorshift64: any spread will do, the bind below is the real check.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let port = LOW + u16::try_from(state % span).expect("span fits in u16");
            if ports.contains(&port) || handed_out.contains(&port) {
                continue;
            }
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                held.push(listener);
                ports.push(port);
            }
        }
    }
    while ports.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
        let port = listener.local_addr()?.port();
        if !ports.contains(&port) && !handed_out.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    handed_out.extend(&ports);
    Ok(ports)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish() | 1
}

/// One node of a [`Cluster`]: its fixed addresses, and its process while it runs.
struct ClusterNode {
    id: i32,
    data_dir: PathBuf,
    client_address: String,
    http_address: String,
    controller_address: String,
    /// A node added with [`Cluster::add_broker`]: broker role only, not a voter.
    broker_only: bool,
    server: Option<Server>,
    paused: bool,
}

/// Several `ferrolog server` processes (broker and controller roles) that form one metadata
/// quorum. Every node's client, HTTP and controller ports are picked once, so a node that is
/// killed and restarted comes back on the same addresses, as a real node would. Nodes are
/// named by their node id, 1 to n. The data directories live in a temporary directory the
/// cluster owns and removes.
pub struct Cluster {
    nodes: Vec<ClusterNode>,
    voters: String,
    extra_args: Vec<String>,
    /// Every node's `RUST_LOG` (see [`Cluster::log_also`]).
    server_log: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` voters (in parallel: each prints its ready line before a quorum exists)
    /// with `extra_args` added to every node's `ferrolog server` arguments.
    pub fn start(n: usize, extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut cluster = Self::configure(n, extra_args)?;
        let ids: Vec<i32> = cluster.ids();
        cluster.start_nodes(&ids)?;
        Ok(cluster)
    }

    /// Picks ports and directories for `n` voters without starting any of them.
    pub fn configure(n: usize, extra_args: &[&str]) -> anyhow::Result<Self> {
        anyhow::ensure!(n > 0, "a cluster has at least one node");
        let dir = tempfile::tempdir().context("create the cluster's temporary directory")?;
        let ports = free_ports(3 * n)?;
        let nodes: Vec<ClusterNode> = ports
            .chunks(3)
            .zip(1..)
            .map(|(p, id)| ClusterNode {
                id,
                data_dir: dir.path().join(format!("node-{id}")),
                client_address: format!("127.0.0.1:{}", p[0]),
                http_address: format!("127.0.0.1:{}", p[1]),
                controller_address: format!("127.0.0.1:{}", p[2]),
                broker_only: false,
                server: None,
                paused: false,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.controller_address))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            nodes,
            voters,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            server_log: server_log_filter(),
            _dir: dir,
        })
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Ids of the nodes that run and are not paused.
    pub fn live_ids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|n| n.server.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Adds `directive` (e.g. `ferrolog_metadata::raft::state_machine=info`) to the
    /// `RUST_LOG` of every node started from now on, so a test can wait for a log line the
    /// default filter (`FERROLOG_SERVER_LOG`, or warnings only) leaves out.
    pub fn log_also(&mut self, directive: &str) {
        self.server_log = format!("{},{directive}", self.server_log);
    }

    /// The `--controller-voters` value every node gets.
    pub fn voters(&self) -> &str {
        &self.voters
    }

    fn slot(&self, id: i32) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    fn slot_mut(&mut self, id: i32) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    /// The `ferrolog server` arguments of node `id`.
    fn server_args(&self, id: i32) -> Vec<String> {
        let node = self.slot(id);
        let roles = if node.broker_only {
            "broker"
        } else {
            "broker,controller"
        };
        let mut args: Vec<String> = [
            "--node-id",
            &id.to_string(),
            "--roles",
            roles,
            "--listen",
            &node.client_address,
            "--http-listen",
            &node.http_address,
            "--controller-voters",
            &self.voters,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if !node.broker_only {
            args.extend([
                "--controller-listen".to_owned(),
                node.controller_address.clone(),
            ]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts the given nodes, which must not be running, in parallel.
    pub fn start_nodes(&mut self, ids: &[i32]) -> anyhow::Result<()> {
        let jobs: Vec<(i32, PathBuf, Vec<String>)> = ids
            .iter()
            .map(|&id| {
                let node = self.slot(id);
                assert!(node.server.is_none(), "node {id} is already running");
                (id, node.data_dir.clone(), self.server_args(id))
            })
            .collect();
        let log_filter = self.server_log.as_str();
        let started: Vec<(i32, anyhow::Result<Server>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(id, dir, args)| {
                    scope.spawn(move || {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let label = format!("node {id}");
                        let started = Server::start_exact_logging(dir, &args, &label, log_filter);
                        (*id, started)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a node start thread does not panic"))
                .collect()
        });
        let mut first_error = None;
        for (id, result) in started {
            match result {
                Ok(server) => {
                    let node = self.slot_mut(id);
                    node.server = Some(server);
                    node.paused = false;
                }
                Err(error) => {
                    first_error.get_or_insert(error.context(format!("start node {id}")));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts one more node, with the broker role only (as when a cluster is scaled out:
    /// the controller quorum stays as it is), and returns its id.
    pub fn add_broker(&mut self) -> anyhow::Result<i32> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let ports = free_ports(3)?;
        let dir = self
            .nodes
            .first()
            .and_then(|n| n.data_dir.parent())
            .context("the cluster has a data directory")?
            .join(format!("node-{id}"));
        self.nodes.push(ClusterNode {
            id,
            data_dir: dir,
            client_address: format!("127.0.0.1:{}", ports[0]),
            http_address: format!("127.0.0.1:{}", ports[1]),
            controller_address: format!("127.0.0.1:{}", ports[2]),
            broker_only: true,
            server: None,
            paused: false,
        });
        self.start_node(id)?;
        Ok(id)
    }

    /// Starts node `id`, which must not be running.
    pub fn start_node(&mut self, id: i32) -> anyhow::Result<()> {
        self.start_nodes(&[id])
    }

    /// The running server of node `id`. Panics when the node is down.
    pub fn node(&self, id: i32) -> &Server {
        self.slot(id)
            .server
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Waits until node `id` answers `GET /ready` with 200: its broker is registered by
    /// this very process (after a restart, by the new one), unfenced and in every ISR it
    /// belongs to. Fails after `deadline` with the last reason it gave.
    pub fn wait_ready(&self, id: i32, deadline: Duration) -> anyhow::Result<()> {
        let address = self.node(id).http_address.clone();
        let mut last = String::new();
        wait_until(
            &format!("node {id} to be ready"),
            deadline,
            || match http_get(&address, "/ready") {
                Ok((200, _)) => Some(()),
                Ok((_, body)) => {
                    last = body.trim().to_owned();
                    None
                }
                Err(error) => {
                    last = format!("{error:#}");
                    None
                }
            },
        )
        .with_context(|| format!("last answer: {last}"))
    }

    /// Whether node `id` has a running (possibly paused) process.
    pub fn is_running(&self, id: i32) -> bool {
        self.slot(id).server.is_some()
    }

    /// Node `id`'s client (gRPC) address; it stays the same across restarts.
    pub fn address(&self, id: i32) -> &str {
        &self.slot(id).client_address
    }

    /// Node `id`'s controller (Raft) address.
    pub fn controller_address(&self, id: i32) -> &str {
        &self.slot(id).controller_address
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: i32) -> &Path {
        &self.slot(id).data_dir
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: i32) -> anyhow::Result<()> {
        let server = self
            .slot_mut(id)
            .server
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        self.slot_mut(id).paused = false;
        server.kill()?;
        Ok(())
    }

    /// SIGTERMs node `id` and waits (bounded) for it to exit.
    pub fn terminate(&mut self, id: i32) -> anyhow::Result<ExitStatus> {
        let server = self
            .slot_mut(id)
            .server
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        if self.slot(id).paused {
            server.resume();
            self.slot_mut(id).paused = false;
        }
        server.terminate()
    }

    /// Starts node `id` again on its data directory and ports, SIGKILLing it first if it
    /// still runs.
    pub fn restart(&mut self, id: i32) -> anyhow::Result<()> {
        if self.is_running(id) {
            self.kill(id)?;
        }
        self.start_node(id)
    }

    /// SIGSTOPs node `id`: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: i32) {
        self.node(id).pause();
        self.slot_mut(id).paused = true;
    }

    /// SIGCONTs a paused node.
    pub fn resume(&mut self, id: i32) {
        self.node(id).resume();
        self.slot_mut(id).paused = false;
    }

    /// Client addresses of every node, comma-separated, for `--brokers`.
    pub fn brokers_csv(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.client_address.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client addresses of the live nodes, comma-separated.
    pub fn live_brokers_csv(&self) -> String {
        self.live_ids()
            .into_iter()
            .map(|id| self.address(id).to_owned())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs a CLI command with node `id` as the only bootstrap broker.
    pub fn cli(&self, id: i32, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        run_cli(self.address(id), args, stdin)
    }

    /// Creates `topic` through node `via`, retrying (bounded) while brokers are still
    /// registering after a start.
    pub fn create_topic(
        &self,
        via: i32,
        topic: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> anyhow::Result<()> {
        self.create_topic_with(via, topic, partitions, replication_factor, &[])
    }

    /// [`Cluster::create_topic`] with topic configs (`KEY=VALUE`, Kafka names).
    pub fn create_topic_with(
        &self,
        via: i32,
        topic: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &[&str],
    ) -> anyhow::Result<()> {
        let (partitions, replication_factor) =
            (partitions.to_string(), replication_factor.to_string());
        let mut args = vec![
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions,
            "--replication-factor",
            &replication_factor,
        ];
        for config in configs {
            args.extend(["--config", config]);
        }
        let mut last_error = String::new();
        wait_until(
            "the topic is created",
            Duration::from_secs(30),
            || match self.cli(via, &args, None) {
                Ok(out) if out.status.success() => Some(()),
                Ok(out) => {
                    last_error = stderr(&out);
                    None
                }
                Err(error) => {
                    last_error = format!("{error:#}");
                    None
                }
            },
        )
        .with_context(|| format!("last error: {last_error}"))
    }

    /// `topic` as node `via` describes it (see [`describe::topic`]).
    pub fn describe(
        &self,
        via: i32,
        topic: &str,
    ) -> anyhow::Result<describe::DescribeTopicResponse> {
        describe::topic(self.address(via), topic)
    }

    /// The cluster status node `id` reports. Fails when the node cannot answer (e.g. it
    /// cannot reach a leader) within [`describe::STATUS_LIMIT`].
    pub fn status_via(&self, id: i32) -> anyhow::Result<describe::ClusterStatusResponse> {
        describe::cluster_status(self.address(id))
    }

    /// `group` as its coordinator describes it, found through node `via`.
    pub fn describe_group(
        &self,
        via: i32,
        group: &str,
    ) -> anyhow::Result<describe::DescribeGroupResponse> {
        describe::group(self.address(via), group)
    }

    /// Polls `cluster status` on the live nodes in turn until one names a leader that is
    /// itself live (a follower may still name a leader that was just killed), and returns
    /// its id.
    pub fn wait_for_leader(&self, deadline: Duration) -> anyhow::Result<i32> {
        let live = self.live_ids();
        anyhow::ensure!(!live.is_empty(), "no node of the cluster is running");
        let mut last_error = String::new();
        let mut turn = 0usize;
        let found = wait_until("a live controller leader", deadline, || {
            let id = live[turn % live.len()];
            turn += 1;
            match self.status_via(id) {
                Ok(status) => {
                    let leader = status.controller_leader;
                    if live.contains(&leader) {
                        Some(leader)
                    } else {
                        last_error = format!("node {id} names leader {leader}");
                        None
                    }
                }
                Err(error) => {
                    last_error = format!("{error:#}");
                    None
                }
            }
        });
        found.with_context(|| format!("last answer: {last_error}"))
    }
}

/// Sends `signal` to process `pid` (a child the test started); returns kill(2)'s result.
pub fn send_signal(pid: i32, signal: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, signal)
    }
}

/// A command's standard output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails the test, showing both streams, unless the command succeeded.
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "expected success\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}
