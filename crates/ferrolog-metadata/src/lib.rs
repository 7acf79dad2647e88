//! Ferrolog's cluster metadata: the metadata records, the cluster image that applying them
//! in order builds, typed topic configuration, and the durable store of the record log.
//!
//! Today the store is a local sled-backed log on a single node; the metadata quorum issue
//! replaces its append path with Raft proposals while the records, the image and `apply`
//! stay exactly as they are. This crate must never depend on the broker or the storage
//! engine: brokers read the image, they do not write it.

mod error;
mod ids;
mod image;
mod store;
mod topic_config;

pub use error::MetadataError;
pub use ids::{BrokerId, PartitionId, random_id};
pub use image::{BrokerImage, ClusterImage, PartitionImage, TopicImage};
pub use store::MetadataStore;
pub use topic_config::{CleanupPolicy, ConfigError, TopicConfig};

/// The metadata record types, re-exported from the wire crate where they are defined.
pub mod records {
    pub use ferrolog_proto::v1::{
        ConfigChangeRecord, CreateTopicRecord, DeleteTopicRecord, MetadataRecord,
        PartitionAssignment, PartitionChangeRecord, RegisterBrokerRecord, metadata_record::Record,
    };
}
