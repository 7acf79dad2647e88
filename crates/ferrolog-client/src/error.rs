//! The client's error type and its mapping from gRPC statuses.
//!
//! A Ferrolog server reports every error twice: as a gRPC status and as a stable domain code in
//! the status metadata key [`ferrolog_proto::ERROR_CODE_METADATA_KEY`]. The client keeps the
//! domain code, because that is what callers branch on (`UNKNOWN_TOPIC` vs `NOT_LEADER`), and
//! treats a status *without* the key as coming from something that is not a Ferrolog server (or
//! from the transport), which is why such statuses mostly become [`ClientError::Unreachable`].

use std::error::Error as _;

use ferrolog_proto::v1::ErrorCode;
use tonic::{Code, Status};

/// Result alias used throughout the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Everything that can go wrong in a client call.
///
/// The type is `Clone` because one failed batch fails every record's delivery future with the
/// same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a domain error code; `message` is its human-readable text.
    #[error("{}", server_display(*.code, .message))]
    Server { code: ErrorCode, message: String },
    /// No Ferrolog server answered at `address`: nothing listens there, the connection broke,
    /// or the peer does not speak Ferrolog's gRPC API.
    #[error("could not reach a Ferrolog server at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The operation did not finish in time.
    #[error("timed out after {after_ms} ms waiting for {what}")]
    Timeout { what: String, after_ms: u64 },
    /// The caller passed something the client rejects before sending it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server sent bytes the client cannot decode (bad CRC, truncated batch, ...).
    #[error("corrupt data from server: {0}")]
    Corrupt(String),
    /// The producer or consumer was closed.
    #[error("the client is closed")]
    Closed,
    /// The record was still queued when its transaction was aborted (by
    /// `Producer::abort_transaction`, or because an earlier error made the transaction
    /// abortable): it was never sent. Kafka's `TransactionAbortedException`.
    #[error("the transaction was aborted before this record was sent: {0}")]
    TransactionAborted(String),
}

fn server_display(code: ErrorCode, message: &str) -> String {
    let name = code.as_str_name();
    // Servers usually start the message with the code name already ("NOT_LEADER: ...").
    if message.starts_with(name) {
        message.to_owned()
    } else {
        format!("{name}: {message}")
    }
}

impl ClientError {
    /// Builds a [`ClientError::Server`]; a shorthand for errors the client detects itself but
    /// reports with a server domain code, so callers branch on one thing.
    pub fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError::Server {
            code,
            message: message.into(),
        }
    }

    /// The domain code, when the error carries one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether repeating the same request later may succeed.
    ///
    /// `STORAGE_ERROR` counts as retriable, as Kafka's `KAFKA_STORAGE_ERROR` does: the broker
    /// takes the failed log directory offline and leadership moves elsewhere.
    /// `UNKNOWN_TOPIC` does not: a typo should fail fast rather than retry for two minutes.
    /// Nor does `INTERNAL_ERROR`: it is a bug on the server, which a retry does not fix.
    /// `CONCURRENT_TRANSACTIONS` (the previous transaction is still completing) and
    /// `NOT_COORDINATOR` (find the coordinator again, then retry) are, as in Kafka.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => matches!(
                code,
                ErrorCode::NotLeader
                    | ErrorCode::NotEnoughReplicas
                    | ErrorCode::RequestTimedOut
                    | ErrorCode::BrokerShuttingDown
                    | ErrorCode::StorageError
                    | ErrorCode::BrokerNotAvailable
                    | ErrorCode::ConcurrentTransactions
                    | ErrorCode::NotCoordinator
            ),
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => true,
            ClientError::InvalidArgument(_)
            | ClientError::Corrupt(_)
            | ClientError::Closed
            | ClientError::TransactionAborted(_) => false,
        }
    }

    /// Whether the error suggests the cached cluster metadata (leaders, addresses) is stale.
    pub(crate) fn invalidates_metadata(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => matches!(
                code,
                ErrorCode::NotLeader
                    | ErrorCode::BrokerShuttingDown
                    | ErrorCode::StorageError
                    | ErrorCode::UnknownPartition
            ),
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Maps a gRPC status received from `address` to a client error.
    ///
    /// With the `ferrolog-error-code` metadata key present, the domain code wins. Without it,
    /// the status came from the transport or from a peer that is not a Ferrolog server (an HTTP
    /// server, a plain TCP listener, another gRPC service): those become `Unreachable`, with the
    /// gRPC code and the underlying cause in the reason so the user can see which it was.
    pub fn from_status(status: &Status, address: &str) -> Self {
        if let Some(name) = ferrolog_proto::status::code_name_of(status) {
            return match ErrorCode::from_str_name(name) {
                Some(code) => ClientError::Server {
                    code,
                    message: status.message().to_owned(),
                },
                // A newer server may send codes this client does not know yet.
                None => ClientError::Server {
                    code: ErrorCode::Unspecified,
                    message: format!("{name:?}: {}", status.message()),
                },
            };
        }
        let detail = status_detail(status);
        match status.code() {
            Code::Unavailable => ClientError::Unreachable {
                address: address.to_owned(),
                reason: detail,
            },
            Code::Unknown | Code::Internal | Code::Cancelled => ClientError::Unreachable {
                address: address.to_owned(),
                reason: format!(
                    "{detail} (the peer broke off the gRPC exchange; is it a Ferrolog server?)"
                ),
            },
            Code::Unimplemented => ClientError::Unreachable {
                address: address.to_owned(),
                reason: format!(
                    "the peer does not implement Ferrolog's gRPC API (is it a Ferrolog \
                     server?): {detail}"
                ),
            },
            Code::DeadlineExceeded => ClientError::Server {
                code: ErrorCode::RequestTimedOut,
                message: format!("deadline exceeded at {address}: {detail}"),
            },
            Code::InvalidArgument => ClientError::InvalidArgument(status.message().to_owned()),
            code => ClientError::Server {
                code: ErrorCode::Unspecified,
                message: format!("gRPC status {code:?} from {address}: {detail}"),
            },
        }
    }
}

