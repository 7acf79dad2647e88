//! `ferrolog server` configuration: every setting declared once ([`ServerSettings`]), read
//! from flags, their environment variables and a TOML file (`--config`), and resolved in one
//! place into the effective [`ServerConfig`]. A flag wins over its environment variable
//! (clap's rule), which wins over the file, which wins over the defaults below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ferrolog_broker::cleaner::{
    CleanerSettings, DEFAULT_CLEANER_BACKOFF, DEFAULT_CLEANER_IO_MAX_BYTES_PER_SECOND,
};
use ferrolog_broker::group::{self, GroupConfig};
use ferrolog_controller::liveness;
use ferrolog_log::{DEFAULT_DEDUPE_BUFFER_BYTES, FlushPolicy};
use ferrolog_metadata::TopicConfig;
use serde::Deserialize;

// What a node uses for a setting that no flag, environment variable or file key gives. The
// help text of each flag repeats its default.
const DEFAULT_NODE_ID: i32 = 1;
const DEFAULT_DATA_DIR: &str = "./ferrolog-data";
const DEFAULT_LISTEN: &str = "127.0.0.1:9290";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9280";
const DEFAULT_CONTROLLER_LISTEN: &str = "127.0.0.1:9293";
const DEFAULT_ROLES: Roles = Roles {
    broker: true,
    controller: true,
};
const DEFAULT_METADATA_SNAPSHOT_ENTRIES: u64 = 1000;
/// See [`ServerConfig::replica_lag_time_max_ms`] for why a third of Kafka's.
const DEFAULT_REPLICA_LAG_TIME_MAX_MS: u64 = 10_000;
/// How often `[log] flush_policy = "interval"` fsyncs when `flush_interval_ms` is not given.
const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1000;
const DEFAULT_INDEX_INTERVAL_BYTES: u32 = 4096;
const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Every `ferrolog server` setting. Each field is a flag, that flag's environment variable
/// (`FERROLOG_` and its name: how a container or a Kubernetes pod spec sets it) and a key of
/// the TOML config file (README "Configuration"), except the flag-only ones
/// (`#[serde(skip)]`, so the file refuses them) and the file-only sections (`#[arg(skip)]`).
/// Nothing here has a default: [`ServerSettings::resolve`] supplies them after the merge.
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Directory for partition logs and metadata [default: ./ferrolog-data]
    #[arg(long, env = "FERROLOG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC address for clients [default: 127.0.0.1:9290]; port 0 picks a free port.
    #[arg(long, env = "FERROLOG_LISTEN")]
    listen: Option<String>,
    /// HTTP address for /health, /ready and /metrics [default: 127.0.0.1:9280]
    #[arg(long, env = "FERROLOG_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// TOML configuration file (see README "Configuration")
    #[arg(long, value_name = "FILE", env = "FERROLOG_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// This node's id [default: 1]
    #[arg(long, env = "FERROLOG_NODE_ID")]
    node_id: Option<i32>,
    /// Take the node id from the ordinal the host name ends in (`ferrolog-2` is node 2), as a
    /// StatefulSet names its pods
    #[arg(
        long,
        env = "FERROLOG_NODE_ID_FROM_HOSTNAME",
        conflicts_with = "node_id"
    )]
    #[serde(skip)]
    node_id_from_hostname: bool,
    /// Address clients are told to use for this node [default: the bound gRPC address]
    #[arg(long, env = "FERROLOG_ADVERTISED_ADDRESS")]
    advertised_address: Option<String>,
    /// Roles of this node, comma-separated [default: broker,controller]
    #[arg(long, value_delimiter = ',', env = "FERROLOG_ROLES")]
    roles: Option<Vec<String>>,
    /// Address for Raft and controller traffic [default: 127.0.0.1:9293]
    #[arg(long, env = "FERROLOG_CONTROLLER_LISTEN")]
    controller_listen: Option<String>,
    /// Every controller voter as id@host:port, comma-separated, identical on every node
    /// [default: this node alone]
    #[arg(
        long,
        value_name = "ID@HOST:PORT,...",
        env = "FERROLOG_CONTROLLER_VOTERS"
    )]
    controller_voters: Option<String>,
    /// Run the controller role only if this node's id is among --controller-voters, else
    /// only the broker role: one StatefulSet whose first ordinals are the voters and whose
    /// later ordinals (scale-out) are brokers
    #[arg(long, env = "FERROLOG_CONTROLLER_IF_VOTER")]
    #[serde(skip)]
    controller_if_voter: bool,
    /// Snapshot the metadata log (and purge it) every this many entries [default: 1000]
    #[arg(long, env = "FERROLOG_METADATA_SNAPSHOT_ENTRIES")]
    metadata_snapshot_entries: Option<u64>,
    /// A follower not caught up for this long leaves the ISR [default: 10000]
    #[arg(long, value_name = "MS", env = "FERROLOG_REPLICA_LAG_TIME_MAX_MS")]
    replica_lag_time_max_ms: Option<u64>,
    /// How often this broker heartbeats to the active controller [default: 300]
    #[arg(long, value_name = "MS", env = "FERROLOG_BROKER_HEARTBEAT_INTERVAL_MS")]
    broker_heartbeat_interval_ms: Option<u64>,
    /// A broker silent this long is fenced and loses its leaderships (used by the active
    /// controller) [default: 1200]
    #[arg(long, value_name = "MS", env = "FERROLOG_BROKER_SESSION_TIMEOUT_MS")]
    broker_session_timeout_ms: Option<u64>,
    /// How often leaderships move back to preferred replicas; 0 never [default: 30000]
    #[arg(long, value_name = "MS", env = "FERROLOG_LEADER_REBALANCE_INTERVAL_MS")]
    leader_rebalance_interval_ms: Option<u64>,
    /// Partitions of __consumer_offsets when this node creates it [default: 50]
    #[arg(long, value_name = "N", env = "FERROLOG_OFFSETS_TOPIC_PARTITIONS")]
    offsets_topic_partitions: Option<u32>,
    /// A consumer-group member silent this long leaves its group [default: 10000]
    #[arg(long, value_name = "MS", env = "FERROLOG_GROUP_SESSION_TIMEOUT_MS")]
    group_session_timeout_ms: Option<u64>,
    /// How often consumer-group members heartbeat [default: 1000]
    #[arg(long, value_name = "MS", env = "FERROLOG_GROUP_HEARTBEAT_INTERVAL_MS")]
    group_heartbeat_interval_ms: Option<u64>,
    /// The log cleaner's I/O limit, bytes read plus written per second; 0 is no limit
    /// (Kafka's log.cleaner.io.max.bytes.per.second) [default: 67108864]
    #[arg(
        long,
        value_name = "BYTES",
        env = "FERROLOG_LOG_CLEANER_IO_MAX_BYTES_PER_SECOND"
    )]
    log_cleaner_io_max_bytes_per_second: Option<u64>,
    /// Memory for one cleaning's key -> offset map (Kafka's log.cleaner.dedupe.buffer.size)
    /// [default: 134217728]
    #[arg(
        long,
        value_name = "BYTES",
        env = "FERROLOG_LOG_CLEANER_DEDUPE_BUFFER_BYTES"
    )]
    log_cleaner_dedupe_buffer_bytes: Option<u64>,
    /// The log cleaner's pause when no compacted log needs cleaning (Kafka's
    /// log.cleaner.backoff.ms) [default: 15000]
    #[arg(long, value_name = "MS", env = "FERROLOG_LOG_CLEANER_BACKOFF_MS")]
    log_cleaner_backoff_ms: Option<u64>,
    /// `[log]`: broker-wide storage settings.
    #[arg(skip)]
    #[serde(default)]
    log: LogSection,
    /// `[topic_defaults]`: defaults for every topic, under Kafka's names
    /// (`"retention.ms" = "3600000"`).
    #[arg(skip)]
    #[serde(default)]
    topic_defaults: BTreeMap<String, toml::Value>,
}

