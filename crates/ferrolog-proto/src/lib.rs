//! Ferrolog's wire contract: the generated code of `proto/ferrolog/v1`, the codec its
//! services use, the one mapping between domain error codes and gRPC statuses (`status`),
//! and the retry pacing every client and server applies to a peer (`retry`).
//!
//! A client depends on this crate and never on a server crate, so the wire contract is the
//! only thing the two sides share.

pub mod codec;
pub mod retry;
pub mod status;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ferrolog.v1");

    /// Encoded `FileDescriptorSet` of every Ferrolog proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("ferrolog_descriptor");
}

/// The status metadata key that carries a stable [`v1::ErrorCode`] name on every error.
pub const ERROR_CODE_METADATA_KEY: &str = "ferrolog-error-code";
