//! Typed, validated topic configuration under Kafka's config names.
//!
//! Configs travel as `name -> string` maps (on the wire and in metadata records) so a new
//! setting never needs a schema change; they are parsed here, once, into typed fields, and
//! a value that does not parse is refused before it reaches the metadata log.
//!
//! A topic's effective configuration has three layers, each overriding the one before:
//! the static defaults (built in, or the node's `[topic_defaults]`), the cluster-wide dynamic
//! defaults in the metadata log, and the topic's own settings in the metadata log. The two
//! dynamic layers change at runtime ([`alter_overrides`]); [`TopicConfig::describe`] tells
//! which layer each value comes from.

use std::collections::BTreeMap;

use thiserror::Error;

/// Kafka's `cleanup.policy`: which of retention (delete) and compaction apply to a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Old segments are deleted by `retention.ms` and `retention.bytes`.
    Delete,
    /// Only the newest record of each key is kept; nothing is deleted by age or size.
    Compact,
    /// Both: the log is compacted, and segments past retention are deleted as well.
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether the log cleaner compacts this topic.
    pub fn compacts(self) -> bool {
        matches!(self, Self::Compact | Self::CompactDelete)
    }

    /// Whether retention deletes this topic's old segments.
    pub fn deletes(self) -> bool {
        matches!(self, Self::Delete | Self::CompactDelete)
    }

    /// The value as Kafka spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
            Self::CompactDelete => "compact,delete",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        let mut compact = false;
        let mut delete = false;
        for part in value.split(',').map(str::trim) {
            match part {
                "compact" => compact = true,
                "delete" => delete = true,
                _ => return None,
            }
        }
        match (compact, delete) {
            (true, true) => Some(Self::CompactDelete),
            (true, false) => Some(Self::Compact),
            (false, true) => Some(Self::Delete),
            (false, false) => None,
        }
    }
}

/// Kafka's topic-level `compression.type`: what the broker stores. `Producer` keeps each
/// batch as the producer compressed it; any other value makes the broker recompress batches
/// that arrive with another codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicCompression {
    Producer,
    Uncompressed,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl TopicCompression {
    /// The value as Kafka spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::Uncompressed => "uncompressed",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "producer" => Self::Producer,
            "uncompressed" => Self::Uncompressed,
            "gzip" => Self::Gzip,
            "snappy" => Self::Snappy,
            "lz4" => Self::Lz4,
            "zstd" => Self::Zstd,
            _ => return None,
        })
    }
}

/// Effective configuration of one topic: defaults overlaid with its own settings.
#[derive(Clone, Debug, PartialEq)]
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
    /// `cleanup.policy`: retention, compaction, or both.
    pub cleanup_policy: CleanupPolicy,
    /// `min.insync.replicas`: acks=all needs at least this many in-sync replicas (capped at
    /// the replication factor).
    pub min_insync_replicas: u32,
    /// `compression.type`: the codec batches are stored with (`producer`: as sent).
    pub compression: TopicCompression,
    /// `min.cleanable.dirty.ratio`: the cleaner compacts a log once the uncleaned part is at
    /// least this share of the cleanable part.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a record stays uncompacted at least this long after it was
    /// written.
    pub min_compaction_lag_ms: u64,
    /// `max.compaction.lag.ms`: a record is compacted at most this long after it was written,
    /// whatever the dirty ratio.
    pub max_compaction_lag_ms: u64,
    /// `delete.retention.ms`: how long a tombstone (a key with a null value) stays readable
    /// after the cleaner first passes it, so consumers see the delete.
    pub delete_retention_ms: u64,
}

/// Smallest `segment.bytes` accepted: a segment must hold at least one batch header and
/// tiny segments only make sense in tests.
const MIN_SEGMENT_BYTES: u64 = 1024;
/// Kafka's default `max.message.bytes` (1 MiB plus the 12-byte log overhead).
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1_048_588;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Kafka's default `max.compaction.lag.ms`: `Long.MAX_VALUE`, no deadline.
const NO_COMPACTION_DEADLINE_MS: u64 = i64::MAX as u64;

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
            compression: TopicCompression::Producer,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: NO_COMPACTION_DEADLINE_MS,
            delete_retention_ms: DAY_MS,
        }
    }
}

