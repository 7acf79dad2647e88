//! Broker errors as gRPC statuses that carry a stable domain code.

use ferrolog_proto::status::status_with_code;
use ferrolog_proto::v1::ErrorCode;
use tonic::Status;

use crate::BrokerError;

impl From<BrokerError> for Status {
    fn from(error: BrokerError) -> Self {
        let code = error.code();
        if matches!(code, ErrorCode::StorageError | ErrorCode::InternalError) {
            tracing::error!(%error, "request failed on storage");
        }
        status_with_code(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_keep_their_message_and_code() {
        let status = Status::from(BrokerError::UnknownTopic("orders".to_owned()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "unknown topic 'orders'");
        assert_eq!(
            ferrolog_proto::status::code_of(&status),
            Some(ErrorCode::UnknownTopic)
        );
    }
}
