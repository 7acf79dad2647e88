//! The gRPC services of a node: the client data plane and topic administration.

mod admin;
mod client;
mod convert;
mod group;
mod replication;
mod replication_server;
mod status;
mod transaction;

pub use admin::AdminApi;
pub use client::ClientApi;
pub(crate) use convert::next_offset;

/// The pure conversions between wire records and batches that the fuzz targets (`fuzz/`)
/// drive; not part of the crate's API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::convert::{batches_to_records, next_offset, records_to_batch};
}
pub use group::GroupApi;
pub use replication::ReplicationApi;
pub use replication_server::ReplicationServer;
pub use transaction::TransactionApi;
