//! Client, producer and consumer settings. Names and defaults follow Kafka's client configs
//! where one exists (`linger.ms`, `delivery.timeout.ms`, ...), with the unit in the name.

use std::time::Duration;

use ferrolog_log::Compression;
use ferrolog_proto::v1;

/// Settings shared by every client: where the cluster is and how patient to be with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Bootstrap brokers as `host:port`; any one reachable broker is enough.
    pub brokers: Vec<String>,
    /// Limit on establishing a TCP connection to one broker.
    pub connect_timeout_ms: u64,
    /// Limit on one request's round trip (a fetch adds its long-poll wait on top).
    pub request_timeout_ms: u64,
    /// First delay before retrying a retriable failure; doubles per attempt.
    pub retry_backoff_ms: u64,
    /// Upper bound of the retry delay.
    pub retry_backoff_max_ms: u64,
    /// Cached metadata older than this is refreshed before use, so new partitions and leader
    /// moves are noticed even without an error (Kafka's `metadata.max.age.ms`).
    pub metadata_max_age_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9290".to_owned()],
            connect_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1_000,
            metadata_max_age_ms: 300_000,
        }
    }
}

impl ClientConfig {
    /// A default configuration for the given bootstrap brokers.
    pub fn with_brokers<I, S>(brokers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            brokers: brokers.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// When a produce request is acknowledged; see `Acks` in `client.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Once every in-sync replica has the records (the high watermark passed them).
    #[default]
    All,
    /// Once the leader has them durably, per its flush policy.
    Leader,
    /// Once the leader has them in memory; offsets are not reported (they come back as -1).
    None,
}

impl Acks {
    pub(crate) fn to_wire(self) -> v1::Acks {
        match self {
            Acks::All => v1::Acks::All,
            Acks::Leader => v1::Acks::Leader,
            Acks::None => v1::Acks::None,
        }
    }
}

/// Producer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    pub client: ClientConfig,
    pub acks: Acks,
    /// How long a partition's batch waits for more records after its first one.
    pub linger_ms: u64,
    /// A batch is sent as soon as it reaches this size.
    pub batch_size_bytes: usize,
    /// Produce requests in flight per partition: 5 by default, Kafka's limit for an
    /// idempotent producer (the partition leader remembers its last five batches, so any of
    /// them can be retried). With idempotence the leader refuses a batch that does not follow
    /// the one before it, so order survives retries at any setting up to 5. Without it, only
    /// 1 keeps a retried batch from landing after a later one.
    pub max_in_flight_per_partition: usize,
    /// Whether the producer is idempotent (Kafka's `enable.idempotence`, on by default as in
    /// Kafka since 3.0): it takes a producer id from the cluster and numbers its batches per
    /// partition, so a retried batch that had landed is answered with its first offsets
    /// instead of being appended again, and no retry reorders a partition. Only with
    /// `Acks::All`: acks 0 or 1 turn it off, as in Kafka.
    pub enable_idempotence: bool,
    /// Upper bound on the time from `send` to the record's success or failure, retries
    /// included (Kafka's `delivery.timeout.ms`).
    pub delivery_timeout_ms: u64,
    /// Largest produce request; a record that cannot fit in one is rejected with
    /// `RECORD_TOO_LARGE` without contacting the server. The 4 MiB default matches gRPC's
    /// default message size limit.
    pub max_request_bytes: usize,
    /// Memory for records not yet acknowledged; `send` waits when it is used up.
    pub buffer_memory_bytes: usize,
    /// How long `send` may wait for buffer memory or for the topic's metadata
    /// (Kafka's `max.block.ms`).
    pub max_block_ms: u64,
    /// The codec each batch is compressed with before it is sent (Kafka's
    /// `compression.type`); `Compression::None` by default, as in Kafka. `batch_size_bytes`
    /// and `max_request_bytes` count uncompressed bytes, so a compressed batch is smaller.
    pub compression: Compression,
    /// Makes the producer transactional (Kafka's `transactional.id`): call
    /// `Producer::init_transactions` once, then send inside `begin_transaction` ...
    /// `commit_transaction` / `abort_transaction`. The id outlives the process: a new
    /// producer with the same id fences the old one and aborts what it left open. A
    /// transactional producer is always idempotent with `Acks::All`; `connect` sets both.
    pub transactional_id: Option<String>,
    /// How long the coordinator lets a transaction stay open before aborting it (Kafka's
    /// `transaction.timeout.ms`); sent with `init_transactions`.
    pub transaction_timeout_ms: u32,
}