/// `[log]`: broker-wide storage settings, in the config file only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    /// `every` (default: fsync before acknowledging), `interval`, or `os`.
    flush_policy: Option<String>,
    flush_interval_ms: Option<u64>,
    index_interval_bytes: Option<u32>,
    maintenance_interval_ms: Option<u64>,
}

impl ServerSettings {
    /// The effective configuration: these settings (flags and their environment variables)
    /// over the config file they name, over the defaults; checked.
    pub fn resolve(self) -> anyhow::Result<ServerConfig> {
        match self.config.clone() {
            Some(path) => {
                let file = read_file(&path)?;
                self.over(Some((file, &path)))
            }
            None => self.over(None),
        }
    }

    /// Merges these settings over a config file's, setting by setting, then applies the
    /// defaults and checks the result: the one place where settings are merged, defaulted and
    /// checked.
    fn over(self, file: Option<(ServerSettings, &Path)>) -> anyhow::Result<ServerConfig> {
        let flags = self;
        let (file, path) = match file {
            Some((settings, path)) => (settings, Some(path)),
            None => (ServerSettings::default(), None),
        };
        // The flag's value (clap has already preferred it to its environment variable), else
        // the file's, with where it came from for error messages.
        macro_rules! given {
            ($key:ident) => {
                Given::pick(stringify!($key), flags.$key, file.$key, path)
            };
        }
        let node_id = if flags.node_id_from_hostname {
            node_id_from_hostname(&hostname()?)?
        } else {
            given!(node_id)
                .check(
                    |v| *v >= 0,
                    |name, v| format!("{name} must be >= 0, got {v}"),
                )?
                .or(DEFAULT_NODE_ID)
        };
        let controller_voters = given!(controller_voters).parse(|spec| parse_voters(&spec))?;
        let mut roles = given!(roles)
            .parse(|names| parse_roles(&names))?
            .unwrap_or(DEFAULT_ROLES);
        if flags.controller_if_voter && roles.controller {
            let voter = controller_voters
                .as_ref()
                .is_none_or(|voters| voters.contains_key(&(node_id as u64)));
            if !voter {
                anyhow::ensure!(
                    roles.broker,
                    "node {node_id} is not among --controller-voters and has no broker role, so \
                     with --controller-if-voter it would run nothing"
                );
                roles.controller = false;
            }
        }
        let broker_heartbeat_interval_ms = given!(broker_heartbeat_interval_ms)
            .or(liveness::DEFAULT_HEARTBEAT_INTERVAL.as_millis() as u64);
        let broker_session_timeout_ms = given!(broker_session_timeout_ms)
            .or(liveness::DEFAULT_SESSION_TIMEOUT.as_millis() as u64);
        anyhow::ensure!(
            broker_heartbeat_interval_ms > 0
                && broker_heartbeat_interval_ms.saturating_mul(2) <= broker_session_timeout_ms,
            "the broker session timeout ({broker_session_timeout_ms} ms) must be at least twice \
             the heartbeat interval ({broker_heartbeat_interval_ms} ms), or a live broker is \
             fenced after one late heartbeat"
        );
        let group_session_timeout = given!(group_session_timeout_ms)
            .check(is_positive, |_, _| {
                "group session timeout must be > 0".to_owned()
            })?;
        let group_heartbeat_interval = given!(group_heartbeat_interval_ms)
            .check(is_positive, |_, _| {
                "group heartbeat interval must be > 0".to_owned()
            })?;
        // Blamed on the file when it set one of the two and no flag set the other.
        let group_timings_file = match (
            group_session_timeout.source(),
            group_heartbeat_interval.source(),
        ) {
            (Some(Source::Flag), _) | (_, Some(Source::Flag)) => None,
            (Some(Source::File(path)), _) | (_, Some(Source::File(path))) => Some(path),
            (None, None) => None,
        };
        let groups = GroupConfig {
            offsets_partitions: given!(offsets_topic_partitions)
                .check(
                    |v| (1..=ferrolog_controller::MAX_PARTITIONS_PER_TOPIC).contains(v),
                    |_, v| {
                        format!(
                            "offsets topic partitions must be between 1 and {}, got {v}",
                            ferrolog_controller::MAX_PARTITIONS_PER_TOPIC
                        )
                    },
                )?
                .or(group::DEFAULT_OFFSETS_PARTITIONS),
            session_timeout: group_session_timeout.millis_or(group::DEFAULT_SESSION_TIMEOUT),
            heartbeat_interval: group_heartbeat_interval
                .millis_or(group::DEFAULT_HEARTBEAT_INTERVAL),
        };
        if groups.heartbeat_interval >= groups.session_timeout {
            return Err(in_file(
                group_timings_file,
                anyhow::anyhow!(
                    "the group heartbeat interval ({} ms) must be shorter than the group session \
                     timeout ({} ms)",
                    groups.heartbeat_interval.as_millis(),
                    groups.session_timeout.as_millis()
                ),
            ));
        }
        let log = file.log;
        let flush_policy = parse_flush_policy(log.flush_policy.as_deref(), log.flush_interval_ms)
            .map_err(|error| in_file(path, error))?;
        let topic_defaults = parse_topic_defaults(file.topic_defaults)
            .context("[topic_defaults]")
            .map_err(|error| in_file(path, error))?;

        Ok(ServerConfig {
            node_id,
            data_dir: given!(data_dir).or(PathBuf::from(DEFAULT_DATA_DIR)),
            listen: given!(listen).or(DEFAULT_LISTEN.to_owned()),
            http_listen: given!(http_listen).or(DEFAULT_HTTP_LISTEN.to_owned()),
            advertised_address: given!(advertised_address).value,
            roles,
            controller_listen: given!(controller_listen).or(DEFAULT_CONTROLLER_LISTEN.to_owned()),
            controller_voters,
            metadata_snapshot_entries: given!(metadata_snapshot_entries)
                .check(is_positive, must_be_positive)?
                .or(DEFAULT_METADATA_SNAPSHOT_ENTRIES),
            flush_policy,
            index_interval_bytes: Given::in_file(
                "log.index_interval_bytes",
                log.index_interval_bytes,
                path,
            )
            .check(is_positive, must_be_positive)?
            .or(DEFAULT_INDEX_INTERVAL_BYTES),
            maintenance_interval: Given::in_file(
                "log.maintenance_interval_ms",
                log.maintenance_interval_ms,
                path,
            )
            .check(is_positive, must_be_positive)?
            .millis_or(DEFAULT_MAINTENANCE_INTERVAL),
            topic_defaults,
            replica_lag_time_max_ms: given!(replica_lag_time_max_ms)
                .check(is_positive, must_be_positive)?
                .or(DEFAULT_REPLICA_LAG_TIME_MAX_MS),
            broker_heartbeat_interval_ms,
            broker_session_timeout_ms,
            leader_rebalance_interval_ms: given!(leader_rebalance_interval_ms)
                .or(ferrolog_controller::DEFAULT_LEADER_REBALANCE_INTERVAL.as_millis() as u64),
            groups,
            cleaner: CleanerSettings {
                enabled: true,
                io_max_bytes_per_second: Some(
                    given!(log_cleaner_io_max_bytes_per_second)
                        .or(DEFAULT_CLEANER_IO_MAX_BYTES_PER_SECOND),
                )
                .filter(|rate| *rate > 0),
                dedupe_buffer_bytes: given!(log_cleaner_dedupe_buffer_bytes)
                    .check(is_positive, must_be_positive)?
                    .or(DEFAULT_DEDUPE_BUFFER_BYTES as u64)
                    as usize,
                backoff: given!(log_cleaner_backoff_ms)
                    .check(is_positive, must_be_positive)?
                    .millis_or(DEFAULT_CLEANER_BACKOFF),
            },
        })
    }
}

