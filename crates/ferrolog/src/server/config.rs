//! `ferrolog server` configuration: defaults, overlaid by a TOML file (`--config`),
//! overlaid by flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ferrolog_broker::group::GroupConfig;
use ferrolog_log::FlushPolicy;
use ferrolog_metadata::TopicConfig;
use serde::Deserialize;

/// The server's configuration file. Every key is optional; see README "Configuration".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub node_id: Option<i32>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub http_listen: Option<String>,
    pub advertised_address: Option<String>,
    pub roles: Option<Vec<String>>,
    pub controller_listen: Option<String>,
    /// `"1@host:9293,2@host:9293,3@host:9293"`
    pub controller_voters: Option<String>,
    pub metadata_snapshot_entries: Option<u64>,
    pub replica_lag_time_max_ms: Option<u64>,
    pub broker_heartbeat_interval_ms: Option<u64>,
    pub broker_session_timeout_ms: Option<u64>,
    pub leader_rebalance_interval_ms: Option<u64>,
    pub offsets_topic_partitions: Option<u32>,
    pub group_session_timeout_ms: Option<u64>,
    pub group_heartbeat_interval_ms: Option<u64>,
    #[serde(default)]
    pub log: LogSection,
    /// Defaults for every topic, under Kafka's names (`"retention.ms" = "3600000"`).
    #[serde(default)]
    pub topic_defaults: BTreeMap<String, toml::Value>,
}

/// `[log]`: broker-wide storage settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `every` (default: fsync before acknowledging), `interval`, or `os`.
    pub flush_policy: Option<String>,
    pub flush_interval_ms: Option<u64>,
    pub index_interval_bytes: Option<u32>,
    pub maintenance_interval_ms: Option<u64>,
}