/// Kafka's default `transaction.timeout.ms`.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u32 = 60_000;

/// The most produce requests an idempotent producer keeps in flight per partition: the
/// partition leader remembers this many batches per producer (Kafka's limit too).
pub const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            acks: Acks::All,
            linger_ms: 5,
            batch_size_bytes: 1024 * 1024,
            max_in_flight_per_partition: MAX_IN_FLIGHT_IDEMPOTENT,
            enable_idempotence: true,
            delivery_timeout_ms: 120_000,
            max_request_bytes: 4 * 1024 * 1024,
            buffer_memory_bytes: 64 * 1024 * 1024,
            max_block_ms: 60_000,
            compression: Compression::None,
            transactional_id: None,
            transaction_timeout_ms: DEFAULT_TRANSACTION_TIMEOUT_MS,
        }
    }
}

impl ProducerConfig {
    /// A default producer configuration for the given client settings.
    pub fn new(client: ClientConfig) -> Self {
        Self {
            client,
            ..Self::default()
        }
    }
}

/// Which records of transactions a consumer sees (Kafka's `isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Everything up to the high watermark, records of open and aborted transactions
    /// included: Kafka's default, and the only level for topics without transactions.
    #[default]
    ReadUncommitted,
    /// Only records of committed transactions (and non-transactional ones), up to the last
    /// stable offset: the broker leaves out aborted records and stops at the first open
    /// transaction.
    ReadCommitted,
}

impl IsolationLevel {
    pub(crate) fn to_wire(self) -> v1::IsolationLevel {
        match self {
            IsolationLevel::ReadUncommitted => v1::IsolationLevel::ReadUncommitted,
            IsolationLevel::ReadCommitted => v1::IsolationLevel::ReadCommitted,
        }
    }

    /// Kafka's spelling, as `--isolation-level` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "read_uncommitted",
            IsolationLevel::ReadCommitted => "read_committed",
        }
    }
}

impl std::str::FromStr for IsolationLevel {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "read_uncommitted" => Ok(IsolationLevel::ReadUncommitted),
            "read_committed" => Ok(IsolationLevel::ReadCommitted),
            other => Err(format!(
                "'{other}' is not one of read_uncommitted, read_committed"
            )),
        }
    }
}

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    pub client: ClientConfig,
    /// Soft limit on the bytes one `poll` asks for, across all assigned partitions.
    pub fetch_max_bytes: u32,
    /// Soft limit on the bytes one partition's fetch asks for
    /// (Kafka's `max.partition.fetch.bytes`); the server still returns at least one batch.
    pub max_partition_fetch_bytes: u32,
    /// Longest server-side long-poll of one fetch; `poll` repeats fetches up to its own limit.
    pub fetch_max_wait_ms: u32,
    /// How long one partition's fetches may keep failing with retriable errors (a leader
    /// change, an unreachable broker) before `poll` returns the error (Kafka's
    /// `default.api.timeout.ms`).
    pub retry_timeout_ms: u64,
    /// Whether records of open and aborted transactions are returned; sent with every fetch.
    pub isolation_level: IsolationLevel,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            fetch_max_bytes: 4 * 1024 * 1024,
            max_partition_fetch_bytes: 1024 * 1024,
            fetch_max_wait_ms: 500,
            retry_timeout_ms: 60_000,
            isolation_level: IsolationLevel::ReadUncommitted,
        }
    }
}

impl ConsumerConfig {
    /// A default consumer configuration for the given client settings.
    pub fn new(client: ClientConfig) -> Self {
        Self {
            client,
            ..Self::default()
        }
    }
}
