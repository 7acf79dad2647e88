//! The Rust client of Ferrolog: a batching [`Producer`] (idempotent by default, transactional
//! with a transactional id), a [`Consumer`] of assigned partitions (read_uncommitted or
//! read_committed), and an [`Admin`] handle for topics, groups and transactions.
//!
//! This crate owns everything a client does on its side of the wire: choosing partitions
//! (Kafka's murmur2 and sticky partitioners, so keys land where a Kafka client would put
//! them), building RecordBatch v2 bytes, finding partition leaders from cached metadata,
//! retrying with backoff, and decoding fetched batches. It talks to servers only through the
//! gRPC API in `ferrolog-proto` and uses `ferrolog-log` only for its batch codec. It must
//! **never depend on a server crate** (`ferrolog-broker`, `ferrolog-controller`,
//! `ferrolog-metadata`): the wire contract is the only thing it shares with the server.

mod accumulator;
mod admin;
mod config;
mod connection;
mod consumer;
mod delivery;
mod error;
mod group;
mod group_admin;
mod idempotence;
mod metadata;
mod partitioner;
mod producer;
mod record;
mod sender;
mod transaction;
mod transaction_admin;

pub use admin::{Admin, ConfigResource, OffsetQuery};
pub use config::{
    Acks, ClientConfig, ConsumerConfig, DEFAULT_TRANSACTION_TIMEOUT_MS, IsolationLevel,
    ProducerConfig,
};
pub use consumer::{Consumer, StartOffset};
pub use delivery::DeliveryFuture;
pub use error::{ClientError, Result};
/// The batch codecs a producer can compress with (`ProducerConfig::compression`).
pub use ferrolog_log::Compression;
pub use group::{GroupConsumer, GroupConsumerConfig, OffsetReset, Rebalance, TopicPartition};
pub use partitioner::{murmur2, partition_for_key, to_positive};
pub use producer::Producer;
pub use record::{ConsumedRecord, Header, ProducerRecord, RecordMetadata};

/// Wire types of the transaction admin calls.
pub use ferrolog_proto::v1::{
    AbortTransactionResponse, DescribeProducersResponse, ProducerState, TransactionDescription,
    TransactionSummary,
};
/// Wire types the client's API returns (admin responses, error codes).
pub use ferrolog_proto::v1::{
    CommittedOffset, ConfigEntry, ConfigSource, CreateTopicResponse, DeleteRecordsResponse,
    DescribeGroupResponse, DescribeTopicResponse, ErrorCode, GroupMember, GroupSummary,
    ListOffsetsResponse, MetadataResponse, PartitionDescription, TopicSummary,
};
