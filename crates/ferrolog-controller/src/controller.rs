//! Turns admin requests into metadata records and commits them through the quorum. A
//! request that reaches a node which is not the active controller is forwarded to the one
//! that is, with a bounded retry while a leader is elected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolog_metadata::{
    BrokerId, ClusterImage, MetadataError, MetadataQuorum, QuorumStatus, TopicConfig,
};
use ferrolog_proto::v1::controller_service_client::ControllerServiceClient;
use ferrolog_proto::v1::{self, ErrorCode};
use tonic::transport::Channel;

use crate::change::{AlterPartitionRequest, Change, CreateTopicRequest};
use crate::decide::{
    decide_alter_partition, decide_create_partitions, decide_create_topic, decide_delete_topic,
    decide_elect_leader, decide_reassign_partition, decide_register_broker, validate,
};
use crate::liveness::{
    BrokerSessions, DEFAULT_SESSION_TIMEOUT, decide_elect_offline, decide_fence_broker,
    decide_preferred_leaders,
};
use crate::wire::{self, status_from_wire};
use crate::{ControllerError, code_of};

/// How long a request keeps looking for an active controller before it gives up.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How often leaderships move back to preferred replicas. Kafka checks every 5 minutes;
/// 30 s keeps a restarted broker idle only briefly, and a move costs one metadata commit
/// and a leader change per partition.
pub const DEFAULT_LEADER_REBALANCE_INTERVAL: Duration = Duration::from_secs(30);
/// Pause between attempts while no leader is known.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

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

    /// Moves `broker`'s leaderships to other live in-sync replicas and fences it, before
    /// it stops (controlled shutdown). A thin [`Controller::submit`].
    pub async fn controlled_shutdown(&self, broker: BrokerId) -> Result<u64, ControllerError> {
        self.submit(Change::ControlledShutdown(broker)).await
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
        wire::send(&mut client, change).await
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
