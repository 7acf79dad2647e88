//! Turns admin requests into metadata records and commits them through the quorum. A
//! request that reaches a node which is not the active controller is forwarded to the one
//! that is, with a bounded retry while a leader is elected.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolog_metadata::records::{
    CreatePartitionsRecord, CreateTopicRecord, DeleteTopicRecord, MetadataRecord,
    PartitionAssignment, Record, RegisterBrokerRecord,
};
use ferrolog_metadata::{
    BrokerId, ClusterImage, MetadataError, MetadataQuorum, QuorumStatus, TopicConfig, random_id,
};
use ferrolog_proto::v1::controller_service_client::ControllerServiceClient;
use ferrolog_proto::v1::{self, ErrorCode};
use tonic::transport::Channel;

use crate::liveness::{
    BrokerSessions, DEFAULT_SESSION_TIMEOUT, decide_elect_offline, decide_fence_broker,
    decide_preferred_leaders,
};
use crate::partition_change::NextPartition;
use crate::{ControllerError, assign_replicas, code_of, validate_topic_name};

/// Upper bound on partitions per topic. Each partition holds open files (log, index, time
/// index per segment); an accidental `--partitions 1000000` must be refused, not exhaust
/// the node's file descriptors.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 4096;
/// Replication factor when a request does not say: 3 (capped at the live brokers), the
/// smallest that survives losing a broker while another is down for maintenance.
pub const DEFAULT_REPLICATION_FACTOR: i64 = 3;
/// How long a request keeps looking for an active controller before it gives up.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How often leaderships move back to preferred replicas. Kafka checks every 5 minutes;
/// 30 s keeps a restarted broker idle only briefly, and a move costs one metadata commit
/// and a leader change per partition.
pub const DEFAULT_LEADER_REBALANCE_INTERVAL: Duration = Duration::from_secs(30);
/// Pause between attempts while no leader is known.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// A create-topic request as the admin API receives it, before validation.
#[derive(Clone, Debug, Default)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: i64,
    /// 0 picks [`DEFAULT_REPLICATION_FACTOR`].
    pub replication_factor: i64,
    pub configs: BTreeMap<String, String>,
}

/// A change the controller commits.
#[derive(Clone, Debug)]
enum Change {
    CreateTopic(CreateTopicRequest),
    DeleteTopic(String),
    RegisterBroker {
        id: BrokerId,
        address: String,
        incarnation_id: u64,
    },
    AlterPartition(AlterPartitionRequest),
    ElectLeader {
        topic: String,
        partition: i32,
        leader: BrokerId,
    },
    ControlledShutdown(BrokerId),
    CreatePartitions {
        topic: String,
        partitions: i64,
    },
    ReassignPartition {
        topic: String,
        partition: i32,
        replicas: Vec<BrokerId>,
    },
}

/// A partition leader's request to change the ISR, at the epochs it knows.
#[derive(Clone, Debug)]
pub struct AlterPartitionRequest {
    pub topic: String,
    pub partition: i32,
    pub leader: BrokerId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub new_isr: Vec<BrokerId>,
}

/// The controller logic of one node.
pub struct Controller {
    /// The local quorum member; `None` on a broker-only node, which forwards everything.
    quorum: Option<Arc<MetadataQuorum>>,
    /// Controller addresses to forward to when no leader is known locally.
    voters: Vec<String>,
    topic_defaults: TopicConfig,
    forward_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    /// Brokers' heartbeats, as the active controller receives them.
    sessions: BrokerSessions,
    session_timeout: Duration,
    /// How often leaderships go back to preferred replicas; `None`: never.
    leader_rebalance_interval: Option<Duration>,
}

impl Controller {
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
            voters,
            topic_defaults,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            channels: Mutex::new(HashMap::new()),
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

    /// Records a heartbeat on this controller; whether the image has the broker fenced (or
    /// unknown), in which case it must register again. Every controller records
    /// heartbeats, not only the active one, so a newly elected controller already knows
    /// who is alive and fences a dead broker without waiting out a grace period.
    /// A process other than the registered one (another incarnation) is told it is fenced:
    /// it must register, which is refused while the registered process is alive.
    pub fn broker_heartbeat_here(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
    ) -> Result<bool, ControllerError> {
        let Some(quorum) = &self.quorum else {
            return Err(MetadataError::NotController { leader: None }.into());
        };
        self.sessions
            .heartbeat(broker, incarnation_id, Instant::now());
        Ok(quorum
            .image()
            .brokers
            .get(&broker)
            .is_none_or(|b| b.fenced || b.incarnation_id != incarnation_id))
    }

    /// Sends a broker's heartbeat to every controller (see `broker_heartbeat_here`);
    /// whether it is fenced, as the local image (on a controller) or any controller says.
    /// Each send gives up after `per_send`: a paused or unreachable controller must not
    /// hold up the next heartbeat to the others, or the active one fences this broker.
    pub async fn broker_heartbeat(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
        per_send: Duration,
    ) -> Result<bool, ControllerError> {
        let (local, targets): (Option<bool>, Vec<String>) = match &self.quorum {
            Some(quorum) => (
                Some(self.broker_heartbeat_here(broker, incarnation_id)?),
                quorum
                    .voter_addresses()
                    .into_iter()
                    .filter(|(id, _)| *id != quorum.node_id())
                    .map(|(_, address)| address)
                    .collect(),
            ),
            None => (None, self.voters.clone()),
        };
        let sends = targets.into_iter().map(|address| async move {
            let mut client = self.client(&address).map_err(|s| s.message().to_owned())?;
            let request = v1::BrokerHeartbeatRequest {
                broker_id: broker.0,
                incarnation_id,
            };
            match tokio::time::timeout(per_send, client.broker_heartbeat(request)).await {
                Ok(Ok(response)) => Ok(response.into_inner().fenced),
                Ok(Err(status)) => Err(format!("{address}: {}", status.message())),
                Err(_) => Err(format!("{address}: no answer within {per_send:?}")),
            }
        });
        let answers = futures::future::join_all(sends).await;
        if let Some(fenced) = local {
            return Ok(fenced);
        }
        let mut last_error = "no controller answered".to_owned();
        let mut fenced = None;
        for answer in answers {
            match answer {
                Ok(f) => fenced = Some(fenced.unwrap_or(false) || f),
                Err(error) => last_error = error,
            }
        }
        fenced.ok_or(ControllerError::NoQuorum {
            timeout_ms: 0,
            last_error,
        })
    }

