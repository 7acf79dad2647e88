use ferrolog_metadata::{ConfigError, MetadataError};
use ferrolog_proto::v1::ErrorCode;
use thiserror::Error;

/// Why the controller refused or failed a request. Each variant has a stable [`ErrorCode`].
#[derive(Debug, Error)]
pub enum ControllerError {
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("topic '{0}' already exists")]
    TopicAlreadyExists(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("invalid partition count {requested}: it must be between 1 and {max}")]
    InvalidPartitions { requested: i64, max: u32 },
    #[error(
        "invalid replication factor {requested}: it must be between 1 and the {brokers} registered broker(s)"
    )]
    InvalidReplicationFactor { requested: i64, brokers: usize },
    #[error(
        "topic '{topic}' has {current} partition(s): a new count must be larger (partitions \
         are never removed: records would lose their place) and at most {max}, not {requested}"
    )]
    PartitionsMustGrow {
        topic: String,
        current: usize,
        requested: i64,
        max: u32,
    },
    #[error("invalid replicas {replicas:?} for {topic}-{partition}: {reason}")]
    InvalidReplicaAssignment {
        topic: String,
        partition: i32,
        replicas: Vec<i32>,
        reason: String,
    },
    #[error(
        "{topic}-{partition} is already being reassigned (adding {adding:?}, removing \
         {removing:?}); wait until `ferrolog topic describe` shows it done"
    )]
    ReassignmentInProgress {
        topic: String,
        partition: i32,
        adding: Vec<i32>,
        removing: Vec<i32>,
    },
    #[error(
        "broker id {broker} is registered by another running process at {registered_address} \
         (heard from {heard_ms} ms ago); this one at {address} may register only once that \
         one has stopped: give each broker its own --node-id"
    )]
    DuplicateBrokerId {
        broker: i32,
        registered_address: String,
        address: String,
        heard_ms: u64,
    },
    #[error("invalid registration of broker id {broker} at '{address}': {reason}")]
    InvalidBrokerRegistration {
        broker: i32,
        address: String,
        reason: &'static str,
    },
    #[error("unknown partition {topic}-{partition}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error(
        "stale request for {topic}-{partition}: it names leader {leader} at leader epoch \
         {leader_epoch} and partition epoch {partition_epoch}, but the partition is at leader \
         {current_leader:?}, leader epoch {current_leader_epoch}, partition epoch \
         {current_partition_epoch}"
    )]
    FencedEpoch {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        current_leader: Option<i32>,
        current_leader_epoch: i32,
        current_partition_epoch: i32,
    },
    #[error("broker {broker} cannot lead {topic}-{partition}: it is not in the ISR {isr:?}")]
    IneligibleReplica {
        topic: String,
        partition: i32,
        broker: i32,
        isr: Vec<i32>,
    },
    #[error("invalid ISR {isr:?} for {topic}-{partition}: {reason}")]
    InvalidIsr {
        topic: String,
        partition: i32,
        isr: Vec<i32>,
        reason: &'static str,
    },
    #[error(
        "no broker has registered yet: brokers register right after a controller leader is \
         elected; retry in a moment"
    )]
    NoBrokersRegistered,
    #[error(
        "broker {broker} (incarnation {incarnation_id}) is not registered as that process \
         ({registered}); it gets producer ids once it has registered"
    )]
    StaleBrokerIncarnation {
        broker: i32,
        incarnation_id: u64,
        registered: String,
    },
    #[error("no producer ids are left: the next block after {next} would pass the largest id")]
    ProducerIdsExhausted { next: i64 },
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    #[error("invalid config resource: {0}")]
    InvalidConfigResource(String),
    /// The active controller refused or failed a forwarded request; its code is kept.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
    #[error(
        "no controller leader could be reached within {timeout_ms} ms (waiting for quorum): {last_error}"
    )]
    NoQuorum { timeout_ms: u64, last_error: String },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

impl ControllerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
            Self::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::InvalidPartitions { .. } | Self::PartitionsMustGrow { .. } => {
                ErrorCode::InvalidPartitions
            }
            Self::InvalidReplicaAssignment { .. } => ErrorCode::InvalidReplicaAssignment,
            Self::ReassignmentInProgress { .. } => ErrorCode::ReassignmentInProgress,
            Self::DuplicateBrokerId { .. } => ErrorCode::DuplicateBrokerId,
            Self::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
            // Its text tells the user to retry, so its code must be one clients retry.
            Self::NoBrokersRegistered => ErrorCode::BrokerNotAvailable,
            Self::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            Self::FencedEpoch { .. } | Self::StaleBrokerIncarnation { .. } => {
                ErrorCode::FencedEpoch
            }
            Self::ProducerIdsExhausted { .. } => ErrorCode::InternalError,
            Self::IneligibleReplica { .. } => ErrorCode::IneligibleReplica,
            Self::InvalidIsr { .. } | Self::InvalidBrokerRegistration { .. } => {
                ErrorCode::InvalidRequest
            }
            Self::InvalidConfig(_) => ErrorCode::InvalidConfig,
            Self::InvalidConfigResource(_) => ErrorCode::InvalidRequest,
            Self::Remote { code, .. } => *code,
            Self::NoQuorum { .. } => ErrorCode::NotController,
            Self::Metadata(MetadataError::NotController { .. }) => ErrorCode::NotController,
            Self::Metadata(MetadataError::Timeout { .. } | MetadataError::CommitUnknown { .. }) => {
                ErrorCode::RequestTimedOut
            }
            Self::Metadata(_) => ErrorCode::StorageError,
        }
    }
}
