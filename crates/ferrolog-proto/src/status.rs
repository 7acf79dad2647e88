//! The one mapping between Ferrolog's domain error codes and gRPC statuses, used by every
//! server crate to answer and by every client to read an answer.
//!
//! A status carries two codes: the gRPC code, which generic clients and their retry
//! policies understand, and the domain [`ErrorCode`]'s name in the metadata key
//! [`ERROR_CODE_METADATA_KEY`], which Ferrolog's clients act on.

use tonic::{Code, Status};

use crate::ERROR_CODE_METADATA_KEY;
use crate::v1::ErrorCode;

/// The gRPC code that generic clients (and their retry policies) should see for a domain
/// code. NOT_LEADER is FAILED_PRECONDITION, not UNAVAILABLE: retrying the same node is wrong.
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::UnknownTopic
        | ErrorCode::UnknownPartition
        | ErrorCode::GroupIdNotFound
        | ErrorCode::TransactionalIdNotFound => Code::NotFound,
        ErrorCode::TopicAlreadyExists => Code::AlreadyExists,
        ErrorCode::InvalidTopicName
        | ErrorCode::InvalidPartitions
        | ErrorCode::InvalidReplicationFactor
        | ErrorCode::InvalidConfig
        | ErrorCode::RecordTooLarge
        | ErrorCode::CorruptRecord
        | ErrorCode::InvalidRequest
        | ErrorCode::InvalidReplicaAssignment
        | ErrorCode::InvalidTransactionTimeout => Code::InvalidArgument,
        ErrorCode::OffsetOutOfRange => Code::OutOfRange,
        ErrorCode::NotLeader
        | ErrorCode::NotController
        | ErrorCode::FencedEpoch
        | ErrorCode::IneligibleReplica
        | ErrorCode::ReassignmentInProgress
        | ErrorCode::NotCoordinator
        | ErrorCode::UnknownMemberId
        | ErrorCode::StaleMemberEpoch
        | ErrorCode::NonEmptyGroup
        | ErrorCode::DuplicateBrokerId
        | ErrorCode::OutOfOrderSequenceNumber
        | ErrorCode::InvalidProducerEpoch
        | ErrorCode::InvalidTxnState
        | ErrorCode::ProducerFenced
        | ErrorCode::InvalidProducerIdMapping => Code::FailedPrecondition,
        // Retriable: the transaction is completing and the next attempt finds it done.
        ErrorCode::ConcurrentTransactions => Code::Unavailable,
        ErrorCode::NotEnoughReplicas
        | ErrorCode::BrokerShuttingDown
        | ErrorCode::BrokerNotAvailable => Code::Unavailable,
        ErrorCode::RequestTimedOut => Code::DeadlineExceeded,
        ErrorCode::StorageError | ErrorCode::InternalError | ErrorCode::Unspecified => {
            Code::Internal
        }
    }
}

/// A status whose message is the error's text and whose metadata names its domain code.
pub fn status_with_code(code: ErrorCode, message: String) -> Status {
    status_with(grpc_code(code), code, message)
}

/// Like [`status_with_code`] with an explicit gRPC code, for the few places where the
/// same domain code means something else to a generic client.
pub fn status_with(grpc: Code, code: ErrorCode, message: String) -> Status {
    let mut status = Status::new(grpc, message);
    status.metadata_mut().insert(
        ERROR_CODE_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(code.as_str_name()),
    );
    status
}

/// The domain code's name a status carries, as sent: a newer server may send a name this
/// build does not know.
pub fn code_name_of(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(ERROR_CODE_METADATA_KEY)
        .map(|value| value.to_str().unwrap_or(""))
}

/// The domain code a status carries, if any and if this build knows it.
pub fn code_of(status: &Status) -> Option<ErrorCode> {
    code_name_of(status).and_then(ErrorCode::from_str_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_the_domain_code_and_the_message() {
        let status = status_with_code(ErrorCode::UnknownTopic, "unknown topic 'orders'".into());
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "unknown topic 'orders'");
        assert_eq!(code_of(&status), Some(ErrorCode::UnknownTopic));
    }

    #[test]
    fn a_name_this_build_does_not_know_is_kept_but_has_no_code() {
        let mut status = Status::new(Code::Internal, "boom");
        status.metadata_mut().insert(
            ERROR_CODE_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("SOMETHING_NEW"),
        );
        assert_eq!(code_name_of(&status), Some("SOMETHING_NEW"));
        assert_eq!(code_of(&status), None);
    }

    #[test]
    fn internal_errors_are_not_storage_errors() {
        // Clients retry STORAGE_ERROR (a partition's log may recover or move); a bug does
        // not go away on retry.
        let status = status_with_code(ErrorCode::InternalError, "task died".into());
        assert_eq!(code_of(&status), Some(ErrorCode::InternalError));
        assert_eq!(status.code(), Code::Internal);
    }
}
