//! The controller of one node, the front end of every metadata change: a [`Change`] is
//! submitted here, committed through the quorum when this node is the active controller,
//! and otherwise forwarded to the one that is, with a bounded retry while a leader is
//! elected. What a change commits is decided in `decide` (and `liveness`); how it travels,
//! in `forward` and `wire`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolog_metadata::{BrokerId, MetadataError, MetadataQuorum, QuorumStatus, TopicConfig};

use crate::ControllerError;
use crate::change::{AlterConfigsRequest, AlterPartitionRequest, Change, CreateTopicRequest};
use crate::decide::{
    decide_allocate_producer_ids, decide_alter_configs, decide_alter_partition,
    decide_create_partitions, decide_create_topic, decide_delete_topic, decide_elect_leader,
    decide_reassign_partition, decide_register_broker, validate,
};
use crate::forward::{Forwarder, is_retriable, remote_error};
use crate::liveness::{
    BrokerSessions, DEFAULT_LEADER_REBALANCE_INTERVAL, DEFAULT_SESSION_TIMEOUT, decide_fence_broker,
};

/// How long a request keeps looking for an active controller before it gives up.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between attempts while no leader is known.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The controller logic of one node.
pub struct Controller {
    /// The local quorum member; `None` on a broker-only node, which forwards everything.
    pub(crate) quorum: Option<Arc<MetadataQuorum>>,
    /// Clients of the other controllers, for changes this node cannot commit itself.
    pub(crate) forwarder: Forwarder,
    topic_defaults: TopicConfig,
    /// How long a submitted change keeps looking for an active controller.
    forward_timeout: Duration,
    /// Brokers' heartbeats, as the active controller receives them.
    pub(crate) sessions: BrokerSessions,
    /// How long a broker may go without a heartbeat before it is fenced.
    pub(crate) session_timeout: Duration,
    /// How often leaderships go back to preferred replicas; `None`: never.
    pub(crate) leader_rebalance_interval: Option<Duration>,
}

impl Controller {
    /// The controller of a quorum member: it commits changes itself while its node is the
    /// active controller, and forwards them to the one that is otherwise.
    pub fn new(quorum: Arc<MetadataQuorum>, topic_defaults: TopicConfig) -> Self {
        Self::build(Some(quorum), Vec::new(), topic_defaults)
    }

    /// A controller handle for a broker-only node: every change goes to `voters`.
    pub fn forwarding_only(voters: Vec<String>, topic_defaults: TopicConfig) -> Self {
        Self::build(None, voters, topic_defaults)
    }

