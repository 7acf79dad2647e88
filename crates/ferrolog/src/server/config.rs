//! `ferrolog server` configuration: defaults, overlaid by a TOML file (`--config`),
//! overlaid by flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
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

/// The effective configuration of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: String,
    pub http_listen: String,
    pub advertised_address: Option<String>,
    pub flush_policy: FlushPolicy,
    pub index_interval_bytes: u32,
    pub maintenance_interval: Duration,
    pub topic_defaults: TopicConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./ferrolog-data"),
            listen: "127.0.0.1:9290".to_owned(),
            http_listen: "127.0.0.1:9280".to_owned(),
            advertised_address: None,
            flush_policy: FlushPolicy::EveryAppend,
            index_interval_bytes: 4096,
            maintenance_interval: Duration::from_secs(30),
            topic_defaults: TopicConfig::default(),
        }
    }
}

impl ServerConfig {
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