/// Whether a count or a duration in milliseconds is above zero.
fn is_positive<T: PartialEq + Default>(value: &T) -> bool {
    *value != T::default()
}

/// The error for a setting that must be above zero.
fn must_be_positive<T>(name: &str, _: &T) -> String {
    format!("{name} must be > 0")
}

/// Reads a TOML config file. Unknown keys are refused, so a misspelt one is not ignored.
fn read_file(path: &Path) -> anyhow::Result<ServerSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))
}

/// One setting as given, if it was, and where: an error about it names what the user wrote
/// (`--node-id` for a flag or its environment variable, `node_id` in the file) and the file.
struct Given<'a, T> {
    key: &'static str,
    value: Option<T>,
    /// The config file, when the value came from it.
    file: Option<&'a Path>,
}

impl<'a, T> Given<'a, T> {
    /// The flag's value if there is one, else the file's.
    fn pick(key: &'static str, flag: Option<T>, file: Option<T>, path: Option<&'a Path>) -> Self {
        match flag {
            Some(value) => Self {
                key,
                value: Some(value),
                file: None,
            },
            None => Self::in_file(key, file, path),
        }
    }

    /// A setting that only the config file has.
    fn in_file(key: &'static str, value: Option<T>, path: Option<&'a Path>) -> Self {
        Self {
            key,
            value,
            file: path,
        }
    }

