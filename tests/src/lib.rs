//! The harness of the whole-cluster tests: starts real `ferrolog` processes on loopback
//! ports they pick themselves, kills (SIGKILL), stops (SIGTERM), pauses (SIGSTOP) and
//! restarts them, and runs the CLI as a user would.
//!
//! The binary is found through `FERROLOG_BIN`, or next to the test executable in the
//! cargo target directory; `scripts/test.sh` builds it before the tests run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
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

/// Installs a test log subscriber once (RUST_LOG controls it).
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

/// A running `ferrolog server` process.
pub struct Server {
    child: Child,
    pub data_dir: PathBuf,
    pub grpc_address: String,
    pub http_address: String,
    extra_args: Vec<String>,
}

impl Server {
    /// Starts a single-node server on free loopback ports with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, &[])
    }

    /// Like [`Server::start`] with extra `ferrolog server` arguments.
    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let extra_args: Vec<String> = extra_args.iter().map(|s| (*s).to_owned()).collect();
        let mut child = Command::new(ferrolog_bin())
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(&extra_args)
            .env(
                "RUST_LOG",
                std::env::var("FERROLOG_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn ferrolog server")?;
        let stdout = child.stdout.take().context("server stdout")?;
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
                bail!("server did not become ready within {STARTUP_DEADLINE:?} (exit: {status:?})");
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
            extra_args,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
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

    /// Restarts a server on the same data directory (new ports).
    pub fn restart_after_kill(self) -> anyhow::Result<Self> {
        let args = self.extra_args.clone();
        let dir = self.kill()?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with(&dir, &args)
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

/// Runs `ferrolog <args>` with `--brokers` from FERROLOG_BROKERS, bounded to 60 s.
pub fn run_cli(brokers: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
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
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => Ok(output?),
        Err(_) => {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            bail!("`ferrolog {}` did not finish within 60 s", args.join(" "))
        }
    }
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
