use thiserror::Error;

/// Failures of the metadata store or of applying a record to the image.
#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("metadata store: {context}: {source}")]
    Store {
        context: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("metadata record at index {index} cannot be decoded: {source}")]
    Decode {
        index: u64,
        #[source]
        source: prost::DecodeError,
    },
    /// This node is not the active controller; `leader` is (id, controller address).
    #[error("this node is not the active controller{}", match .leader {
        Some((id, address)) => format!("; the leader is node {id} at {address}"),
        None => "; no controller leader is known (waiting for quorum)".to_owned(),
    })]
    NotController { leader: Option<(u64, String)> },
    #[error("timed out after {timeout_ms} ms waiting for {waiting_for}")]
    Timeout {
        waiting_for: &'static str,
        timeout_ms: u64,
    },
    /// The change was proposed but not seen committed in time: it may still commit. Never
    /// retried blindly, which could apply it twice.
    #[error(
        "the change was proposed but its commit was not confirmed within {timeout_ms} ms; it \
         may still take effect: check before retrying"
    )]
    CommitUnknown { timeout_ms: u64 },
    #[error("Raft: {0}")]
    Raft(String),
    /// A record that contradicts the image (for example deleting an unknown topic). Records
    /// are validated before they are appended, so this means a bug or a damaged log.
    #[error("metadata record cannot be applied: {0}")]
    InvalidRecord(String),
}