    /// On the active controller: fences brokers that missed their session (moving their
    /// leaderships to live in-sync replicas) and elects leaders for offline partitions
    /// that have a live in-sync replica again. Runs for the life of the node.
    pub async fn run_liveness(self: Arc<Self>) {
        let Some(quorum) = self.quorum.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(self.session_timeout / 6);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rebalance = Instant::now();
        loop {
            tick.tick().await;
            let now = Instant::now();
            let status = quorum.status();
            let active = status.leader == Some(quorum.node_id());
            self.sessions.set_active(active.then_some(status.term), now);
            if !active {
                continue;
            }
            let image = quorum.image();
            let live = self.sessions.live(
                image.brokers.values().map(|b| (b.id, b.incarnation_id)),
                self.session_timeout,
                now,
            );
            for broker in image.brokers.values().filter(|b| !b.fenced) {
                if live.contains(&broker.id) {
                    continue;
                }
                let id = broker.id;
                tracing::warn!(broker = %id, timeout_ms = self.session_timeout.as_millis() as u64,
                    "broker missed its session; fencing it and moving its leaderships");
                let result = quorum
                    .propose_with(|image| {
                        Ok::<_, ControllerError>(decide_fence_broker(image, id, &live))
                    })
                    .await;
                if let Err(error) = result {
                    tracing::warn!(broker = %id, %error, "cannot fence broker");
                }
            }
            // Decided first on the image at hand, so an idle tick costs no Raft round trip;
            // propose_with decides again on a linearizable image before committing.
            if !decide_elect_offline(&image, &live).is_empty() {
                let result = quorum
                    .propose_with(|image| {
                        Ok::<_, ControllerError>(decide_elect_offline(image, &live))
                    })
                    .await;
                if let Err(error) = result {
                    tracing::warn!(%error, "cannot elect leaders for offline partitions");
                }
            }
            if let Some(interval) = self.leader_rebalance_interval
                && last_rebalance.elapsed() >= interval
                && !decide_preferred_leaders(&image, &live).is_empty()
            {
                last_rebalance = Instant::now();
                let result = quorum
                    .propose_with(|image| {
                        Ok::<_, ControllerError>(decide_preferred_leaders(image, &live))
                    })
                    .await;
                if let Err(error) = result {
                    tracing::warn!(%error, "cannot move leaderships to preferred replicas");
                }
            }
        }
    }

    /// Moves `broker`'s leaderships to other live in-sync replicas and fences it, before
    /// it stops (controlled shutdown).
    pub async fn controlled_shutdown(&self, broker: BrokerId) -> Result<u64, ControllerError> {
        self.submit(Change::ControlledShutdown(broker)).await
    }

    pub async fn controlled_shutdown_here(&self, broker: BrokerId) -> Result<u64, ControllerError> {
        self.commit_here(&Change::ControlledShutdown(broker)).await
    }

    /// Creates a topic through the active controller; returns the metadata log index.
    pub async fn create_topic(&self, request: CreateTopicRequest) -> Result<u64, ControllerError> {
        validate_create(&request, &self.topic_defaults)?;
        self.submit(Change::CreateTopic(request)).await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<u64, ControllerError> {
        self.submit(Change::DeleteTopic(name.to_owned())).await
    }

    /// Registers (or re-registers, after a restart) a broker at `address`.
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

    /// Changes a partition's ISR at its leader's request.
    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
    ) -> Result<u64, ControllerError> {
        self.submit(Change::AlterPartition(request)).await
    }

    pub async fn alter_partition_here(
        &self,
        request: AlterPartitionRequest,
    ) -> Result<u64, ControllerError> {
        self.commit_here(&Change::AlterPartition(request)).await
    }

    /// Makes `leader` (an ISR member) the partition's leader.
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

    pub async fn elect_leader_here(
        &self,
        topic: &str,
        partition: i32,
        leader: BrokerId,
    ) -> Result<u64, ControllerError> {
        self.commit_here(&Change::ElectLeader {
            topic: topic.to_owned(),
            partition,
            leader,
        })
        .await
    }

    /// Grows `topic` to `partitions` partitions.
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

    pub async fn create_partitions_here(
        &self,
        topic: &str,
        partitions: i64,
    ) -> Result<u64, ControllerError> {
        self.commit_here(&Change::CreatePartitions {
            topic: topic.to_owned(),
            partitions,
        })
        .await
    }

    /// Starts moving a partition to `replicas` (see [`decide_reassign_partition`]).
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

    pub async fn reassign_partition_here(
        &self,
        topic: &str,
        partition: i32,
        replicas: Vec<BrokerId>,
    ) -> Result<u64, ControllerError> {
        self.commit_here(&Change::ReassignPartition {
            topic: topic.to_owned(),
            partition,
            replicas,
        })
        .await
    }

