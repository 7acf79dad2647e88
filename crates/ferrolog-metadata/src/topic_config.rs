//! Typed, validated topic configuration under Kafka's config names.
//!
//! Configs travel as `name -> string` maps (on the wire and in metadata records) so a new
//! setting never needs a schema change; they are parsed here, once, into typed fields, and
//! a value that does not parse is refused before it reaches the metadata log.

use std::collections::BTreeMap;

use thiserror::Error;

/// Kafka's `cleanup.policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
}

/// Effective configuration of one topic: defaults overlaid with its own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`; `None` is Kafka's -1, keep forever.
    pub retention_ms: Option<u64>,
    /// `retention.bytes` per partition; `None` is Kafka's -1, no size limit.
    pub retention_bytes: Option<u64>,
    /// `segment.bytes`: the active segment rolls before it would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: the active segment rolls once it is this old.
    pub segment_ms: u64,
    /// `max.message.bytes`: the largest record batch a producer may send.
    pub max_message_bytes: u32,
    /// `cleanup.policy`: only `delete` until compaction lands.
    pub cleanup_policy: CleanupPolicy,
    /// `min.insync.replicas`: acks=all needs at least this many in-sync replicas (capped at
    /// the replication factor).
    pub min_insync_replicas: u32,
}

/// Smallest `segment.bytes` accepted: a segment must hold at least one batch header and
/// tiny segments only make sense in tests.
const MIN_SEGMENT_BYTES: u64 = 1024;
/// Kafka's default `max.message.bytes` (1 MiB plus the 12-byte log overhead).
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1_048_588;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Default for TopicConfig {
    /// Kafka's defaults, so a topic behaves as a Kafka user expects.
    fn default() -> Self {
        Self {
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            cleanup_policy: CleanupPolicy::Delete,
            // Not Kafka's 1: with the default replication factor 3, 2 means every
            // acknowledged acks=all write is on two brokers, so losing any one never loses
            // it, and one broker may be down (a rolling restart) while writes go on. Capped
            // at the replication factor, so a 1-replica topic still takes writes.
            min_insync_replicas: 2,
        }
    }
}

/// A config name or value that is refused, with a message that says what would be valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown topic config '{name}'; known configs are {}", TopicConfig::NAMES.join(", "))]
    UnknownName { name: String },
    #[error("invalid value '{value}' for topic config '{name}': {expected}")]
    InvalidValue {
        name: String,
        value: String,
        expected: &'static str,
    },
}

impl TopicConfig {
    /// Every config name a topic accepts.
    pub const NAMES: [&'static str; 7] = [
        "retention.ms",
        "retention.bytes",
        "segment.bytes",
        "segment.ms",
        "max.message.bytes",
        "cleanup.policy",
        "min.insync.replicas",
    ];

    /// Overlays `overrides` on `self` (the defaults), validating each value.
    pub fn with_overrides(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = self.clone();
        for (name, value) in overrides {
            config.set(name, value)?;
        }
        Ok(config)
    }

    /// Sets one config by its Kafka name.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |expected: &'static str| ConfigError::InvalidValue {
            name: name.to_owned(),
            value: value.to_owned(),
            expected,
        };
        match name {
            "retention.ms" => {
                self.retention_ms =
                    parse_limit(value).ok_or_else(|| invalid("milliseconds >= 0, or -1"))?
            }
            "retention.bytes" => {
                self.retention_bytes =
                    parse_limit(value).ok_or_else(|| invalid("bytes >= 0, or -1"))?
            }
            "segment.bytes" => {
                self.segment_bytes = value
                    .parse::<u64>()
                    .ok()
                    .filter(|b| (MIN_SEGMENT_BYTES..=i32::MAX as u64).contains(b))
                    .ok_or_else(|| invalid("bytes between 1024 and 2147483647"))?
            }
            "segment.ms" => {
                self.segment_ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms >= 1)
                    .ok_or_else(|| invalid("milliseconds >= 1"))?
            }
            "max.message.bytes" => {
                self.max_message_bytes = value
                    .parse::<u32>()
                    .ok()
                    .filter(|b| (64..=i32::MAX as u32).contains(b))
                    .ok_or_else(|| invalid("bytes between 64 and 2147483647"))?
            }
            "cleanup.policy" => {
                self.cleanup_policy = match value {
                    "delete" => CleanupPolicy::Delete,
                    _ => return Err(invalid("'delete' (compaction is not supported yet)")),
                }
            }
            "min.insync.replicas" => {
                self.min_insync_replicas = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid("an integer >= 1"))?
            }
            _ => {
                return Err(ConfigError::UnknownName {
                    name: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Every setting under its Kafka name, as `topic describe` shows it.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let limit = |v: Option<u64>| v.map_or_else(|| "-1".to_owned(), |v| v.to_string());
        BTreeMap::from([
            ("retention.ms".to_owned(), limit(self.retention_ms)),
            ("retention.bytes".to_owned(), limit(self.retention_bytes)),
            ("segment.bytes".to_owned(), self.segment_bytes.to_string()),
            ("segment.ms".to_owned(), self.segment_ms.to_string()),
            (
                "max.message.bytes".to_owned(),
                self.max_message_bytes.to_string(),
            ),
            ("cleanup.policy".to_owned(), "delete".to_owned()),
            (
                "min.insync.replicas".to_owned(),
                self.min_insync_replicas.to_string(),
            ),
        ])
    }
}

/// Parses Kafka's "N >= 0, or -1 for no limit" values.
fn parse_limit(value: &str) -> Option<Option<u64>> {
    match value.parse::<i64>().ok()? {
        -1 => Some(None),
        n if n >= 0 => Some(Some(n as u64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_replace_defaults_and_minus_one_means_unlimited() {
        let config = TopicConfig::default()
            .with_overrides(&overrides(&[
                ("retention.ms", "-1"),
                ("segment.bytes", "4096"),
            ]))
            .expect("valid overrides");
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.segment_bytes, 4096);
        assert_eq!(config.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn malformed_values_are_refused_with_what_is_expected() {
        for (name, value) in [
            ("retention.ms", "soon"),
            ("retention.ms", "-2"),
            ("segment.bytes", "10"),
            ("segment.ms", "0"),
            ("max.message.bytes", "-5"),
            ("cleanup.policy", "compact"),
            ("min.insync.replicas", "0"),
        ] {
            let err = TopicConfig::default()
                .with_overrides(&overrides(&[(name, value)]))
                .expect_err("must be refused");
            assert!(
                matches!(&err, ConfigError::InvalidValue { name: n, value: v, .. } if n == name && v == value),
                "{name}={value}: {err}"
            );
        }
    }

    #[test]
    fn unknown_names_are_refused_and_the_message_lists_known_ones() {
        let err = TopicConfig::default()
            .with_overrides(&overrides(&[("retention.hours", "1")]))
            .expect_err("unknown");
        assert!(err.to_string().contains("retention.ms"), "{err}");
    }

    #[test]
    fn to_map_round_trips() {
        let config = TopicConfig::default()
            .with_overrides(&overrides(&[("retention.bytes", "1000")]))
            .expect("valid");
        assert_eq!(
            TopicConfig::default().with_overrides(&config.to_map()),
            Ok(config)
        );
    }
}