    /// Where the value came from, if it was given.
    fn source(&self) -> Option<Source<'a>> {
        match (&self.value, self.file) {
            (None, _) => None,
            (Some(_), None) => Some(Source::Flag),
            (Some(_), Some(path)) => Some(Source::File(path)),
        }
    }

    /// The setting as the user wrote it.
    fn name(&self) -> String {
        match self.file {
            Some(_) => self.key.to_owned(),
            None => format!("--{}", self.key.replace('_', "-")),
        }
    }

    /// Refuses a given value for which `valid` does not hold, saying `problem(name, value)`.
    fn check(
        self,
        valid: impl FnOnce(&T) -> bool,
        problem: impl FnOnce(&str, &T) -> String,
    ) -> anyhow::Result<Self> {
        match &self.value {
            Some(value) if !valid(value) => Err(in_file(
                self.file,
                anyhow::anyhow!(problem(&self.name(), value)),
            )),
            _ => Ok(self),
        }
    }

    /// Converts a given value, naming the config file in the error if it came from there.
    fn parse<R>(self, parse: impl FnOnce(T) -> anyhow::Result<R>) -> anyhow::Result<Option<R>> {
        let file = self.file;
        self.value
            .map(parse)
            .transpose()
            .map_err(|error| in_file(file, error))
    }

    /// The given value, else the default.
    fn or(self, default: T) -> T {
        self.value.unwrap_or(default)
    }
}