    /// Commits a change if this node is the active controller, never forwarding (the
    /// ControllerService calls this, so a request is forwarded at most once).
    async fn commit_here(&self, change: &Change) -> Result<u64, ControllerError> {
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
                    Ok(decide_register_broker(image, *id, address, *incarnation_id))
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
                    let mut live = self.sessions.live(
                        image.brokers.values().map(|b| (b.id, b.incarnation_id)),
                        self.session_timeout,
                        Instant::now(),
                    );
                    live.remove(broker);
                    Ok(decide_fence_broker(image, *broker, &live))
                }
            })
            .await
    }

    pub async fn create_topic_here(
        &self,
        request: CreateTopicRequest,
    ) -> Result<u64, ControllerError> {
        validate_create(&request, &self.topic_defaults)?;
        self.commit_here(&Change::CreateTopic(request)).await
    }

    pub async fn delete_topic_here(&self, name: &str) -> Result<u64, ControllerError> {
        self.commit_here(&Change::DeleteTopic(name.to_owned()))
            .await
    }

    pub async fn register_broker_here(
        &self,
        id: BrokerId,
        address: &str,
        incarnation_id: u64,
    ) -> Result<u64, ControllerError> {
        let index = self
            .commit_here(&Change::RegisterBroker {
                id,
                address: address.to_owned(),
                incarnation_id,
            })
            .await?;
        // Registering is a sign of life: a restarted broker must not be fenced again for
        // the silence before its restart.
        self.sessions.heartbeat(id, incarnation_id, Instant::now());
        Ok(index)
    }

    /// A registration by a new process (another incarnation, at another address) of a
    /// broker whose registered process is alive and unfenced is refused: two processes
    /// with one broker id (a cloned data directory, a copy-pasted config) must not take
    /// turns leading. Once the old process stops, it is fenced after its session, and the
    /// new one registers.
    fn refuse_duplicate_broker(
        &self,
        image: &ClusterImage,
        id: BrokerId,
        address: &str,
        incarnation_id: u64,
    ) -> Result<(), ControllerError> {
        let Some(registered) = image.brokers.get(&id) else {
            return Ok(());
        };
        // The same address is the same machine and port, which two live processes cannot
        // share: a restart, not a duplicate, and it re-registers at once.
        if registered.fenced
            || registered.incarnation_id == incarnation_id
            || registered.address == address
        {
            return Ok(());
        }
        let heard = self.sessions.heard_within(
            id,
            registered.incarnation_id,
            self.session_timeout,
            Instant::now(),
        );
        match heard {
            Some(age) => Err(ControllerError::DuplicateBrokerId {
                broker: id.0,
                registered_address: registered.address.clone(),
                address: address.to_owned(),
                heard_ms: age.as_millis() as u64,
            }),
            None => Ok(()),
        }
    }

    /// Commits here, or forwards to the leader; retries (bounded) while there is none.
    #[tracing::instrument(skip(self))]
    async fn submit(&self, change: Change) -> Result<u64, ControllerError> {
        let deadline = Instant::now() + self.forward_timeout;
        loop {
            let last_error = match self.commit_here(&change).await {
                Ok(index) => return Ok(index),
                Err(ControllerError::Metadata(MetadataError::NotController { leader })) => {
                    match leader {
                        Some((id, address)) if Some(id) != self.node_id() => {
                            match self.forward(&address, &change).await {
                                Ok(index) => return Ok(index),
                                Err(status) if is_retriable(&status) => {
                                    format!("leader {id} at {address}: {}", status.message())
                                }
                                Err(status) => {
                                    return Err(ControllerError::Remote {
                                        code: code_of(&status).unwrap_or(ErrorCode::Unspecified),
                                        message: status.message().to_owned(),
                                    });
                                }
                            }
                        }
                        Some(_) => "no controller leader is known".to_owned(),
                        None if self.quorum.is_none() => match self.forward_to_any(&change).await {
                            Ok(index) => return Ok(index),
                            Err(Some(fatal)) => return Err(fatal),
                            Err(None) => "no controller accepted the request".to_owned(),
                        },
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

    fn node_id(&self) -> Option<u64> {
        self.quorum.as_ref().map(|q| q.node_id())
    }

    /// Tries every configured controller; `Err(None)` when none accepted (retry later),
    /// `Err(Some(e))` for an answer that retrying cannot change.
    async fn forward_to_any(&self, change: &Change) -> Result<u64, Option<ControllerError>> {
        for address in &self.voters {
            match self.forward(address, change).await {
                Ok(index) => return Ok(index),
                Err(status) if is_retriable(&status) => continue,
                Err(status) => {
                    return Err(Some(ControllerError::Remote {
                        code: code_of(&status).unwrap_or(ErrorCode::Unspecified),
                        message: status.message().to_owned(),
                    }));
                }
            }
        }
        Err(None)
    }

    fn client(&self, address: &str) -> Result<ControllerServiceClient<Channel>, tonic::Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Channel::from_shared(format!("http://{address}"))
                    .map_err(|e| {
                        tonic::Status::invalid_argument(format!("bad address {address}: {e}"))
                    })?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy();
                channels.insert(address.to_owned(), channel.clone());
                channel
            }
        };
        Ok(ControllerServiceClient::new(channel))
    }

    async fn forward(&self, address: &str, change: &Change) -> Result<u64, tonic::Status> {
        let mut client = self.client(address)?;
        Ok(match change {
            Change::CreateTopic(r) => {
                client
                    .create_topic(v1::CreateTopicRequest {
                        name: r.name.clone(),
                        partitions: r.partitions as i32,
                        replication_factor: r.replication_factor as i32,
                        configs: r.configs.clone().into_iter().collect(),
                    })
                    .await?
                    .into_inner()
                    .metadata_index
            }
            Change::DeleteTopic(name) => {
                client
                    .delete_topic(v1::DeleteTopicRequest { name: name.clone() })
                    .await?
                    .into_inner()
                    .metadata_index
            }
            Change::RegisterBroker {
                id,
                address,
                incarnation_id,
            } => {
                client
                    .register_broker(v1::RegisterBrokerRequest {
                        broker_id: id.0,
                        address: address.clone(),
                        incarnation_id: *incarnation_id,
                    })
                    .await?
                    .into_inner()
                    .metadata_index
            }
            Change::AlterPartition(r) => {
                client
                    .alter_partition(v1::AlterPartitionRequest {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        leader_id: r.leader.0,
                        leader_epoch: r.leader_epoch,
                        partition_epoch: r.partition_epoch,
                        new_isr: r.new_isr.iter().map(|b| b.0).collect(),
                    })
                    .await?
                    .into_inner()
                    .metadata_index
            }
            Change::ControlledShutdown(broker) => {
                client
                    .controlled_shutdown(v1::ControlledShutdownRequest {
                        broker_id: broker.0,
                    })
                    .await?
                    .into_inner()
                    .metadata_index
            }
            Change::CreatePartitions { topic, partitions } => {
                client
                    .create_partitions(v1::CreatePartitionsRequest {
                        topic: topic.clone(),
                        partitions: i32::try_from(*partitions).unwrap_or(i32::MAX),
                    })
                    .await?
                    .into_inner()
                    .metadata_index
            }
            Change::ReassignPartition {
                topic,
                partition,
                replicas,
            } => {
                client
                    .reassign_partition(v1::ReassignPartitionRequest {
                        topic: topic.clone(),
                        partition: *partition,
                        replicas: replicas.iter().map(|b| b.0).collect(),
                    })
                    .await?
                    .into_inner()
                    .metadata_index
            }
            Change::ElectLeader {
                topic,
                partition,
                leader,
            } => {
                client
                    .elect_leader(v1::ElectLeaderRequest {
                        topic: topic.clone(),
                        partition: *partition,
                        leader_id: leader.0,
                    })
                    .await?
                    .into_inner()
                    .metadata_index
            }
        })
    }

    /// The quorum as the active controller sees it (replication progress is only known
    /// there); this node's own view, with no leader, while there is none.
    pub async fn quorum_status(&self) -> QuorumStatus {
        let Some(quorum) = &self.quorum else {
            return self.remote_quorum_status().await;
        };
        let local = quorum.status();
        let Some((leader, address)) = quorum.leader() else {
            return local;
        };
        if leader == quorum.node_id() {
            return local;
        }
        let Ok(mut client) = self.client(&address) else {
            return local;
        };
        match client.quorum_status(v1::QuorumStatusRequest {}).await {
            Ok(remote) => status_from_wire(remote.into_inner()),
            Err(error) => {
                tracing::warn!(%error, leader, "cannot read the leader's quorum status");
                local
            }
        }
    }
}

impl Controller {
    /// A broker-only node asks the controllers: the first that knows a leader, then that
    /// leader itself (only it knows replication progress).
    async fn remote_quorum_status(&self) -> QuorumStatus {
        let mut best = QuorumStatus::default();
        for address in &self.voters {
            let Ok(mut client) = self.client(address) else {
                continue;
            };
            let Ok(answer) = client.quorum_status(v1::QuorumStatusRequest {}).await else {
                continue;
            };
            let status = status_from_wire(answer.into_inner());
            if status.leader.is_some_and(|l| l == status.node_id) {
                return status;
            }
            if status.leader.is_some() {
                best = status;
            }
        }
        best
    }
}

/// Whether a forwarded request certainly did not take effect, so sending it again cannot
/// apply it twice: the controller said it is not the leader, or it was never reached.
fn is_retriable(status: &tonic::Status) -> bool {
    match code_of(status) {
        Some(code) => code == ErrorCode::NotController,
        None => status.code() == tonic::Code::Unavailable,
    }
}

/// The wire form of a quorum status, and back.
pub fn status_to_wire(status: &QuorumStatus) -> v1::QuorumStatusResponse {
    v1::QuorumStatusResponse {
        node_id: status.node_id as i32,
        leader_id: status.leader.map_or(-1, |l| l as i32),
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        snapshot_index: status.snapshot_index,
        purged_index: status.purged_index,
        last_log_index: status.last_log_index,
        controllers: status
            .members
            .iter()
            .map(|(id, address, voter, matched)| v1::ControllerStatus {
                node_id: *id as i32,
                address: address.clone(),
                voter: *voter,
                matched_index: matched.unwrap_or(0),
                lag: matched.map_or(status.commit_index, |m| {
                    status.commit_index.saturating_sub(m)
                }),
            })
            .collect(),
        state: status.state.clone(),
    }
}

fn status_from_wire(wire: v1::QuorumStatusResponse) -> QuorumStatus {
    QuorumStatus {
        node_id: wire.node_id.max(0) as u64,
        leader: (wire.leader_id >= 0).then_some(wire.leader_id as u64),
        term: wire.term,
        last_log_index: wire.last_log_index,
        commit_index: wire.commit_index,
        applied_index: wire.applied_index,
        snapshot_index: wire.snapshot_index,
        purged_index: wire.purged_index,
        state: wire.state,
        members: wire
            .controllers
            .into_iter()
            .map(|c| {
                (
                    c.node_id.max(0) as u64,
                    c.address,
                    c.voter,
                    Some(c.matched_index),
                )
            })
            .collect(),
    }
}

/// Checks what can be checked without the image.
fn validate_create(
    request: &CreateTopicRequest,
    defaults: &TopicConfig,
) -> Result<(), ControllerError> {
    validate_topic_name(&request.name)?;
    if request.partitions < 1 || request.partitions > i64::from(MAX_PARTITIONS_PER_TOPIC) {
        return Err(ControllerError::InvalidPartitions {
            requested: request.partitions,
            max: MAX_PARTITIONS_PER_TOPIC,
        });
    }
    defaults.with_overrides(&request.configs)?;
    Ok(())
}

/// The records that create a topic, decided from the current image.
pub fn decide_create_topic(
    image: &ClusterImage,
    request: &CreateTopicRequest,
    defaults: &TopicConfig,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    validate_create(request, defaults)?;
    if image.topic(&request.name).is_some() {
        return Err(ControllerError::TopicAlreadyExists(request.name.clone()));
    }
    // Replicas go to live brokers only.
    let brokers = unfenced_brokers(image);
    if brokers.is_empty() {
        return Err(ControllerError::NoBrokersRegistered);
    }
    let replication_factor = match request.replication_factor {
        0 => DEFAULT_REPLICATION_FACTOR.min(brokers.len() as i64),
        rf => rf,
    };
    if replication_factor < 1 || replication_factor as usize > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor {
            requested: replication_factor,
            brokers: brokers.len(),
        });
    }
    let layout = assign_replicas(
        &brokers,
        request.partitions as u32,
        replication_factor as u32,
        image.topics.len(),
    );
    let record = CreateTopicRecord {
        name: request.name.clone(),
        topic_id: random_id(),
        assignments: layout
            .into_iter()
            .enumerate()
            .map(|(partition, replicas)| PartitionAssignment {
                partition: partition as i32,
                replicas: replicas.into_iter().map(|b| b.0).collect(),
            })
            .collect(),
        configs: request.configs.clone().into_iter().collect(),
    };
    Ok(vec![MetadataRecord {
        record: Some(Record::CreateTopic(record)),
    }])
}