// `f64` has no `Eq`, but the dirty ratio is parsed from a finite decimal in 0..=1 and never
// NaN, so equality is total on every value a `TopicConfig` can hold.
impl Eq for TopicConfig {}

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
    /// Values valid one by one that contradict each other once layered.
    #[error("conflicting topic configs{}: {reason}", context_suffix(.context))]
    Conflict {
        /// Whose effective config conflicts (e.g. "topic 'orders'"), when it is not the one
        /// the request named.
        context: Option<String>,
        reason: String,
    },
    #[error("config '{name}' is both set and deleted in one request; do one or the other")]
    SetAndDeleted { name: String },
}

fn context_suffix(context: &Option<String>) -> String {
    context
        .as_deref()
        .map_or_else(String::new, |c| format!(" of {c}"))
}

/// Which resource a dynamic config change or description is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfigResource {
    /// One topic's own settings.
    Topic(String),
    /// The cluster-wide dynamic topic defaults.
    Cluster,
}

impl ConfigResource {
    /// The resource a request names: a topic, or the cluster defaults, whose name must be
    /// empty (so a typo cannot turn a topic change into a cluster-wide one). A resource type
    /// this build does not know is refused; the error says why.
    pub fn from_wire(resource_type: i32, name: &str) -> Result<Self, String> {
        use crate::records::ConfigResourceType;
        match ConfigResourceType::try_from(resource_type) {
            Ok(ConfigResourceType::Topic) => Ok(Self::Topic(name.to_owned())),
            Ok(ConfigResourceType::Cluster) if name.is_empty() => Ok(Self::Cluster),
            Ok(ConfigResourceType::Cluster) => Err(format!(
                "the cluster config resource has no name, but '{name}' was given"
            )),
            Err(_) => Err(format!(
                "unknown config resource type {resource_type}: 0 is a topic, 1 the cluster"
            )),
        }
    }

    /// The wire form: a resource type and a name (empty for the cluster).
    pub fn to_wire(&self) -> (crate::records::ConfigResourceType, String) {
        use crate::records::ConfigResourceType;
        match self {
            Self::Topic(name) => (ConfigResourceType::Topic, name.clone()),
            Self::Cluster => (ConfigResourceType::Cluster, String::new()),
        }
    }
}

impl std::fmt::Display for ConfigResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Topic(name) => write!(f, "topic '{name}'"),
            Self::Cluster => f.write_str("the cluster defaults"),
        }
    }
}

/// Where a config's effective value comes from, weakest layer first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigSource {
    /// Built in, or the node's static `[topic_defaults]`.
    Default,
    /// A cluster-wide dynamic default from the metadata log.
    Cluster,
    /// The topic's own setting from the metadata log.
    Topic,
}

impl ConfigSource {
    /// The source as `topic describe` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Cluster => "cluster",
            Self::Topic => "topic",
        }
    }
}

/// One effective config, with the layer its value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
}

/// Checks an incremental alter on its own (names known, values well formed, no name both
/// set and deleted) and returns the resource's settings after it: `current` with `set`
/// applied and `delete` removed. Deleting a name the resource does not set is a no-op, as in
/// Kafka. Whether the result is consistent once layered is the caller's to check
/// ([`TopicConfig::check_consistent`]), since only it knows the layers below.
pub fn alter_overrides(
    current: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    delete: &[String],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut scratch = TopicConfig::default();
    for (name, value) in set {
        scratch.set(name, value)?;
    }
    for name in delete {
        if !TopicConfig::NAMES.contains(&name.as_str()) {
            return Err(ConfigError::UnknownName { name: name.clone() });
        }
        if set.contains_key(name) {
            return Err(ConfigError::SetAndDeleted { name: name.clone() });
        }
    }
    let mut result = current.clone();
    result.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    for name in delete {
        result.remove(name);
    }
    Ok(result)
}

