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
    /// A record that contradicts the image (for example deleting an unknown topic). Records
    /// are validated before they are appended, so this means a bug or a damaged log.
    #[error("metadata record cannot be applied: {0}")]
    InvalidRecord(String),
}
