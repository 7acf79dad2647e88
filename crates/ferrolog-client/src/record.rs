//! Records as the application sees them: what it sends and what it receives.

use std::sync::Arc;

use bytes::Bytes;
pub use ferrolog_log::Header;

/// A record to send. Build one with [`ProducerRecord::new`] and the `with_*` helpers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProducerRecord {
    pub topic: String,
    /// Explicit partition; wins over the key's hash.
    pub partition: Option<u32>,
    /// Decides the partition (Kafka's murmur2 partitioner) unless `partition` is set.
    pub key: Option<Bytes>,
    /// `None` is a tombstone for compacted topics.
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Creation time in Unix milliseconds; `None` means the time of `send`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A keyless record with `value` for `topic`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value,
        });
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Same as `new` but with no value at all: a tombstone.
    pub fn tombstone(topic: impl Into<String>, key: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            ..Self::default()
        }
    }
}

/// Where an acknowledged record landed.
///
/// `topic` is shared with the producer's other records of the topic (`Arc<str>`), so
/// completing a million futures does not allocate a million strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The record's offset. With `Acks::None` it is the offset the leader assigned before
    /// the record was durable (a leader crash may still lose it); -1 if the broker reported
    /// none.
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// A record read by a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumedRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}
