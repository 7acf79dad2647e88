//! The gRPC services of a node: the client data plane and topic administration.

mod admin;
mod client;
mod convert;
mod replication;
mod status;

pub use admin::AdminApi;
pub use client::ClientApi;
pub use replication::ReplicationApi;
