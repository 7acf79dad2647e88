//! The gRPC services of a node: the client data plane and topic administration.

mod admin;
mod client;
mod convert;
mod group;
mod replication;
mod replication_server;
mod status;

pub use admin::AdminApi;
pub use client::ClientApi;
pub(crate) use convert::next_offset;
pub use group::GroupApi;
pub use replication::ReplicationApi;
pub use replication_server::ReplicationServer;