/// Status message plus its source chain, which is where hyper and h2 put the actual cause
/// ("connection refused", "frame with invalid size").
fn status_detail(status: &Status) -> String {
    let mut detail = format!("{:?}", status.code());
    if !status.message().is_empty() {
        detail.push_str(": ");
        detail.push_str(status.message());
    }
    let mut source = status.source();
    let mut depth = 0;
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    fn status_with_code(code: Code, message: &str, error_code: &str) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            ferrolog_proto::ERROR_CODE_METADATA_KEY,
            error_code.parse().expect("ascii metadata value"),
        );
        Status::with_metadata(code, message, metadata)
    }

    #[test]
    fn given_error_code_metadata_when_mapped_then_domain_code_is_kept() {
        let status = status_with_code(
            Code::FailedPrecondition,
            "NOT_LEADER: partition orders-0 is led by broker 2 at 127.0.0.1:9390",
            "NOT_LEADER",
        );
        let error = ClientError::from_status(&status, "127.0.0.1:9290");
        assert_eq!(error.code(), Some(ErrorCode::NotLeader));
        assert!(error.is_retriable());
        assert_eq!(
            error.to_string(),
            "NOT_LEADER: partition orders-0 is led by broker 2 at 127.0.0.1:9390"
        );
    }

    #[test]
    fn given_message_without_code_prefix_when_displayed_then_code_is_prepended() {
        let status = status_with_code(Code::NotFound, "unknown topic 'x'", "UNKNOWN_TOPIC");
        let error = ClientError::from_status(&status, "a:1");
        assert_eq!(error.code(), Some(ErrorCode::UnknownTopic));
        assert!(!error.is_retriable());
        assert_eq!(error.to_string(), "UNKNOWN_TOPIC: unknown topic 'x'");
    }

    #[test]
    fn given_unknown_code_name_when_mapped_then_unspecified_keeps_the_name() {
        let status = status_with_code(Code::Internal, "boom", "SOMETHING_NEW");
        let error = ClientError::from_status(&status, "a:1");
        assert_eq!(error.code(), Some(ErrorCode::Unspecified));
        assert!(error.to_string().contains("SOMETHING_NEW"));
    }

    #[test]
    fn given_status_without_metadata_when_transport_failed_then_unreachable() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::Unimplemented,
        ] {
            let error = ClientError::from_status(&Status::new(code, "h2 protocol error"), "h:1");
            match &error {
                ClientError::Unreachable { address, .. } => assert_eq!(address, "h:1"),
                other => panic!("{code:?} mapped to {other:?}"),
            }
            assert!(
                error
                    .to_string()
                    .starts_with("could not reach a Ferrolog server at h:1")
            );
            assert!(error.is_retriable());
        }
    }

    #[test]
    fn given_unimplemented_status_when_mapped_then_reason_says_not_ferrolog() {
        let error = ClientError::from_status(&Status::unimplemented(""), "h:1");
        assert!(
            error
                .to_string()
                .contains("does not implement Ferrolog's gRPC API"),
            "{error}"
        );
    }

    #[test]
    fn retriable_classification_follows_kafka() {
        let retriable = [
            ErrorCode::NotLeader,
            ErrorCode::NotEnoughReplicas,
            ErrorCode::RequestTimedOut,
            ErrorCode::BrokerShuttingDown,
            ErrorCode::BrokerNotAvailable,
            ErrorCode::ConcurrentTransactions,
            ErrorCode::NotCoordinator,
        ];
        let fatal = [
            ErrorCode::InternalError,
            ErrorCode::UnknownTopic,
            ErrorCode::UnknownPartition,
            ErrorCode::RecordTooLarge,
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidConfig,
            ErrorCode::InvalidTopicName,
            ErrorCode::OffsetOutOfRange,
            ErrorCode::CorruptRecord,
            ErrorCode::ProducerFenced,
            ErrorCode::InvalidProducerEpoch,
            ErrorCode::InvalidTxnState,
            ErrorCode::TransactionalIdNotFound,
            ErrorCode::InvalidTransactionTimeout,
            ErrorCode::InvalidProducerIdMapping,
        ];
        for code in retriable {
            assert!(ClientError::server(code, "").is_retriable(), "{code:?}");
        }
        for code in fatal {
            assert!(!ClientError::server(code, "").is_retriable(), "{code:?}");
        }
        assert!(!ClientError::Closed.is_retriable());
    }
}