pub fn decide_delete_topic(
    image: &ClusterImage,
    name: &str,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let topic = image
        .topic(name)
        .ok_or_else(|| ControllerError::UnknownTopic(name.to_owned()))?;
    Ok(vec![MetadataRecord {
        record: Some(Record::DeleteTopic(DeleteTopicRecord {
            name: name.to_owned(),
            topic_id: topic.topic_id.clone(),
        })),
    }])
}

fn find_partition<'a>(
    image: &'a ClusterImage,
    topic: &str,
    partition: i32,
) -> Result<&'a ferrolog_metadata::PartitionImage, ControllerError> {
    image
        .topic(topic)
        .and_then(|t| {
            usize::try_from(partition)
                .ok()
                .and_then(|i| t.partitions.get(i))
        })
        .ok_or_else(|| ControllerError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
        })
}

/// An ISR change, if the request comes from the current leader at the current epochs (a
/// deposed or partitioned-away leader's request is refused: it must not shrink the ISR to
/// itself and go on acknowledging alone). The new ISR holds the leader and only replicas.
pub fn decide_alter_partition(
    image: &ClusterImage,
    request: &AlterPartitionRequest,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let p = find_partition(image, &request.topic, request.partition)?;
    if p.leader != Some(request.leader)
        || p.leader_epoch != request.leader_epoch
        || p.partition_epoch != request.partition_epoch
    {
        return Err(ControllerError::FencedEpoch {
            topic: request.topic.clone(),
            partition: request.partition,
            leader: request.leader.0,
            leader_epoch: request.leader_epoch,
            partition_epoch: request.partition_epoch,
            current_leader: p.leader.map(|l| l.0),
            current_leader_epoch: p.leader_epoch,
            current_partition_epoch: p.partition_epoch,
        });
    }
    let invalid = |reason| ControllerError::InvalidIsr {
        topic: request.topic.clone(),
        partition: request.partition,
        isr: request.new_isr.iter().map(|b| b.0).collect(),
        reason,
    };
    if !request.new_isr.contains(&request.leader) {
        return Err(invalid("the leader must stay in its ISR"));
    }
    if request.new_isr.iter().any(|b| !p.replicas.contains(b)) {
        return Err(invalid("every ISR member must be a replica"));
    }
    let mut isr = request.new_isr.clone();
    isr.sort_unstable();
    isr.dedup();
    let mut current = p.isr.clone();
    current.sort_unstable();
    if isr == current {
        return Ok(Vec::new());
    }
    // Replica order, so the preferred replica reads first.
    let isr: Vec<BrokerId> = p
        .replicas
        .iter()
        .copied()
        .filter(|r| isr.contains(r))
        .collect();
    Ok(NextPartition::from(&request.topic, p)
        .isr(isr)
        .into_record()
        .into_iter()
        .collect())
}