/// Which parts of a node run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub broker: bool,
    pub controller: bool,
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
pub fn hostname() -> anyhow::Result<String> {
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
pub fn node_id_from_hostname(hostname: &str) -> anyhow::Result<i32> {
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./ferrolog-data"),
            listen: "127.0.0.1:9290".to_owned(),
            http_listen: "127.0.0.1:9280".to_owned(),
            advertised_address: None,
            roles: Roles {
                broker: true,
                controller: true,
            },
            controller_listen: "127.0.0.1:9293".to_owned(),
            controller_voters: None,
            metadata_snapshot_entries: 1000,
            flush_policy: FlushPolicy::EveryAppend,
            index_interval_bytes: 4096,
            maintenance_interval: Duration::from_secs(30),
            topic_defaults: TopicConfig::default(),
            replica_lag_time_max_ms: 10_000,
            broker_heartbeat_interval_ms: ferrolog_controller::liveness::DEFAULT_HEARTBEAT_INTERVAL
                .as_millis() as u64,
            broker_session_timeout_ms: ferrolog_controller::liveness::DEFAULT_SESSION_TIMEOUT
                .as_millis() as u64,
            leader_rebalance_interval_ms: ferrolog_controller::DEFAULT_LEADER_REBALANCE_INTERVAL
                .as_millis() as u64,
            groups: GroupConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Applies the consumer-group settings that are given.
    pub fn set_group_settings(
        &mut self,
        offsets_topic_partitions: Option<u32>,
        session_timeout_ms: Option<u64>,
        heartbeat_interval_ms: Option<u64>,
    ) -> anyhow::Result<()> {
        if let Some(v) = offsets_topic_partitions {
            anyhow::ensure!(
                (1..=ferrolog_controller::MAX_PARTITIONS_PER_TOPIC).contains(&v),
                "offsets topic partitions must be between 1 and {}, got {v}",
                ferrolog_controller::MAX_PARTITIONS_PER_TOPIC
            );
            self.groups.offsets_partitions = v;
        }
        if let Some(v) = session_timeout_ms {
            anyhow::ensure!(v > 0, "group session timeout must be > 0");
            self.groups.session_timeout = Duration::from_millis(v);
        }
        if let Some(v) = heartbeat_interval_ms {
            anyhow::ensure!(v > 0, "group heartbeat interval must be > 0");
            self.groups.heartbeat_interval = Duration::from_millis(v);
        }
        anyhow::ensure!(
            self.groups.heartbeat_interval < self.groups.session_timeout,
            "the group heartbeat interval ({} ms) must be shorter than the group session \
             timeout ({} ms)",
            self.groups.heartbeat_interval.as_millis(),
            self.groups.session_timeout.as_millis()
        );
        Ok(())
    }

    /// Sets the roles from names (`broker`, `controller`).
    pub fn set_roles(&mut self, names: &[String]) -> anyhow::Result<()> {
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
        self.roles = roles;
        Ok(())
    }

    /// Reads and applies a TOML config file.
    pub fn apply_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("parse config file {}", path.display()))?;
        self.apply(file)
            .with_context(|| format!("config file {}", path.display()))
    }

    fn apply(&mut self, file: ConfigFile) -> anyhow::Result<()> {
        if let Some(v) = file.node_id {
            if v < 0 {
                bail!("node_id must be >= 0, got {v}");
            }
            self.node_id = v;
        }
        if let Some(v) = file.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = file.listen {
            self.listen = v;
        }
        if let Some(v) = file.http_listen {
            self.http_listen = v;
        }
        if let Some(v) = file.advertised_address {
            self.advertised_address = Some(v);
        }
        if let Some(v) = file.roles {
            self.set_roles(&v)?;
        }
        if let Some(v) = file.controller_listen {
            self.controller_listen = v;
        }
        if let Some(v) = file.controller_voters {
            self.controller_voters = Some(parse_voters(&v)?);
        }
        if let Some(v) = file.metadata_snapshot_entries {
            anyhow::ensure!(v > 0, "metadata_snapshot_entries must be > 0");
            self.metadata_snapshot_entries = v;
        }
        if let Some(v) = file.replica_lag_time_max_ms {
            anyhow::ensure!(v > 0, "replica_lag_time_max_ms must be > 0");
            self.replica_lag_time_max_ms = v;
        }
        if let Some(v) = file.broker_heartbeat_interval_ms {
            self.broker_heartbeat_interval_ms = v;
        }
        if let Some(v) = file.broker_session_timeout_ms {
            self.broker_session_timeout_ms = v;
        }
        if let Some(v) = file.leader_rebalance_interval_ms {
            self.leader_rebalance_interval_ms = v;
        }
        self.set_group_settings(
            file.offsets_topic_partitions,
            file.group_session_timeout_ms,
            file.group_heartbeat_interval_ms,
        )?;
        let interval_ms = file.log.flush_interval_ms.unwrap_or(1000);
        if let Some(policy) = file.log.flush_policy {
            self.flush_policy = match policy.as_str() {
                "every" => FlushPolicy::EveryAppend,
                "interval" if interval_ms > 0 => FlushPolicy::Interval { interval_ms },
                "interval" => bail!("log.flush_interval_ms must be > 0"),
                "os" => FlushPolicy::Os,
                other => bail!(
                    "log.flush_policy must be \"every\", \"interval\" or \"os\", got {other:?}"
                ),
            };
        }
        if let Some(v) = file.log.index_interval_bytes {
            if v == 0 {
                bail!("log.index_interval_bytes must be > 0");
            }
            self.index_interval_bytes = v;
        }
        if let Some(v) = file.log.maintenance_interval_ms {
            if v == 0 {
                bail!("log.maintenance_interval_ms must be > 0");
            }
            self.maintenance_interval = Duration::from_millis(v);
        }
        let defaults: BTreeMap<String, String> = file
            .topic_defaults
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
        self.topic_defaults = self
            .topic_defaults
            .with_overrides(&defaults)
            .context("[topic_defaults]")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::default();
        config.apply(toml::from_str(text)?)?;
        Ok(config)
    }

    #[test]
    fn a_full_file_overrides_every_default() {
        let config = parse(
            r#"
            node_id = 3
            data_dir = "/var/lib/ferrolog"
            listen = "0.0.0.0:9290"
            [log]
            flush_policy = "interval"
            flush_interval_ms = 250
            [topic_defaults]
            "retention.ms" = 3600000
            "segment.bytes" = "1048576"
            "#,
        )
        .expect("valid");
        assert_eq!(config.node_id, 3);
        assert_eq!(
            config.flush_policy,
            FlushPolicy::Interval { interval_ms: 250 }
        );
        assert_eq!(config.topic_defaults.retention_ms, Some(3_600_000));
        assert_eq!(config.topic_defaults.segment_bytes, 1_048_576);
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
            "[log]\nflush_policy = \"sometimes\"",
            "[topic_defaults]\n\"retention.ms\" = \"soon\"",
            "[topic_defaults]\n\"bogus.config\" = 1",
        ] {
            let err = parse(text).expect_err(text);
            assert!(!format!("{err:#}").is_empty());
        }
    }
}