/// Where a given setting came from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A flag or its environment variable.
    Flag,
    File(&'a Path),
}

impl Given<'_, u64> {
    /// The given milliseconds, else the default.
    fn millis_or(self, default: Duration) -> Duration {
        self.value.map_or(default, Duration::from_millis)
    }
}

/// Says which config file an error is about, when it is about one.
fn in_file(file: Option<&Path>, error: anyhow::Error) -> anyhow::Error {
    match file {
        Some(path) => error.context(format!("config file {}", path.display())),
        None => error,
    }
}

/// Parses `[log] flush_policy` (and `flush_interval_ms`, which only `interval` reads).
fn parse_flush_policy(
    policy: Option<&str>,
    interval_ms: Option<u64>,
) -> anyhow::Result<FlushPolicy> {
    let interval_ms = interval_ms.unwrap_or(DEFAULT_FLUSH_INTERVAL_MS);
    Ok(match policy {
        None | Some("every") => FlushPolicy::EveryAppend,
        Some("interval") if interval_ms > 0 => FlushPolicy::Interval { interval_ms },
        Some("interval") => bail!("log.flush_interval_ms must be > 0"),
        Some("os") => FlushPolicy::Os,
        Some(other) => {
            bail!("log.flush_policy must be \"every\", \"interval\" or \"os\", got {other:?}")
        }
    })
}

/// Applies `[topic_defaults]` to the built-in topic defaults. A value may be a TOML string
/// or a bare number or boolean, as `"retention.ms" = 3600000`.
fn parse_topic_defaults(table: BTreeMap<String, toml::Value>) -> anyhow::Result<TopicConfig> {
    let overrides: BTreeMap<String, String> = table
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            (name, value)
        })
        .collect();
    Ok(TopicConfig::default().with_overrides(&overrides)?)
}

/// Which parts of a node run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub broker: bool,
    pub controller: bool,
}

/// Parses role names (`broker`, `controller`).
fn parse_roles(names: &[String]) -> anyhow::Result<Roles> {
    let mut roles = Roles {
        broker: false,
        controller: false,
    };
    for name in names.iter().map(|n| n.trim()) {
        match name {
            "broker" => roles.broker = true,
            "controller" => roles.controller = true,
            other => bail!("unknown role '{other}': roles are broker and controller"),
        }
    }
    anyhow::ensure!(
        roles.broker || roles.controller,
        "a node needs at least one role"
    );
    Ok(roles)
}

/// Parses `1@host:port,2@host:port`.
pub fn parse_voters(spec: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut voters = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, address) = entry
            .split_once('@')
            .with_context(|| format!("invalid voter '{entry}': expected ID@HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("invalid voter '{entry}': '{id}' is not a node id"))?;
        anyhow::ensure!(
            address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
            "invalid voter '{entry}': '{address}' is not HOST:PORT"
        );
        if voters.insert(id, address.to_owned()).is_some() {
            bail!("node id {id} appears twice in the controller voters");
        }
    }
    anyhow::ensure!(!voters.is_empty(), "the controller voters list is empty");
    Ok(voters)
}

/// Where `--node-id-from-hostname` reads the host name; `HOSTNAME` is the fallback.
const KERNEL_HOSTNAME: &str = "/proc/sys/kernel/hostname";

/// This host's name: the kernel's (what a Kubernetes pod is named), else `$HOSTNAME`.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string(KERNEL_HOSTNAME)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty());
    name.with_context(|| format!("cannot read the host name ({KERNEL_HOSTNAME}, $HOSTNAME)"))
}

