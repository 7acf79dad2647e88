//! A broker: the partitions it hosts, kept in step with the cluster image, plus the
//! background upkeep (retention, segment roll, checkpoints).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferrolog_metadata::{BrokerId, ClusterImage, MetadataView, PartitionId};
use ferrolog_proto::retry::Backoff;
use ferrolog_proto::v1::ErrorCode;

use crate::BrokerError;
use crate::cleaner::CleanerSettings;
use crate::control_plane::{AdminChange, AlterIsrRequest, ControlPlane};
use crate::metrics::BrokerMetrics;
use crate::partition::Partition;
use crate::partition_manager::{PartitionManager, StorageSettings};
use crate::producer_ids::ProducerIdManager;
use crate::replica::LeaderState;

/// Pause between registration attempts while no controller accepts it: a node may start
/// before a quorum exists.
const REGISTRATION_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// How long a registered broker waits for its image to include its own registration.
const REGISTRATION_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest pause between ISR checks, whatever `replica.lag.time.max.ms` is.
const MIN_ISR_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a stopping broker waits for its leaderships to move.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a broker needs to know about itself.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: BrokerId,
    /// `host:port` clients use to reach this broker; returned in Metadata.
    pub advertised_address: String,
    pub storage: StorageSettings,
    /// How often retention, time-based rolls and high-watermark checkpoints run.
    pub maintenance_interval: Duration,
    /// Upper bound on how long a produce may wait for its acknowledgement.
    pub max_produce_timeout: Duration,
    /// Upper bound on a fetch's long-poll.
    pub max_fetch_wait: Duration,
    /// Kafka's `replica.lag.time.max.ms`: a follower not caught up for this long leaves
    /// the ISR (and acks=all stops waiting for it).
    pub replica_lag_time_max: Duration,
    /// How often the broker tells the active controller it is alive.
    pub heartbeat_interval: Duration,
    /// The log cleaner, which compacts topics with `cleanup.policy=compact`.
    pub cleaner: CleanerSettings,
}

/// A running broker.
pub struct Broker {
    config: BrokerConfig,
    metadata: MetadataView,
    control_plane: Arc<dyn ControlPlane>,
    partitions: Arc<PartitionManager>,
    metrics: Arc<BrokerMetrics>,
    /// This process's incarnation, registered with the controller.
    incarnation_id: u64,
    /// Producer ids for idempotent producers, from blocks the controller gives this process.
    producer_ids: ProducerIdManager,
    shutting_down: AtomicBool,
}