    fn build(
        quorum: Option<Arc<MetadataQuorum>>,
        voters: Vec<String>,
        topic_defaults: TopicConfig,
    ) -> Self {
        Self {
            quorum,
            forwarder: Forwarder::new(voters),
            topic_defaults,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            sessions: BrokerSessions::default(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            leader_rebalance_interval: Some(DEFAULT_LEADER_REBALANCE_INTERVAL),
        }
    }

    pub fn quorum(&self) -> Option<&Arc<MetadataQuorum>> {
        self.quorum.as_ref()
    }

    pub fn topic_defaults(&self) -> &TopicConfig {
        &self.topic_defaults
    }

    /// How often the active controller moves leaderships back to preferred replicas
    /// (`None` disables it).
    pub fn with_leader_rebalance_interval(mut self, interval: Option<Duration>) -> Self {
        self.leader_rebalance_interval = interval;
        self
    }

    /// How long a broker may go without a heartbeat before it is fenced.
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Submits `change`: commits it here when this node is the active controller, or
    /// forwards it to the one that is, retrying (bounded by the forward timeout) while none
    /// is known. Returns the metadata log index the change committed at.
    #[tracing::instrument(skip(self))]
    pub async fn submit(&self, change: Change) -> Result<u64, ControllerError> {
        validate(&change, &self.topic_defaults)?;
        let deadline = Instant::now() + self.forward_timeout;
        loop {
            let last_error = match self.propose(&change).await {
                Ok(index) => return Ok(index),
                Err(ControllerError::Metadata(MetadataError::NotController { leader })) => {
                    match leader {
                        Some((id, address)) if Some(id) != self.node_id() => {
                            match self.forwarder.forward(&address, &change).await {
                                Ok(index) => return Ok(index),
                                Err(status) if is_retriable(&status) => {
                                    format!("leader {id} at {address}: {}", status.message())
                                }
                                Err(status) => return Err(remote_error(&status)),
                            }
                        }
                        Some(_) => "no controller leader is known".to_owned(),
                        None if self.quorum.is_none() => {
                            match self.forwarder.forward_to_any(&change).await {
                                Ok(index) => return Ok(index),
                                Err(Some(fatal)) => return Err(fatal),
                                Err(None) => "no controller accepted the request".to_owned(),
                            }
                        }
                        None => "no controller leader is known".to_owned(),
                    }
                }
                Err(ControllerError::Metadata(e @ MetadataError::Timeout { .. })) => e.to_string(),
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(ControllerError::NoQuorum {
                    timeout_ms: self.forward_timeout.as_millis() as u64,
                    last_error,
                });
            }
            tracing::debug!(%last_error, "retrying at the active controller");
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// Commits `change` if this node is the active controller, never forwarding: the
    /// ControllerService calls this, so a request is forwarded at most once.
    pub(crate) async fn commit_here(&self, change: &Change) -> Result<u64, ControllerError> {
        validate(change, &self.topic_defaults)?;
        let index = self.propose(change).await?;
        if let Change::RegisterBroker {
            id, incarnation_id, ..
        } = change
        {
            // Registering is a sign of life: a restarted broker must not be fenced again for
            // the silence before its restart.
            self.sessions
                .heartbeat(*id, *incarnation_id, Instant::now());
        }
        Ok(index)
    }

    /// Proposes the records `change` decides on, if this node is the active controller; the
    /// quorum runs the decision on a linearizable image.
    async fn propose(&self, change: &Change) -> Result<u64, ControllerError> {
        let defaults = &self.topic_defaults;
        let Some(quorum) = &self.quorum else {
            return Err(MetadataError::NotController { leader: None }.into());
        };
        quorum
            .propose_with(|image| match change {
                Change::CreateTopic(request) => decide_create_topic(image, request, defaults),
                Change::DeleteTopic(name) => decide_delete_topic(image, name),
                Change::RegisterBroker {
                    id,
                    address,
                    incarnation_id,
                } => {
                    self.refuse_duplicate_broker(image, *id, address, *incarnation_id)?;
                    let live = self.live_brokers(image, Instant::now());
                    Ok(decide_register_broker(
                        image,
                        *id,
                        address,
                        *incarnation_id,
                        &live,
                    ))
                }
                Change::AlterPartition(request) => decide_alter_partition(image, request),
                Change::ElectLeader {
                    topic,
                    partition,
                    leader,
                } => decide_elect_leader(image, topic, *partition, *leader),
                Change::CreatePartitions { topic, partitions } => {
                    decide_create_partitions(image, topic, *partitions)
                }
                Change::ReassignPartition {
                    topic,
                    partition,
                    replicas,
                } => decide_reassign_partition(image, topic, *partition, replicas),
                Change::ControlledShutdown(broker) => {
                    let mut live = self.live_brokers(image, Instant::now());
                    live.remove(broker);
                    Ok(decide_fence_broker(image, *broker, &live))
                }
                Change::AlterConfigs(request) => decide_alter_configs(image, request, defaults),
                Change::AllocateProducerIds {
                    broker,
                    incarnation_id,
                } => decide_allocate_producer_ids(image, *broker, *incarnation_id),
            })
            .await
    }

    /// Creates a topic; returns the metadata log index. A thin [`Controller::submit`].
    pub async fn create_topic(&self, request: CreateTopicRequest) -> Result<u64, ControllerError> {
        self.submit(Change::CreateTopic(request)).await
    }

    /// Deletes a topic. A thin [`Controller::submit`].
    pub async fn delete_topic(&self, name: &str) -> Result<u64, ControllerError> {
        self.submit(Change::DeleteTopic(name.to_owned())).await
    }

    /// Registers (or re-registers, after a restart) a broker at `address`. A thin
    /// [`Controller::submit`].
    pub async fn register_broker(
        &self,
        id: BrokerId,
        address: &str,
        incarnation_id: u64,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::RegisterBroker {
            id,
            address: address.to_owned(),
            incarnation_id,
        })
        .await
    }

    /// Gives the broker process the next block of producer ids; it reads the block from its
    /// image once the returned index is applied. A thin [`Controller::submit`].
    pub async fn allocate_producer_ids(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::AllocateProducerIds {
            broker,
            incarnation_id,
        })
        .await
    }

    /// Changes a partition's ISR at its leader's request. A thin [`Controller::submit`].
    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::AlterPartition(request)).await
    }

    /// Makes `leader` (an ISR member) the partition's leader. A thin [`Controller::submit`].
    pub async fn elect_leader(
        &self,
        topic: &str,
        partition: i32,
        leader: BrokerId,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::ElectLeader {
            topic: topic.to_owned(),
            partition,
            leader,
        })
        .await
    }

    /// Grows `topic` to `partitions` partitions. A thin [`Controller::submit`].
    pub async fn create_partitions(
        &self,
        topic: &str,
        partitions: i64,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::CreatePartitions {
            topic: topic.to_owned(),
            partitions,
        })
        .await
    }

    /// Starts moving a partition to `replicas` (see [`Change::ReassignPartition`]). A thin
    /// [`Controller::submit`].
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: i32,
        replicas: Vec<BrokerId>,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::ReassignPartition {
            topic: topic.to_owned(),
            partition,
            replicas,
        })
        .await
    }

    /// Sets and deletes configs of a topic or of the cluster defaults, all or nothing (see
    /// [`Change::AlterConfigs`]). A thin [`Controller::submit`].
    pub async fn alter_configs(
        &self,
        request: AlterConfigsRequest,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::AlterConfigs(request)).await
    }

    /// Moves `broker`'s leaderships to other live in-sync replicas and fences it, before
    /// it stops (controlled shutdown). A thin [`Controller::submit`].
    pub async fn controlled_shutdown(&self, broker: BrokerId) -> Result<u64, ControllerError> {
        self.submit(Change::ControlledShutdown(broker)).await
    }

    fn node_id(&self) -> Option<u64> {
        self.quorum.as_ref().map(|q| q.node_id())
    }

    /// The quorum as the active controller sees it (replication progress is only known
    /// there); this node's own view, with no leader, while there is none.
    pub async fn quorum_status(&self) -> QuorumStatus {
        let Some(quorum) = &self.quorum else {
            return self.forwarder.quorum_status_from_voters().await;
        };
        let local = quorum.status();
        let Some((leader, address)) = quorum.leader() else {
            return local;
        };
        if leader == quorum.node_id() {
            return local;
        }
        match self.forwarder.quorum_status_at(&address).await {
            Ok(remote) => remote,
            Err(error) => {
                tracing::warn!(%error, leader, "cannot read the leader's quorum status");
                local
            }
        }
    }
}