/// A new leader from the ISR, at the next leader epoch. Electing the current leader is a
/// no-op.
pub fn decide_elect_leader(
    image: &ClusterImage,
    topic: &str,
    partition: i32,
    leader: BrokerId,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let p = find_partition(image, topic, partition)?;
    if p.leader == Some(leader) {
        return Ok(Vec::new());
    }
    if !p.isr.contains(&leader) {
        return Err(ControllerError::IneligibleReplica {
            topic: topic.to_owned(),
            partition,
            broker: leader.0,
            isr: p.isr.iter().map(|b| b.0).collect(),
        });
    }
    Ok(NextPartition::from(topic, p)
        .leader(Some(leader))
        .into_record()
        .into_iter()
        .collect())
}

/// Partitions numbered on from the topic's current count, placed on the unfenced brokers
/// with the topic's replication factor, continuing the rotation of its existing leaders.
pub fn decide_create_partitions(
    image: &ClusterImage,
    topic: &str,
    partitions: i64,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let existing = image
        .topic(topic)
        .ok_or_else(|| ControllerError::UnknownTopic(topic.to_owned()))?;
    let current = existing.partitions.len();
    if partitions <= current as i64 || partitions > i64::from(MAX_PARTITIONS_PER_TOPIC) {
        return Err(ControllerError::PartitionsMustGrow {
            topic: topic.to_owned(),
            current,
            requested: partitions,
            max: MAX_PARTITIONS_PER_TOPIC,
        });
    }
    let brokers = unfenced_brokers(image);
    let replication_factor = existing.replication_factor().max(1);
    if replication_factor > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor {
            requested: replication_factor as i64,
            brokers: brokers.len(),
        });
    }
    let start = existing
        .partitions
        .first()
        .and_then(|p| p.replicas.first())
        .and_then(|leader| brokers.iter().position(|b| b == leader))
        .unwrap_or(0);
    let layout = assign_replicas(
        &brokers,
        partitions as u32,
        replication_factor as u32,
        start,
    );
    let record = CreatePartitionsRecord {
        topic: topic.to_owned(),
        topic_id: existing.topic_id.clone(),
        assignments: layout
            .into_iter()
            .enumerate()
            .skip(current)
            .map(|(partition, replicas)| PartitionAssignment {
                partition: partition as i32,
                replicas: replicas.into_iter().map(|b| b.0).collect(),
            })
            .collect(),
    };
    Ok(vec![MetadataRecord {
        record: Some(Record::CreatePartitions(record)),
    }])
}

