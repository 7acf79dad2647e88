//! Ferrolog's cluster metadata: the metadata records, the cluster image that applying them
//! in order builds, typed topic configuration, and the durable store of the record log.
//!
//! The record log is replicated by a Raft quorum among the controllers (openraft, with a
//! sled-backed log store and a gRPC transport on the controller port); every node applies
//! the committed records to its own image. This crate must never depend on the broker or
//! the storage engine: brokers read the image, they do not write it.

mod error;
mod follower;
mod ids;
mod image;
mod quorum;
mod quorum_wire;
pub mod raft;
mod recent_commands;
mod topic_config;
mod view;

pub use error::MetadataError;
pub use follower::MetadataFollower;
pub use ids::{BrokerId, PartitionId, new_incarnation_id, random_id};
pub use image::{BrokerImage, ClusterImage, PartitionImage, ProducerIdBlock, TopicImage};
pub use quorum::{MetadataQuorum, QuorumConfig, QuorumStatus};
pub use recent_commands::{
    AppliedCommand, MAX_RECENT_COMMAND_BYTES, MAX_RECENT_COMMANDS, MetadataChanges,
};
pub use topic_config::{
    CleanupPolicy, ConfigEntry, ConfigError, ConfigResource, ConfigSource, TopicCompression,
    TopicConfig, alter_overrides,
};
pub use view::MetadataView;

/// The metadata record types, re-exported from the wire crate where they are defined.
pub mod records {
    pub use ferrolog_proto::v1::{
        ConfigChangeRecord, ConfigResourceType, CreatePartitionsRecord, CreateTopicRecord,
        DeleteTopicRecord, FenceBrokerRecord, MetadataRecord, PartitionAssignment,
        PartitionChangeRecord, ProducerIdsRecord, RegisterBrokerRecord, UnfenceBrokerRecord,
        metadata_record::Record,
    };
}
