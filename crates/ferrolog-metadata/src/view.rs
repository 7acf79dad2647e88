//! What a broker reads metadata from: the local quorum member on a controller, or the
//! follower stream on a broker-only node.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{ClusterImage, MetadataFollower, MetadataQuorum};

/// A node's source of the cluster image.
#[derive(Clone)]
pub enum MetadataView {
    Quorum(Arc<MetadataQuorum>),
    Follower(Arc<MetadataFollower>),
}

impl MetadataView {
    pub fn image(&self) -> Arc<ClusterImage> {
        match self {
            Self::Quorum(q) => q.image(),
            Self::Follower(f) => f.image(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        match self {
            Self::Quorum(q) => q.subscribe(),
            Self::Follower(f) => f.subscribe(),
        }
    }

    pub fn cluster_id(&self) -> String {
        match self {
            Self::Quorum(q) => q.cluster_id().to_owned(),
            Self::Follower(f) => f.cluster_id().unwrap_or_default(),
        }
    }

    /// The active controller's node id, if this node knows it.
    pub fn controller_leader(&self) -> Option<u64> {
        match self {
            Self::Quorum(q) => q.leader().map(|(id, _)| id),
            Self::Follower(_) => None,
        }
    }
}