impl Broker {
    /// Registers the broker, opens the partitions the image assigns to it (running log
    /// recovery), and starts following the image and the upkeep loop.
    pub async fn start(
        config: BrokerConfig,
        metadata: MetadataView,
        control_plane: Arc<dyn ControlPlane>,
        metrics: Arc<BrokerMetrics>,
    ) -> Result<Arc<Self>, BrokerError> {
        let incarnation_id = ferrolog_metadata::new_incarnation_id();
        let partitions = Arc::new(PartitionManager::new(
            config.node_id,
            incarnation_id,
            config.storage.clone(),
            Arc::clone(&metrics),
        ));
        let producer_ids = ProducerIdManager::new(
            config.node_id,
            incarnation_id,
            Arc::clone(&control_plane),
            metadata.clone(),
            Arc::clone(&metrics),
        );
        let broker = Arc::new(Self {
            config,
            metadata,
            control_plane,
            partitions,
            metrics,
            incarnation_id,
            producer_ids,
            shutting_down: AtomicBool::new(false),
        });
        // Subscribe before the first reconcile so no change committed in between is missed.
        let applied = broker.metadata.subscribe();
        if let Err(error) = broker.reconcile_now().await {
            tracing::error!(%error, "some partitions are offline");
        }
        tokio::spawn(Arc::clone(&broker).follow_image(applied));
        tokio::spawn(Arc::clone(&broker).run_maintenance());
        if broker.config.cleaner.enabled {
            let stopping = Arc::clone(&broker);
            tokio::spawn(crate::cleaner::run(
                Arc::clone(&broker.partitions),
                broker.config.cleaner.clone(),
                Arc::clone(&broker.metrics),
                move || stopping.shutting_down.load(Ordering::Acquire),
            ));
        }
        tokio::spawn(Arc::clone(&broker).run_isr_updates());
        tokio::spawn(Arc::clone(&broker).register(incarnation_id));
        tokio::spawn(Arc::clone(&broker).heartbeat(incarnation_id));
        Ok(broker)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Random per process start: the registration in the image that carries it is this
    /// process's (a restart registers a new one).
    pub fn incarnation_id(&self) -> u64 {
        self.incarnation_id
    }

    /// A new idempotent producer's id and epoch (0): an id never given before in this
    /// cluster (Kafka's InitProducerId without a transactional id).
    pub async fn init_producer_id(&self) -> Result<(i64, i16), BrokerError> {
        Ok((self.producer_ids.next_producer_id().await?, 0))
    }

    /// The cluster image as this node has applied it.
    pub fn image(&self) -> Arc<ClusterImage> {
        self.metadata.image()
    }

    pub fn cluster_id(&self) -> String {
        self.metadata.cluster_id()
    }

    pub fn metadata(&self) -> &MetadataView {
        &self.metadata
    }

    /// Registers with the active controller, retrying until it succeeds: a node may start
    /// before a quorum exists.
    async fn register(self: Arc<Self>, incarnation_id: u64) {
        let (id, address) = (self.config.node_id, self.config.advertised_address.clone());
        let mut attempt = 0;
        while !self.shutting_down.load(Ordering::Acquire) {
            match self
                .control_plane
                .register_broker(id, &address, incarnation_id)
                .await
            {
                Ok(index) => {
                    tracing::info!(broker = %id, %address, "broker registered");
                    // Once the image includes our own registration it includes every
                    // deletion committed before it; then stray directories may go.
                    let mut images = self.metadata.subscribe();
                    let caught_up = matches!(
                        tokio::time::timeout(
                            REGISTRATION_CATCH_UP_TIMEOUT,
                            images.wait_for(|image| image.applied_index >= index),
                        )
                        .await,
                        Ok(Ok(_))
                    );
                    if caught_up {
                        self.partitions.mark_image_current();
                        if let Err(error) = self.reconcile_now().await {
                            tracing::error!(%error, "some partitions are offline");
                        }
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "broker registration failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(REGISTRATION_BACKOFF.delay(attempt)).await;
                }
            }
        }
    }

    /// Before stopping, asks the active controller to move this broker's leaderships to
    /// other in-sync replicas and waits (bounded) until its own partitions have taken the
    /// follower role, so clients are redirected instead of timing out. Skipped when no
    /// partition it leads has another in-sync replica (a single node: nothing to move to).
    async fn controlled_shutdown(&self) {
        let id = self.config.node_id;
        let movable = |image: &ClusterImage| {
            image.topics.values().any(|t| {
                t.partitions
                    .iter()
                    .any(|p| p.leader == Some(id) && p.isr.iter().any(|r| *r != id))
            })
        };
        if !movable(&self.image()) {
            return;
        }
        let started = std::time::Instant::now();
        let index = match tokio::time::timeout(
            CONTROLLED_SHUTDOWN_TIMEOUT,
            self.control_plane.controlled_shutdown(id),
        )
        .await
        {
            Ok(Ok(index)) => index,
            Ok(Err(error)) => {
                tracing::warn!(%error, "controlled shutdown refused; stopping anyway");
                return;
            }
            Err(_) => {
                tracing::warn!("controlled shutdown timed out; stopping anyway");
                return;
            }
        };
        let mut images = self.metadata.subscribe();
        let caught_up = matches!(
            tokio::time::timeout(
                CONTROLLED_SHUTDOWN_TIMEOUT,
                images.wait_for(|image| image.applied_index >= index),
            )
            .await,
            Ok(Ok(_))
        );
        if caught_up && let Err(error) = self.reconcile_now().await {
            tracing::warn!(%error, "cannot hand over partitions before stopping");
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "controlled shutdown: leaderships moved to other in-sync replicas"
        );
    }

    /// Heartbeats to the active controller. A broker that learns it was fenced (it was
    /// silent past its session, e.g. cut off or paused) registers again, which unfences
    /// it; its partitions' leaders have moved meanwhile and it follows them.
    async fn heartbeat(self: Arc<Self>, incarnation_id: u64) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.shutting_down.load(Ordering::Acquire) {
            tick.tick().await;
            let id = self.config.node_id;
            let fenced = tokio::time::timeout(
                self.config.heartbeat_interval * 4,
                // Two intervals per controller: with one paused, the others still hear
                // from this broker every other interval, well within its session.
                self.control_plane.broker_heartbeat(
                    id,
                    incarnation_id,
                    self.config.heartbeat_interval * 2,
                ),
            )
            .await;
            match fenced {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    tracing::info!(broker = %id,
                        "the active controller has this broker fenced or not yet registered; registering");
                    let address = self.config.advertised_address.clone();
                    if let Err(error) = self
                        .control_plane
                        .register_broker(id, &address, incarnation_id)
                        .await
                    {
                        tracing::warn!(%error, "re-registration failed; retrying");
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, "heartbeat not delivered"),
                Err(_) => tracing::debug!("heartbeat timed out"),
            }
        }
    }

    /// The control plane this broker registers with and asks for metadata changes.
    pub fn control_plane(&self) -> &Arc<dyn ControlPlane> {
        &self.control_plane
    }

    pub fn partitions(&self) -> &Arc<PartitionManager> {
        &self.partitions
    }

    pub fn metrics(&self) -> &Arc<BrokerMetrics> {
        &self.metrics
    }

    async fn reconcile_now(&self) -> Result<(), BrokerError> {
        let image = self.metadata.image();
        let partitions = Arc::clone(&self.partitions);
        tokio::task::spawn_blocking(move || partitions.reconcile(&image))
            .await
            .map_err(|e| BrokerError::Internal(format!("reconcile task failed: {e}")))?
    }

    /// Applies every image change to the hosted partitions, in order.
    async fn follow_image(
        self: Arc<Self>,
        mut applied: tokio::sync::watch::Receiver<Arc<ClusterImage>>,
    ) {
        while applied.changed().await.is_ok() {
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            if let Err(error) = self.reconcile_now().await {
                tracing::error!(%error, "cannot apply metadata change to partitions");
            }
        }
    }

    /// Waits (bounded) until the hosted partitions reflect the image at `index`, so a topic
    /// is writable as soon as its creation is acknowledged.
    pub async fn wait_reconciled(&self, index: u64, timeout: Duration) -> Result<(), BrokerError> {
        let mut reconciled = self.partitions.subscribe_reconciled();
        tokio::time::timeout(timeout, reconciled.wait_for(|i| *i >= index))
            .await
            .map_err(|_| BrokerError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
                waiting_for: "partitions to open",
            })?
            .map_err(|_| BrokerError::ShuttingDown)?;
        Ok(())
    }