/// Starts moving a partition to `target` (Kafka's KIP-455): the replica list becomes the
/// target followed by the replicas that leave; new replicas start copying the log from the
/// leader and join the ISR through the leader's ordinary ISR expansion. The move completes
/// (see `NextPartition`) in the change that puts the last target replica in sync, so the
/// partition never has fewer in-sync copies than before. A target that is a reordering of
/// the current replicas only changes the preferred leader.
pub fn decide_reassign_partition(
    image: &ClusterImage,
    topic: &str,
    partition: i32,
    target: &[BrokerId],
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let p = find_partition(image, topic, partition)?;
    let invalid = |reason: String| ControllerError::InvalidReplicaAssignment {
        topic: topic.to_owned(),
        partition,
        replicas: target.iter().map(|b| b.0).collect(),
        reason,
    };
    if target.is_empty() {
        return Err(invalid("at least one replica is needed".to_owned()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for broker in target {
        if !seen.insert(*broker) {
            return Err(invalid(format!("broker {broker} appears twice")));
        }
        match image.brokers.get(broker) {
            None => return Err(invalid(format!("broker {broker} is not registered"))),
            // An existing replica may stay while fenced (it is down for a restart); a new
            // one must be up to copy the log.
            Some(b) if b.fenced && !p.replicas.contains(broker) => {
                return Err(invalid(format!("broker {broker} is fenced")));
            }
            Some(_) => {}
        }
    }
    if p.is_reassigning() {
        if p.target_replicas() == target {
            return Ok(Vec::new());
        }
        return Err(ControllerError::ReassignmentInProgress {
            topic: topic.to_owned(),
            partition,
            adding: p.adding_replicas.iter().map(|b| b.0).collect(),
            removing: p.removing_replicas.iter().map(|b| b.0).collect(),
        });
    }
    let mut next = NextPartition::from(topic, p);
    next.adding = target
        .iter()
        .copied()
        .filter(|b| !p.replicas.contains(b))
        .collect();
    next.removing = p
        .replicas
        .iter()
        .copied()
        .filter(|b| !target.contains(b))
        .collect();
    next.replicas = target.iter().chain(&next.removing).copied().collect();
    // The ISR in the new replica order, so the preferred replica reads first.
    next.isr = next
        .replicas
        .iter()
        .copied()
        .filter(|r| p.isr.contains(r))
        .collect();
    Ok(next.into_record().into_iter().collect())
}

fn unfenced_brokers(image: &ClusterImage) -> Vec<BrokerId> {
    image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| b.id)
        .collect()
}

/// Nothing when this process (incarnation) is registered, unfenced, at that address
/// already; a restarted process records its new incarnation, whose heartbeats are the ones
/// that keep the broker alive from then on; registering again unfences it.
pub fn decide_register_broker(
    image: &ClusterImage,
    id: BrokerId,
    address: &str,
    incarnation_id: u64,
) -> Vec<MetadataRecord> {
    if image
        .brokers
        .get(&id)
        .is_some_and(|b| b.address == address && !b.fenced && b.incarnation_id == incarnation_id)
    {
        return Vec::new();
    }
    vec![MetadataRecord {
        record: Some(Record::RegisterBroker(RegisterBrokerRecord {
            broker_id: id.0,
            address: address.to_owned(),
            incarnation_id,
        })),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with_broker() -> ClusterImage {
        let mut image = ClusterImage::default();
        for record in decide_register_broker(&image.clone(), BrokerId(1), "127.0.0.1:9290", 7) {
            image.apply(1, &record).expect("apply");
        }
        image
    }

    fn request(name: &str, partitions: i64) -> CreateTopicRequest {
        CreateTopicRequest {
            name: name.to_owned(),
            partitions,
            ..Default::default()
        }
    }

    #[test]
    fn create_topic_defaults_replication_to_the_registered_brokers() {
        let image = image_with_broker();
        let records = decide_create_topic(&image, &request("orders", 3), &TopicConfig::default())
            .expect("create");
        let Some(Record::CreateTopic(topic)) = &records[0].record else {
            panic!("{records:?}")
        };
        assert_eq!(topic.assignments.len(), 3);
        assert!(topic.assignments.iter().all(|a| a.replicas == vec![1]));
    }

    #[test]
    fn bad_requests_are_refused_with_their_codes() {
        let mut image = image_with_broker();
        let defaults = TopicConfig::default();
        for record in decide_create_topic(&image, &request("orders", 1), &defaults).expect("create")
        {
            image.apply(2, &record).expect("apply");
        }
        let cases = [
            (request("orders", 1), ErrorCode::TopicAlreadyExists),
            (request("bad name", 1), ErrorCode::InvalidTopicName),
            (request("t", 0), ErrorCode::InvalidPartitions),
            (request("t", -3), ErrorCode::InvalidPartitions),
            (request("t", 1_000_000), ErrorCode::InvalidPartitions),
            (
                CreateTopicRequest {
                    replication_factor: 2,
                    ..request("t", 1)
                },
                ErrorCode::InvalidReplicationFactor,
            ),
            (
                CreateTopicRequest {
                    configs: BTreeMap::from([("retention.ms".into(), "soon".into())]),
                    ..request("t", 1)
                },
                ErrorCode::InvalidConfig,
            ),
        ];
        for (req, code) in cases {
            let err = decide_create_topic(&image, &req, &defaults).expect_err(&req.name);
            assert_eq!(err.code(), code, "{}: {err}", req.name);
        }
        assert!(matches!(
            decide_delete_topic(&image, "nope"),
            Err(ControllerError::UnknownTopic(_))
        ));
        // The registered process registering again changes nothing; a restarted one (a new
        // incarnation) records itself.
        assert!(decide_register_broker(&image, BrokerId(1), "127.0.0.1:9290", 7).is_empty());
        assert_eq!(
            decide_register_broker(&image, BrokerId(1), "127.0.0.1:9290", 8).len(),
            1
        );
    }

    /// Three brokers and an RF=3 topic "t" with one partition.
    fn replicated_image() -> ClusterImage {
        let mut image = ClusterImage::default();
        let mut index = 0;
        let mut apply = |image: &mut ClusterImage, records: Vec<MetadataRecord>| {
            for record in records {
                index += 1;
                image.apply(index, &record).expect("apply");
            }
        };
        for id in 1..=3 {
            let records = decide_register_broker(&image, BrokerId(id), &format!("h{id}:1"), 1);
            apply(&mut image, records);
        }
        let create = CreateTopicRequest {
            replication_factor: 3,
            ..request("t", 1)
        };
        let records =
            decide_create_topic(&image, &create, &TopicConfig::default()).expect("create");
        apply(&mut image, records);
        image
    }

    fn alter(image: &ClusterImage, isr: &[i32]) -> AlterPartitionRequest {
        let p = &image.topic("t").expect("topic").partitions[0];
        AlterPartitionRequest {
            topic: "t".into(),
            partition: 0,
            leader: p.leader.expect("leader"),
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: isr.iter().copied().map(BrokerId).collect(),
        }
    }

    #[test]
    fn isr_changes_commit_only_from_the_current_leader_at_the_current_epochs() {
        let mut image = replicated_image();
        let leader = image.topic("t").expect("topic").partitions[0]
            .leader
            .expect("leader");
        let follower = [1, 2, 3]
            .into_iter()
            .find(|b| *b != leader.0)
            .expect("follower");
        let shrunk: Vec<i32> = [1, 2, 3].into_iter().filter(|b| *b != follower).collect();

        let request = alter(&image, &shrunk);
        let records = decide_alter_partition(&image, &request).expect("shrink");
        image.apply(100, &records[0]).expect("apply");
        let p = &image.topic("t").expect("topic").partitions[0];
        assert_eq!(p.isr.len(), 2);
        assert_eq!(p.partition_epoch, 1);

        // The same request again is at a stale partition epoch now.
        let stale = decide_alter_partition(&image, &request).expect_err("stale");
        assert_eq!(stale.code(), ErrorCode::FencedEpoch);
        // A request from a broker that is not the leader is stale too.
        let mut impostor = alter(&image, &[1, 2, 3]);
        impostor.leader = BrokerId(follower);
        assert_eq!(
            decide_alter_partition(&image, &impostor)
                .expect_err("not leader")
                .code(),
            ErrorCode::FencedEpoch
        );
        // The leader never drops itself, and only replicas may join.
        let without_leader: Vec<i32> = shrunk.iter().copied().filter(|b| *b != leader.0).collect();
        assert!(decide_alter_partition(&image, &alter(&image, &without_leader)).is_err());
        assert!(decide_alter_partition(&image, &alter(&image, &[leader.0, 9])).is_err());
        // Asking for the ISR it already has commits nothing.
        assert!(
            decide_alter_partition(&image, &alter(&image, &shrunk))
                .expect("no-op")
                .is_empty()
        );
    }

    #[test]
    fn only_an_in_sync_replica_is_elected_and_the_leader_epoch_grows() {
        let mut image = replicated_image();
        let p = image.topic("t").expect("topic").partitions[0].clone();
        let leader = p.leader.expect("leader");
        let follower = [1, 2, 3]
            .into_iter()
            .find(|b| *b != leader.0)
            .expect("follower");
        let shrunk: Vec<i32> = [1, 2, 3].into_iter().filter(|b| *b != follower).collect();
        let records = decide_alter_partition(&image, &alter(&image, &shrunk)).expect("shrink");
        image.apply(100, &records[0]).expect("apply");

        let refused =
            decide_elect_leader(&image, "t", 0, BrokerId(follower)).expect_err("out of ISR");
        assert_eq!(refused.code(), ErrorCode::IneligibleReplica);
        let other = shrunk
            .iter()
            .copied()
            .find(|b| *b != leader.0)
            .expect("other ISR member");
        let records = decide_elect_leader(&image, "t", 0, BrokerId(other)).expect("elect");
        image.apply(101, &records[0]).expect("apply");
        let after = &image.topic("t").expect("topic").partitions[0];
        assert_eq!(after.leader, Some(BrokerId(other)));
        assert_eq!(after.leader_epoch, p.leader_epoch + 1);
        assert!(
            decide_elect_leader(&image, "t", 0, BrokerId(other))
                .expect("no-op")
                .is_empty()
        );
        assert_eq!(
            decide_elect_leader(&image, "t", 7, BrokerId(other))
                .expect_err("no partition")
                .code(),
            ErrorCode::UnknownPartition
        );
    }

    fn apply_all(image: &mut ClusterImage, records: Vec<MetadataRecord>) {
        for record in records {
            let index = image.applied_index + 1;
            image.apply(index, &record).expect("apply");
        }
    }

    #[test]
    fn added_partitions_continue_the_layout_and_never_shrink_the_topic() {
        let mut image = replicated_image();
        let records = decide_create_partitions(&image, "t", 4).expect("grow");
        apply_all(&mut image, records);
        let topic = image.topic("t").expect("topic");
        assert_eq!(topic.partitions.len(), 4);
        let leaders: std::collections::BTreeSet<BrokerId> =
            topic.partitions.iter().filter_map(|p| p.leader).collect();
        assert_eq!(leaders.len(), 3, "new leaders are spread: {topic:?}");
        for p in &topic.partitions {
            assert_eq!(p.replicas.len(), 3, "the topic's replication factor");
            assert_eq!(p.isr, p.replicas);
        }
        for (count, code) in [
            (4, ErrorCode::InvalidPartitions),
            (2, ErrorCode::InvalidPartitions),
            (
                i64::from(MAX_PARTITIONS_PER_TOPIC) + 1,
                ErrorCode::InvalidPartitions,
            ),
        ] {
            let refused = decide_create_partitions(&image, "t", count).expect_err("refused");
            assert_eq!(refused.code(), code, "{count}: {refused}");
        }
        assert_eq!(
            decide_create_partitions(&image, "nope", 9)
                .expect_err("unknown")
                .code(),
            ErrorCode::UnknownTopic
        );
    }

    #[test]
    fn a_reassignment_adds_first_and_removes_only_once_the_new_replica_is_in_sync() {
        let mut image = replicated_image();
        let register = decide_register_broker(&image, BrokerId(4), "h4:1", 1);
        apply_all(&mut image, register);
        let before = image.topic("t").expect("topic").partitions[0].clone();
        let leaving = before.leader.expect("leader");
        let target: Vec<BrokerId> = before
            .replicas
            .iter()
            .copied()
            .filter(|b| *b != leaving)
            .chain([BrokerId(4)])
            .collect();
        let records = decide_reassign_partition(&image, "t", 0, &target).expect("start");
        apply_all(&mut image, records);
        let moving = image.topic("t").expect("topic").partitions[0].clone();
        assert_eq!(moving.adding_replicas, vec![BrokerId(4)]);
        assert_eq!(moving.removing_replicas, vec![leaving]);
        assert_eq!(moving.target_replicas(), target);
        assert_eq!(
            moving.leader,
            Some(leaving),
            "the old leader serves meanwhile"
        );
        assert_eq!(moving.leader_epoch, before.leader_epoch);
        assert_eq!(moving.isr.len(), 3, "nobody leaves the ISR yet");

        // A second move is refused until this one is done; repeating it is a no-op.
        let other = [BrokerId(1)];
        assert_eq!(
            decide_reassign_partition(&image, "t", 0, &other)
                .expect_err("busy")
                .code(),
            ErrorCode::ReassignmentInProgress
        );
        assert!(
            decide_reassign_partition(&image, "t", 0, &target)
                .expect("same move")
                .is_empty()
        );

        // The leader adds broker 4 to the ISR: the move completes in the same change.
        let mut isr: Vec<i32> = moving.isr.iter().map(|b| b.0).collect();
        isr.push(4);
        let records = decide_alter_partition(&image, &alter(&image, &isr)).expect("expand");
        apply_all(&mut image, records);
        let done = &image.topic("t").expect("topic").partitions[0];
        assert_eq!(done.replicas, target);
        assert!(!done.is_reassigning());
        assert!(!done.isr.contains(&leaving));
        assert_eq!(
            done.leader,
            Some(target[0]),
            "the preferred target replica leads"
        );
        assert_eq!(done.leader_epoch, before.leader_epoch + 1);
    }

    #[test]
    fn bad_reassignments_are_refused_with_a_reason() {
        let image = replicated_image();
        let ids = |v: &[i32]| v.iter().copied().map(BrokerId).collect::<Vec<_>>();
        for (replicas, expected) in [
            (ids(&[]), "at least one replica"),
            (ids(&[1, 1]), "appears twice"),
            (ids(&[1, 9]), "broker 9 is not registered"),
        ] {
            let refused =
                decide_reassign_partition(&image, "t", 0, &replicas).expect_err("refused");
            assert_eq!(refused.code(), ErrorCode::InvalidReplicaAssignment);
            assert!(refused.to_string().contains(expected), "{refused}");
        }
        // Reordering the replicas only changes the preferred leader.
        let p = &image.topic("t").expect("topic").partitions[0];
        let mut reordered = p.replicas.clone();
        reordered.reverse();
        let records = decide_reassign_partition(&image, "t", 0, &reordered).expect("reorder");
        let mut image = image.clone();
        apply_all(&mut image, records);
        let after = &image.topic("t").expect("topic").partitions[0];
        assert_eq!(after.replicas, reordered);
        assert!(!after.is_reassigning());
        assert_eq!(after.leader, p.leader, "the leader stays until rebalancing");
    }
}
