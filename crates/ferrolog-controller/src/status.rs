//! Maps broker errors to gRPC statuses that carry a stable domain code.

use ferrolog_proto::ERROR_CODE_METADATA_KEY;
use ferrolog_proto::v1::ErrorCode;
use tonic::{Code, Status};

/// The gRPC code that generic clients (and their retry policies) should see for a domain
/// code. NOT_LEADER is FAILED_PRECONDITION, not UNAVAILABLE: retrying the same node is wrong.
fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::GroupIdNotFound => {
            Code::NotFound
        }
        ErrorCode::TopicAlreadyExists => Code::AlreadyExists,
        ErrorCode::InvalidTopicName
        | ErrorCode::InvalidPartitions
        | ErrorCode::InvalidReplicationFactor
        | ErrorCode::InvalidConfig
        | ErrorCode::RecordTooLarge
        | ErrorCode::CorruptRecord
        | ErrorCode::InvalidRequest
        | ErrorCode::InvalidReplicaAssignment => Code::InvalidArgument,
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
        | ErrorCode::DuplicateBrokerId => Code::FailedPrecondition,
        ErrorCode::NotEnoughReplicas | ErrorCode::BrokerShuttingDown => Code::Unavailable,
        ErrorCode::RequestTimedOut => Code::DeadlineExceeded,
        ErrorCode::StorageError | ErrorCode::Unspecified => Code::Internal,
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

/// The domain code a status carries, if any (statuses from other Ferrolog nodes).
pub fn code_of(status: &Status) -> Option<ErrorCode> {
    let name = status
        .metadata()
        .get(ERROR_CODE_METADATA_KEY)?
        .to_str()
        .ok()?;
    ErrorCode::from_str_name(name)
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
}