    async fn run_maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.maintenance_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let partitions = self.partitions.all();
            let done = tokio::task::spawn_blocking(move || {
                for partition in partitions {
                    if let Err(error) = partition.maintain()
                        && error.code() != ErrorCode::UnknownTopic
                    {
                        tracing::warn!(topic = partition.topic(), partition = %partition.id(),
                            %error, "partition upkeep failed");
                    }
                }
            })
            .await;
            if let Err(error) = done {
                tracing::error!(%error, "upkeep task failed");
            }
        }
    }

    /// As leader of each partition, asks the controller to shrink the ISR by followers that
    /// fell behind and to expand it by those that caught up. Checked several times per lag
    /// period, so a dead follower leaves the ISR within about 1.25 lag periods.
    async fn run_isr_updates(self: Arc<Self>) {
        let lag = self.config.replica_lag_time_max;
        let mut tick = tokio::time::interval((lag / 4).max(MIN_ISR_CHECK_INTERVAL));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            for partition in self.partitions.all() {
                if let Some(state) = partition.wanted_step_down() {
                    self.step_down(&partition, &state);
                    continue;
                }
                let Some((state, new_isr)) = partition.wanted_isr_change(lag) else {
                    continue;
                };
                let request = AlterIsrRequest {
                    topic: partition.topic().to_owned(),
                    partition: partition.id().0 as i32,
                    leader: self.config.node_id,
                    leader_epoch: state.leader_epoch,
                    partition_epoch: state.partition_epoch,
                    new_isr,
                };
                tracing::info!(topic = %request.topic, partition = request.partition,
                    isr = ?state.isr, new_isr = ?request.new_isr, "requesting an ISR change");
                self.metrics.isr_changes.inc();
                let broker = Arc::clone(&self);
                let partition_epoch = request.partition_epoch;
                tokio::spawn(async move {
                    if let Err(error) = broker.control_plane.alter_isr(request).await {
                        broker.metrics.isr_change_failures.inc();
                        tracing::warn!(%error, "ISR change refused");
                        // A timeout may still commit; anything else certainly did not.
                        if error.code != ErrorCode::RequestTimedOut {
                            partition.isr_change_refused(partition_epoch);
                        }
                    }
                });
            }
        }
    }

    /// Asks the controller to move the leadership of a partition whose log went offline
    /// here (a failed fsync) to another in-sync replica that is registered and unfenced.
    ///
    /// Why an election and nothing bigger: the controller already elects any ISR member on
    /// request (`ElectLeader`, as `ferrolog partition elect-leader` does), and it moves only
    /// this partition, so the broker's other partitions, whose own fsyncs decide for them,
    /// stay available. A controlled shutdown would fence the whole broker, and heartbeats
    /// would unfence it at once. The failed replica stays in the ISR until the new leader
    /// drops it for not fetching (`replica.lag.time.max.ms`); meanwhile it refuses to lead
    /// and asks again if it is elected back.
    fn step_down(self: &Arc<Self>, partition: &Partition, state: &LeaderState) {
        let me = self.config.node_id;
        let image = self.image();
        let candidate = state.replicas.iter().copied().find(|r| {
            *r != me && state.isr.contains(r) && image.brokers.get(r).is_some_and(|b| !b.fenced)
        });
        let (topic, index) = (partition.topic().to_owned(), partition.id().0 as i32);
        let Some(candidate) = candidate else {
            tracing::error!(%topic, partition = index, isr = ?state.isr,
                "the log is offline and no other live in-sync replica can take over");
            return;
        };
        tracing::warn!(%topic, partition = index, new_leader = %candidate,
            "the log is offline; asking the controller to move the leadership");
        let change = AdminChange::ElectLeader {
            topic,
            partition: index,
            leader: candidate,
        };
        let broker = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = broker.control_plane.submit_admin(change).await {
                tracing::warn!(%error, "leadership move refused; asking again later");
            }
        });
    }

    /// The partition led here, or the error a client should see: unknown topic or
    /// partition (with the valid range), or NOT_LEADER naming the leader.
    /// Names the current leader in a NOT_LEADER error that lacks it (a partition learns
    /// it lost leadership before it knows who has it), so the client goes straight there.
    pub fn with_leader_hint(&self, error: BrokerError) -> BrokerError {
        match error {
            BrokerError::NotLeader {
                topic,
                partition,
                leader: None,
            } => {
                let image = self.metadata.image();
                let leader = image
                    .topic(&topic)
                    .and_then(|t| t.partition(PartitionId(partition)))
                    .and_then(|p| p.leader)
                    .filter(|id| *id != self.config.node_id)
                    .and_then(|id| image.brokers.get(&id).map(|b| (id.0, b.address.clone())));
                BrokerError::NotLeader {
                    topic,
                    partition,
                    leader,
                }
            }
            other => other,
        }
    }

    pub fn leader_partition(
        &self,
        topic: &str,
        partition: i64,
    ) -> Result<Arc<Partition>, BrokerError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(BrokerError::ShuttingDown);
        }
        let image = self.metadata.image();
        let topic_image = image
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_owned()))?;
        let count = topic_image.partitions.len();
        let index = u32::try_from(partition)
            .ok()
            .filter(|p| (*p as usize) < count)
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                count,
            })?;
        let partition_image = topic_image
            .partition(PartitionId(index))
            .expect("index checked against the partition count");
        if partition_image.leader != Some(self.config.node_id) {
            let leader = partition_image.leader.map(|id| {
                let address = image
                    .brokers
                    .get(&id)
                    .map(|b| b.address.clone())
                    .unwrap_or_default();
                (id.0, address)
            });
            return Err(BrokerError::NotLeader {
                topic: topic.to_owned(),
                partition: index,
                leader,
            });
        }
        // The map is keyed by name: until reconcile catches up with a topic deleted and
        // re-created, it may still hold the old topic's partition, which must not be used.
        self.partitions
            .get(topic, index)
            .filter(|p| p.topic_id() == topic_image.topic_id)
            .ok_or_else(|| BrokerError::NotLeader {
                topic: topic.to_owned(),
                partition: index,
                leader: None,
            })
    }

    /// Stops taking requests and makes every partition durable. Waiting produces are
    /// answered, and long polls and Subscribe streams end, so the gRPC server can drain.
    pub async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.controlled_shutdown().await;
        let partitions = Arc::clone(&self.partitions);
        if let Err(error) = tokio::task::spawn_blocking(move || partitions.close_all()).await {
            tracing::error!(%error, "closing partitions failed");
        }
        tracing::info!("broker stopped");
    }
}