impl TopicConfig {
    /// Every config name a topic accepts.
    pub const NAMES: [&'static str; 12] = [
        "retention.ms",
        "retention.bytes",
        "segment.bytes",
        "segment.ms",
        "max.message.bytes",
        "cleanup.policy",
        "min.insync.replicas",
        "compression.type",
        "min.cleanable.dirty.ratio",
        "min.compaction.lag.ms",
        "max.compaction.lag.ms",
        "delete.retention.ms",
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

    /// The effective config of a topic: `self` (the static defaults) overlaid with the
    /// cluster's dynamic defaults, then with the topic's own settings.
    pub fn layered(
        &self,
        cluster: &BTreeMap<String, String>,
        topic: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        self.with_overrides(cluster)?.with_overrides(topic)
    }

    /// Every config of the layered result ([`TopicConfig::layered`]) with the layer its value
    /// comes from, sorted by name. Values are the parsed ones written back, so they read the
    /// same whichever spelling was set (`compact, delete` shows as `compact,delete`).
    pub fn describe(
        &self,
        cluster: &BTreeMap<String, String>,
        topic: &BTreeMap<String, String>,
    ) -> Result<Vec<ConfigEntry>, ConfigError> {
        let effective = self.layered(cluster, topic)?;
        Ok(effective
            .to_map()
            .into_iter()
            .map(|(name, value)| {
                let source = if topic.contains_key(&name) {
                    ConfigSource::Topic
                } else if cluster.contains_key(&name) {
                    ConfigSource::Cluster
                } else {
                    ConfigSource::Default
                };
                ConfigEntry {
                    name,
                    value,
                    source,
                }
            })
            .collect())
    }

    /// Checks what no single value can: settings that contradict each other. Run by the
    /// controller on the layered result of every change, so a change that would leave some
    /// topic contradictory is refused whole, before it reaches the metadata log. Not run by
    /// [`TopicConfig::with_overrides`]: a broker applying committed metadata must never
    /// refuse it.
    pub fn check_consistent(&self) -> Result<(), ConfigError> {
        // Kafka's rule: a record cannot have to stay uncompacted longer than it may.
        if self.min_compaction_lag_ms > self.max_compaction_lag_ms {
            return Err(ConfigError::Conflict {
                context: None,
                reason: format!(
                    "min.compaction.lag.ms ({}) must not exceed max.compaction.lag.ms ({})",
                    self.min_compaction_lag_ms, self.max_compaction_lag_ms
                ),
            });
        }
        Ok(())
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
                self.cleanup_policy = CleanupPolicy::parse(value)
                    .ok_or_else(|| invalid("'delete', 'compact' or 'compact,delete'"))?
            }
            "compression.type" => {
                self.compression = TopicCompression::parse(value).ok_or_else(|| {
                    invalid("one of producer, uncompressed, gzip, snappy, lz4, zstd")
                })?
            }
            "min.cleanable.dirty.ratio" => {
                self.min_cleanable_dirty_ratio = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| invalid("a ratio between 0 and 1"))?
            }
            "min.compaction.lag.ms" => {
                self.min_compaction_lag_ms =
                    parse_non_negative(value).ok_or_else(|| invalid("milliseconds >= 0"))?
            }
            "max.compaction.lag.ms" => {
                self.max_compaction_lag_ms = value
                    .parse::<i64>()
                    .ok()
                    .filter(|ms| *ms >= 1)
                    .map(|ms| ms as u64)
                    .ok_or_else(|| invalid("milliseconds >= 1"))?
            }
            "delete.retention.ms" => {
                self.delete_retention_ms =
                    parse_non_negative(value).ok_or_else(|| invalid("milliseconds >= 0"))?
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
            (
                "cleanup.policy".to_owned(),
                self.cleanup_policy.as_str().to_owned(),
            ),
            (
                "min.insync.replicas".to_owned(),
                self.min_insync_replicas.to_string(),
            ),
            (
                "compression.type".to_owned(),
                self.compression.as_str().to_owned(),
            ),
            (
                "min.cleanable.dirty.ratio".to_owned(),
                self.min_cleanable_dirty_ratio.to_string(),
            ),
            (
                "min.compaction.lag.ms".to_owned(),
                self.min_compaction_lag_ms.to_string(),
            ),
            (
                "max.compaction.lag.ms".to_owned(),
                self.max_compaction_lag_ms.to_string(),
            ),
            (
                "delete.retention.ms".to_owned(),
                self.delete_retention_ms.to_string(),
            ),
        ])
    }
}

