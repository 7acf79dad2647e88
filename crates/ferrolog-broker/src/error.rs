use ferrolog_log::LogError;
use ferrolog_metadata::ConfigError;
use ferrolog_proto::v1::ErrorCode;
use thiserror::Error;

use crate::control_plane::ControlPlaneError;
use crate::txn::TxnError;

/// Why a data-plane request failed. Each variant maps to a stable [`ErrorCode`] and a gRPC
/// status (see `service::status`).
#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("unknown partition {partition} of topic '{topic}'; it has partitions 0..{count}")]
    UnknownPartition {
        topic: String,
        partition: i64,
        count: usize,
    },
    #[error("partition {topic}-{partition} is not led by this broker{}", leader_hint(.leader))]
    NotLeader {
        topic: String,
        partition: u32,
        leader: Option<(i32, String)>,
    },
    /// A follower named another leader epoch than this leader's: one of the two has stale
    /// metadata. The code is NOT_LEADER, on which a follower refreshes its metadata.
    #[error(
        "{topic}-{partition} is led by this broker at leader epoch {current}, not {asked}; \
         refresh the partition's metadata"
    )]
    LeaderEpochMismatch {
        topic: String,
        partition: u32,
        asked: i32,
        current: i32,
    },
    #[error(
        "not enough in-sync replicas for {topic}-{partition}: the ISR {isr:?} has fewer than \
         min.insync.replicas={min_insync}; acks=all writes are refused until a replica catches up"
    )]
    NotEnoughReplicas {
        topic: String,
        partition: u32,
        isr: Vec<i32>,
        min_insync: usize,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request timed out after {timeout_ms} ms waiting for {waiting_for}")]
    Timeout {
        timeout_ms: u64,
        waiting_for: &'static str,
    },
    #[error("the log of partition {topic}-{partition} failed and is offline: {reason}")]
    StorageOffline {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("broker is shutting down")]
    ShuttingDown,
    /// A failure inside this node (a task that died, partitions that cannot be opened).
    #[error("internal error: {0}")]
    Internal(String),
    #[error("this broker does not coordinate group '{group}'{}", coordinator_hint(.coordinator))]
    NotCoordinator {
        group: String,
        coordinator: Option<(i32, String)>,
    },
    #[error(
        "this broker does not coordinate transactional id '{transactional_id}'{}",
        coordinator_hint(.coordinator)
    )]
    NotTxnCoordinator {
        transactional_id: String,
        coordinator: Option<(i32, String)>,
    },
    #[error("group '{0}' does not exist")]
    GroupNotFound(String),
    #[error(transparent)]
    Group(#[from] crate::group::GroupError),
    #[error(transparent)]
    Txn(#[from] crate::txn::TxnError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// A topic configuration that does not parse or is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The control plane refused or failed a change; its code is kept.
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
}

fn leader_hint(leader: &Option<(i32, String)>) -> String {
    match leader {
        Some((id, address)) => format!("; it is led by broker {id} at {address}"),
        None => "; it has no leader right now".to_owned(),
    }
}

fn coordinator_hint(coordinator: &Option<(i32, String)>) -> String {
    match coordinator {
        Some((id, address)) => format!("; broker {id} at {address} does"),
        None => "; its coordinator is moving, retry shortly".to_owned(),
    }
}

impl BrokerError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownTopic(_) => ErrorCode::UnknownTopic,
            Self::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            Self::NotLeader { .. } | Self::LeaderEpochMismatch { .. } => ErrorCode::NotLeader,
            Self::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            Self::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Self::Timeout { .. } => ErrorCode::RequestTimedOut,
            Self::StorageOffline { .. } => ErrorCode::StorageError,
            Self::ShuttingDown => ErrorCode::BrokerShuttingDown,
            // Not STORAGE_ERROR: clients retry that, and a bug does not go away on retry.
            Self::Internal(_) => ErrorCode::InternalError,
            Self::Log(e) => match e {
                // A batch that decompresses past the bound is too large once decompressed.
                LogError::RecordTooLarge { .. } | LogError::DecompressedTooLarge { .. } => {
                    ErrorCode::RecordTooLarge
                }
                LogError::CorruptBatch { .. } | LogError::UnsupportedCompression { .. } => {
                    ErrorCode::CorruptRecord
                }
                LogError::OffsetOutOfRange { .. } | LogError::BeyondHighWatermark { .. } => {
                    ErrorCode::OffsetOutOfRange
                }
                LogError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequenceNumber,
                LogError::ProducerFenced { .. } => ErrorCode::InvalidProducerEpoch,
                LogError::InvalidTxnState { .. } => ErrorCode::InvalidTxnState,
                _ => ErrorCode::StorageError,
            },
            Self::Txn(e) => match e {
                TxnError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
                TxnError::InvalidProducerEpoch { .. } => ErrorCode::InvalidProducerEpoch,
                TxnError::InvalidProducerIdMapping { .. } => ErrorCode::InvalidProducerIdMapping,
                TxnError::UnknownTransactionalId(_) => ErrorCode::TransactionalIdNotFound,
                TxnError::InvalidState { .. } => ErrorCode::InvalidTxnState,
                TxnError::Concurrent(_) => ErrorCode::ConcurrentTransactions,
                TxnError::InvalidTimeout { .. } => ErrorCode::InvalidTransactionTimeout,
            },
            Self::Config(_) => ErrorCode::InvalidConfig,
            Self::ControlPlane(e) => e.code,
            Self::NotCoordinator { .. } | Self::NotTxnCoordinator { .. } => {
                ErrorCode::NotCoordinator
            }
            Self::GroupNotFound(_) => ErrorCode::GroupIdNotFound,
            Self::Group(e) => match e {
                crate::group::GroupError::UnknownMember { .. } => ErrorCode::UnknownMemberId,
                crate::group::GroupError::StaleMemberEpoch { .. } => ErrorCode::StaleMemberEpoch,
                crate::group::GroupError::NonEmptyGroup { .. } => ErrorCode::NonEmptyGroup,
            },
        }
    }
}