/// The node id of a StatefulSet pod: the ordinal its name ends in (`ferrolog-2` is node 2).
/// A fully qualified name counts by its first label.
fn node_id_from_hostname(hostname: &str) -> anyhow::Result<i32> {
    let label = hostname.split('.').next().unwrap_or_default();
    let ordinal = label
        .rsplit_once('-')
        .filter(|(prefix, ordinal)| {
            !prefix.is_empty() && !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|(_, ordinal)| ordinal.parse::<i32>().ok());
    ordinal.with_context(|| {
        format!(
            "--node-id-from-hostname: host name '{hostname}' does not end in -N (a StatefulSet \
             pod ordinal such as ferrolog-0); give --node-id instead"
        )
    })
}

/// The effective configuration of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: String,
    pub http_listen: String,
    pub advertised_address: Option<String>,
    pub roles: Roles,
    pub controller_listen: String,
    pub controller_voters: Option<BTreeMap<u64, String>>,
    pub metadata_snapshot_entries: u64,
    pub flush_policy: FlushPolicy,
    pub index_interval_bytes: u32,
    pub maintenance_interval: Duration,
    pub topic_defaults: TopicConfig,
    /// Kafka's `replica.lag.time.max.ms`. 10 s, a third of Kafka's 30 s: a dead follower
    /// stalls acks=all writes until it leaves the ISR, and Ferrolog's followers fetch
    /// continuously (500 ms long polls), so a live one is never near this.
    pub replica_lag_time_max_ms: u64,
    /// See ferrolog_controller::liveness for why these defaults.
    pub broker_heartbeat_interval_ms: u64,
    pub broker_session_timeout_ms: u64,
    /// 0 disables moving leaderships back to preferred replicas.
    pub leader_rebalance_interval_ms: u64,
    /// Consumer groups: see ferrolog_broker::group for why these defaults.
    pub groups: GroupConfig,
    /// The log cleaner: see ferrolog_broker::cleaner for why these defaults.
    pub cleaner: CleanerSettings,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `ferrolog server`'s flags alone.
    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        settings: ServerSettings,
    }

    /// What `ferrolog server FLAGS --config test.toml` resolves to, with `file` in test.toml.
    fn resolve(flags: &[&str], file: &str) -> anyhow::Result<ServerConfig> {
        let flags =
            Flags::try_parse_from(std::iter::once("server").chain(flags.iter().copied()))?.settings;
        let file: ServerSettings = toml::from_str(file).context("parse config file test.toml")?;
        flags.over(Some((file, Path::new("test.toml"))))
    }

    fn error_of(flags: &[&str], file: &str) -> String {
        let error = resolve(flags, file).expect_err("refused");
        format!("{error:#}")
    }

    #[test]
    fn with_nothing_given_every_setting_is_its_default() {
        let config = resolve(&[], "").expect("valid");
        assert_eq!(config.node_id, 1);
        assert_eq!(config.data_dir, PathBuf::from("./ferrolog-data"));
        assert_eq!(config.listen, "127.0.0.1:9290");
        assert_eq!(config.http_listen, "127.0.0.1:9280");
        assert_eq!(config.controller_listen, "127.0.0.1:9293");
        assert_eq!(config.advertised_address, None);
        assert_eq!(config.roles, DEFAULT_ROLES);
        assert_eq!(config.controller_voters, None);
        assert_eq!(config.metadata_snapshot_entries, 1000);
        assert_eq!(config.flush_policy, FlushPolicy::EveryAppend);
        assert_eq!(config.index_interval_bytes, 4096);
        assert_eq!(config.maintenance_interval, Duration::from_secs(30));
        assert_eq!(config.replica_lag_time_max_ms, 10_000);
        assert_eq!(config.broker_heartbeat_interval_ms, 300);
        assert_eq!(config.broker_session_timeout_ms, 1200);
        assert_eq!(config.leader_rebalance_interval_ms, 30_000);
        assert_eq!(config.groups.offsets_partitions, 50);
        assert_eq!(config.groups.session_timeout, Duration::from_secs(10));
        assert_eq!(config.groups.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(
            config.topic_defaults.segment_bytes,
            TopicConfig::default().segment_bytes
        );
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let config = resolve(
            &[
                "--node-id",
                "4",
                "--roles",
                "broker",
                "--group-session-timeout-ms",
                "20000",
            ],
            r#"
            node_id = 3
            listen = "0.0.0.0:9290"
            roles = ["controller"]
            group_session_timeout_ms = 15000
            "#,
        )
        .expect("valid");
        assert_eq!(config.node_id, 4);
        assert_eq!(
            config.roles,
            Roles {
                broker: true,
                controller: false
            }
        );
        assert_eq!(config.groups.session_timeout, Duration::from_secs(20));
        assert_eq!(config.listen, "0.0.0.0:9290");
        assert_eq!(config.http_listen, DEFAULT_HTTP_LISTEN);
    }

    /// Marks the child process of the environment-variable test.
    const ENV_CHILD: &str = "FERROLOG_CONFIG_TEST_ENV_CHILD";

    /// Environment variables need a process of their own: setting one in this process is
    /// unsafe (edition 2024) and races the tests that run beside it. This test runs the one
    /// below in a child process of this test binary, with the variables set.
    #[test]
    fn a_flag_beats_its_environment_variable_which_beats_the_file_which_beats_the_default() {
        let tests = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_crate, path)| path);
        let child_test = format!("{tests}::environment_variables_in_a_child_process");
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", &child_test, "--test-threads", "1"])
            .env(ENV_CHILD, "1")
            .env("FERROLOG_LISTEN", "env:9290")
            .env("FERROLOG_HTTP_LISTEN", "env:9280")
            .env("FERROLOG_NODE_ID", "5")
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{child_test}:\n{stdout}\n{stderr}"
        );
    }

    #[test]
    fn environment_variables_in_a_child_process() {
        if std::env::var_os(ENV_CHILD).is_none() {
            return;
        }
        let config = resolve(
            &["--listen", "flag:9290"],
            r#"
            node_id = 3
            listen = "file:9290"
            http_listen = "file:9280"
            controller_listen = "file:9293"
            "#,
        )
        .expect("valid");
        assert_eq!(config.listen, "flag:9290", "a flag beats its variable");
        assert_eq!(config.http_listen, "env:9280", "a variable beats the file");
        assert_eq!(config.node_id, 5, "a variable beats the file");
        assert_eq!(
            config.controller_listen, "file:9293",
            "the file beats the default"
        );
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn a_full_file_overrides_every_default() {
        let config = resolve(
            &[],
            r#"
            node_id = 3
            data_dir = "/var/lib/ferrolog"
            listen = "0.0.0.0:9290"
            roles = ["broker", "controller"]
            controller_voters = "3@a:9293"
            broker_heartbeat_interval_ms = 500
            broker_session_timeout_ms = 3000
            [log]
            flush_policy = "interval"
            flush_interval_ms = 250
            index_interval_bytes = 1024
            maintenance_interval_ms = 200
            [topic_defaults]
            "retention.ms" = 3600000
            "segment.bytes" = "1048576"
            "#,
        )
        .expect("valid");
        assert_eq!(config.node_id, 3);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/ferrolog"));
        assert_eq!(config.controller_voters.expect("given").len(), 1);
        assert_eq!(config.broker_session_timeout_ms, 3000);
        assert_eq!(
            config.flush_policy,
            FlushPolicy::Interval { interval_ms: 250 }
        );
        assert_eq!(config.index_interval_bytes, 1024);
        assert_eq!(config.maintenance_interval, Duration::from_millis(200));
        assert_eq!(config.topic_defaults.retention_ms, Some(3_600_000));
        assert_eq!(config.topic_defaults.segment_bytes, 1_048_576);
    }

    #[test]
    fn given_an_unknown_key_in_the_file_then_it_is_refused_naming_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("ferrolog.toml");
        std::fs::write(&path, "nodeid = 3\n").expect("write config file");
        let config = path.to_str().expect("a UTF-8 path");
        let flags = Flags::try_parse_from(["server", "--config", config]).expect("valid flags");
        let error = format!("{:#}", flags.settings.resolve().expect_err("refused"));
        assert!(
            error.contains(&format!("parse config file {config}")),
            "{error}"
        );
        assert!(error.contains("unknown field `nodeid`"), "{error}");
        // Flag-only settings are not file keys.
        for key in [
            "config = \"x\"",
            "node_id_from_hostname = true",
            "controller_if_voter = true",
        ] {
            assert!(toml::from_str::<ServerSettings>(key).is_err(), "{key}");
        }
        assert!(toml::from_str::<ServerSettings>("[log]\nflush = \"os\"").is_err());
    }

    #[test]
    fn an_error_names_the_setting_as_the_user_gave_it() {
        assert_eq!(
            error_of(&["--node-id=-1"], "node_id = 2"),
            "--node-id must be >= 0, got -1"
        );
        assert_eq!(
            error_of(&[], "node_id = -2"),
            "config file test.toml: node_id must be >= 0, got -2"
        );
        assert_eq!(
            error_of(&["--metadata-snapshot-entries", "0"], ""),
            "--metadata-snapshot-entries must be > 0"
        );
        assert_eq!(
            error_of(&[], "replica_lag_time_max_ms = 0"),
            "config file test.toml: replica_lag_time_max_ms must be > 0"
        );
        assert_eq!(
            error_of(&["--roles", "broker,cook"], ""),
            "unknown role 'cook': roles are broker and controller"
        );
        assert_eq!(
            error_of(&[], "roles = []"),
            "config file test.toml: a node needs at least one role"
        );
        assert!(
            error_of(&[], "controller_voters = \"1@a\"")
                .starts_with("config file test.toml: invalid voter '1@a'")
        );
        assert_eq!(
            error_of(&[], "[log]\nindex_interval_bytes = 0"),
            "config file test.toml: log.index_interval_bytes must be > 0"
        );
        assert_eq!(
            error_of(
                &[],
                "[log]\nflush_policy = \"interval\"\nflush_interval_ms = 0"
            ),
            "config file test.toml: log.flush_interval_ms must be > 0"
        );
        assert_eq!(
            error_of(&["--offsets-topic-partitions", "0"], ""),
            "offsets topic partitions must be between 1 and 4096, got 0"
        );
        assert!(
            error_of(
                &["--group-heartbeat-interval-ms", "20000"],
                "group_session_timeout_ms = 5"
            )
            .starts_with("the group heartbeat interval (20000 ms) must be shorter")
        );
        assert!(error_of(&[], "group_session_timeout_ms = 500").starts_with(
            "config file test.toml: the group heartbeat interval (1000 ms) must be shorter"
        ));
        assert!(
            error_of(&["--broker-session-timeout-ms", "500"], "")
                .starts_with("the broker session timeout (500 ms) must be at least twice")
        );
    }

    #[test]
    fn given_controller_if_voter_when_not_a_voter_then_only_the_broker_runs() {
        let config = resolve(
            &[
                "--node-id",
                "4",
                "--controller-if-voter",
                "--controller-voters",
                "1@a:9293",
            ],
            "",
        )
        .expect("valid");
        assert!(config.roles.broker && !config.roles.controller);
        let error = error_of(
            &[
                "--node-id",
                "4",
                "--controller-if-voter",
                "--roles",
                "controller",
            ],
            "controller_voters = \"1@a:9293\"",
        );
        assert!(error.contains("it would run nothing"), "{error}");
    }

    #[test]
    fn voters_parse_and_bad_lists_are_refused() {
        let voters = parse_voters("1@a:9293, 2@b:9293,3@c:9293").expect("valid");
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[&2], "b:9293");
        for bad in ["", "1@a", "x@a:1", "1@a:1,1@b:2", "1a:9293", "1@:9293"] {
            assert!(parse_voters(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn given_a_statefulset_pod_name_when_parsed_then_its_ordinal_is_the_node_id() {
        assert_eq!(node_id_from_hostname("ferrolog-0").expect("ordinal"), 0);
        assert_eq!(node_id_from_hostname("ferrolog-12").expect("ordinal"), 12);
        assert_eq!(
            node_id_from_hostname("my-ferrolog-cluster-3").expect("ordinal"),
            3
        );
        assert_eq!(
            node_id_from_hostname("ferrolog-2.ferrolog-headless.prod.svc").expect("ordinal"),
            2
        );
    }

    #[test]
    fn given_a_host_name_without_an_ordinal_when_parsed_then_the_error_says_so() {
        for bad in [
            "",
            "ferrolog",
            "ferrolog-",
            "-3",
            "ferrolog-x",
            "ferrolog-1a",
            "ferrolog-99999999999",
            "ferrolog.svc-1",
        ] {
            let error = node_id_from_hostname(bad).expect_err(bad);
            assert!(
                format!("{error:#}").contains("does not end in -N"),
                "{bad}: {error:#}"
            );
        }
    }

    #[test]
    fn malformed_values_and_unknown_keys_are_refused() {
        for text in [
            "nodeid = 3",
            "node_id = \"three\"",
            "[log]\nflush_policy = \"sometimes\"",
            "[topic_defaults]\n\"retention.ms\" = \"soon\"",
            "[topic_defaults]\n\"bogus.config\" = 1",
        ] {
            let err = resolve(&[], text).expect_err(text);
            assert!(!format!("{err:#}").is_empty());
        }
    }
}