/// Parses a millisecond or byte count that Kafka keeps in a `long`: 0 up to `i64::MAX`.
fn parse_non_negative(value: &str) -> Option<u64> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(|n| n as u64)
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
            ("cleanup.policy", "compacted"),
            ("cleanup.policy", ""),
            ("min.insync.replicas", "0"),
            ("compression.type", "brotli"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "NaN"),
            ("min.compaction.lag.ms", "-1"),
            ("max.compaction.lag.ms", "0"),
            ("delete.retention.ms", "later"),
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
    fn cleanup_policy_accepts_both_kafka_spellings_of_compact_and_delete() {
        for (value, policy) in [
            ("delete", CleanupPolicy::Delete),
            ("compact", CleanupPolicy::Compact),
            ("compact,delete", CleanupPolicy::CompactDelete),
            ("delete,compact", CleanupPolicy::CompactDelete),
            ("compact, delete", CleanupPolicy::CompactDelete),
        ] {
            let config = TopicConfig::default()
                .with_overrides(&overrides(&[("cleanup.policy", value)]))
                .expect("valid policy");
            assert_eq!(config.cleanup_policy, policy, "{value}");
        }
        assert!(CleanupPolicy::CompactDelete.compacts() && CleanupPolicy::CompactDelete.deletes());
        assert!(!CleanupPolicy::Compact.deletes() && !CleanupPolicy::Delete.compacts());
    }

    #[test]
    fn every_compaction_and_compression_setting_round_trips_through_its_name() {
        let set = overrides(&[
            ("compression.type", "zstd"),
            ("min.cleanable.dirty.ratio", "0.25"),
            ("min.compaction.lag.ms", "1000"),
            ("max.compaction.lag.ms", "60000"),
            ("delete.retention.ms", "0"),
        ]);
        let config = TopicConfig::default().with_overrides(&set).expect("valid");
        assert_eq!(config.compression, TopicCompression::Zstd);
        let map = config.to_map();
        for (name, value) in &set {
            assert_eq!(map.get(name), Some(value), "{name}");
        }
        assert_eq!(map.len(), TopicConfig::NAMES.len());
    }

    #[test]
    fn each_layer_overrides_the_one_below_and_describe_names_it() {
        let defaults = TopicConfig::default()
            .with_overrides(&overrides(&[("retention.ms", "3600000")]))
            .expect("valid");
        let cluster = overrides(&[("retention.ms", "7200000"), ("segment.bytes", "4096")]);
        let topic = overrides(&[
            ("segment.bytes", "8192"),
            ("cleanup.policy", "compact, delete"),
        ]);
        let entries = defaults.describe(&cluster, &topic).expect("valid");
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .map(|e| (e.value.as_str(), e.source))
        };
        assert_eq!(
            find("retention.ms"),
            Some(("7200000", ConfigSource::Cluster))
        );
        assert_eq!(find("segment.bytes"), Some(("8192", ConfigSource::Topic)));
        assert_eq!(
            find("cleanup.policy"),
            Some(("compact,delete", ConfigSource::Topic))
        );
        assert_eq!(
            find("segment.ms"),
            Some(("604800000", ConfigSource::Default))
        );
        assert_eq!(entries.len(), TopicConfig::NAMES.len());
        let no_cluster = defaults.describe(&BTreeMap::new(), &topic).expect("valid");
        assert!(no_cluster.contains(&ConfigEntry {
            name: "retention.ms".into(),
            value: "3600000".into(),
            source: ConfigSource::Default,
        }));
    }

    #[test]
    fn an_alter_sets_and_deletes_and_refuses_bad_names_values_and_overlaps() {
        let current = overrides(&[("retention.ms", "1000"), ("segment.bytes", "4096")]);
        let altered = alter_overrides(
            &current,
            &overrides(&[("retention.ms", "2000"), ("max.message.bytes", "2048")]),
            &["segment.bytes".to_owned(), "segment.ms".to_owned()],
        )
        .expect("valid");
        assert_eq!(
            altered,
            overrides(&[("retention.ms", "2000"), ("max.message.bytes", "2048")])
        );
        let refused = |set: &[(&str, &str)], delete: &[&str]| {
            let delete: Vec<String> = delete.iter().map(|d| (*d).to_owned()).collect();
            alter_overrides(&current, &overrides(set), &delete).expect_err("refused")
        };
        assert!(matches!(
            refused(&[("retention.hours", "1")], &[]),
            ConfigError::UnknownName { .. }
        ));
        assert!(matches!(
            refused(&[], &["retention.hours"]),
            ConfigError::UnknownName { .. }
        ));
        assert!(matches!(
            refused(&[("retention.ms", "soon")], &[]),
            ConfigError::InvalidValue { .. }
        ));
        assert!(matches!(
            refused(&[("retention.ms", "5")], &["retention.ms"]),
            ConfigError::SetAndDeleted { .. }
        ));
    }

    #[test]
    fn a_minimum_compaction_lag_above_the_maximum_is_a_conflict() {
        let config = TopicConfig::default()
            .with_overrides(&overrides(&[
                ("min.compaction.lag.ms", "60000"),
                ("max.compaction.lag.ms", "1000"),
            ]))
            .expect("each value is valid alone");
        let err = config.check_consistent().expect_err("conflict");
        assert!(
            err.to_string().contains("min.compaction.lag.ms (60000)"),
            "{err}"
        );
        TopicConfig::default()
            .check_consistent()
            .expect("the defaults agree");
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
