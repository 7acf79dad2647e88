//! What a broker reads metadata from: the local quorum member on a controller, the
//! follower stream on a broker-only node, or an image its owner publishes (tests and the
//! simulation drive a broker without a quorum).

use std::sync::Arc;

use tokio::sync::watch;

use crate::{ClusterImage, MetadataFollower, MetadataQuorum};

/// A node's source of the cluster image.
#[derive(Clone)]
pub enum MetadataView {
    Quorum(Arc<MetadataQuorum>),
    Follower(Arc<MetadataFollower>),
    /// An image published by whoever holds the sender (see [`MetadataView::local`]).
    Local(Arc<watch::Sender<Arc<ClusterImage>>>),
}

impl MetadataView {
    /// A view of `image` whose changes the caller publishes through the returned sender.
    pub fn local(image: ClusterImage) -> (Self, Arc<watch::Sender<Arc<ClusterImage>>>) {
        let sender = Arc::new(watch::Sender::new(Arc::new(image)));
        (Self::Local(Arc::clone(&sender)), sender)
    }

    pub fn image(&self) -> Arc<ClusterImage> {
        match self {
            Self::Quorum(q) => q.image(),
            Self::Follower(f) => f.image(),
            Self::Local(l) => l.borrow().clone(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        match self {
            Self::Quorum(q) => q.subscribe(),
            Self::Follower(f) => f.subscribe(),
            Self::Local(l) => l.subscribe(),
        }
    }

    pub fn cluster_id(&self) -> String {
        match self {
            Self::Quorum(q) => q.cluster_id().to_owned(),
            Self::Follower(f) => f.cluster_id().unwrap_or_default(),
            Self::Local(_) => String::new(),
        }
    }

    /// The active controller's node id, if this node knows it.
    pub fn controller_leader(&self) -> Option<u64> {
        match self {
            Self::Quorum(q) => q.leader().map(|(id, _)| id),
            Self::Follower(_) | Self::Local(_) => None,
        }
    }
}
