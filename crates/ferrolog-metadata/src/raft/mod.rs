//! The metadata quorum's Raft plumbing, on openraft 0.9 (storage-v2): the type config, the
//! sled-backed log store, the state machine that maintains the cluster image, and the gRPC
//! transport on the controller port.

mod flush;
mod incarnations;
// openraft fixes the error type of its storage traits; it is large, and not ours to box.
#[allow(clippy::result_large_err)]
mod log_store;
mod network;
mod peer_reachability;
mod runtime;
mod service;
#[allow(clippy::result_large_err)]
mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use flush::{FlushMode, FlushObserver};
pub use incarnations::{DuplicateNode, IncarnationTracker};
pub use log_store::SledLogStore;
pub use network::{GrpcNetwork, Sender};
pub use runtime::{FerrologRuntime, seed_election_rng};
pub use service::RaftApi;
pub use state_machine::MetadataStateMachine;

/// The pure snapshot codec the fuzz targets (`fuzz/`) drive; not part of the crate's API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::state_machine::{decode_snapshot_image, encode_snapshot_image};
}

/// Largest Raft or metadata-stream message on the controller port. openraft sends snapshots
/// in 3 MiB chunks and at most a few hundred entries per AppendEntries; metadata records are
/// small. Generous, but bounded.
pub const MAX_CONTROLLER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A controller's Raft node id; the same number as its `--node-id`.
pub type NodeId = u64;

/// One entry of the metadata log: metadata records (prost-encoded `MetadataRecord`s) that
/// are applied atomically, all or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadataCommand {
    pub records: Vec<Vec<u8>>,
}

/// What applying a command did: the log index it was applied at, or why it was refused
/// (every node refuses the same command the same way, so the image stays identical).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub index: u64,
    pub error: Option<String>,
}

openraft::declare_raft_types!(
    /// openraft's type configuration of the metadata quorum.
    pub TypeConfig:
        D = MetadataCommand,
        R = CommandOutcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = FerrologRuntime,
);

pub type StoreError = openraft::StorageError<NodeId>;

/// Encodes openraft's serde types for storage and transport.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
