//! A broker runs against any [`ControlPlane`], not only the controller: here a fake that
//! records what the broker asks and publishes the image itself. It proves the broker needs
//! nothing from the controller crate to register, heartbeat, serve its partitions, create
//! `__consumer_offsets`, and stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolog_broker::group::{GroupConfig, GroupCoordinator, OFFSETS_TOPIC};
use ferrolog_broker::{
    AdminChange, AlterIsrRequest, Broker, BrokerConfig, BrokerMetrics, ControlPlane,
    ControlPlaneError, InternalTopic, StorageSettings,
};
use ferrolog_log::{FlushPolicy, Offset, RecordBatchBuilder};
use ferrolog_metadata::records::{
    CreateTopicRecord, MetadataRecord, PartitionAssignment, Record, RegisterBrokerRecord,
};
use ferrolog_metadata::{BrokerId, ClusterImage, MetadataView, QuorumStatus, TopicConfig};
use ferrolog_proto::v1::{Acks, ErrorCode};
use tokio::sync::watch;

const ME: BrokerId = BrokerId(1);
/// Bound on every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the broker asked the control plane, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Register {
        broker: BrokerId,
        incarnation_id: u64,
    },
    Heartbeat {
        broker: BrokerId,
    },
    CreateInternalTopic(String),
}

/// A control plane that commits every change by publishing the next image itself.
struct FakeControlPlane {
    image: Arc<watch::Sender<Arc<ClusterImage>>>,
    /// The image as brokers read it, for another broker process started later.
    metadata: MetadataView,
    calls: Mutex<Vec<Call>>,
}

impl FakeControlPlane {
    /// Applies `record` as the next metadata log entry; returns its index.
    fn commit(&self, record: Record) -> u64 {
        let mut next = ClusterImage::clone(&self.image.borrow());
        let index = next.applied_index + 1;
        next.apply(
            index,
            &MetadataRecord {
                record: Some(record),
            },
        )
        .expect("the fake only commits valid records");
        self.image.send_replace(Arc::new(next));
        index
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("not poisoned").clone()
    }

    fn record(&self, call: Call) {
        self.calls.lock().expect("not poisoned").push(call);
    }
}

fn create_topic(name: &str, partitions: u32) -> Record {
    Record::CreateTopic(CreateTopicRecord {
        name: name.to_owned(),
        topic_id: format!("{name}-id"),
        assignments: (0..partitions)
            .map(|p| PartitionAssignment {
                partition: p as i32,
                replicas: vec![ME.0],
            })
            .collect(),
        configs: Default::default(),
    })
}

#[tonic::async_trait]
impl ControlPlane for FakeControlPlane {
    async fn register_broker(
        &self,
        broker: BrokerId,
        address: &str,
        incarnation_id: u64,
    ) -> Result<u64, ControlPlaneError> {
        self.record(Call::Register {
            broker,
            incarnation_id,
        });
        Ok(self.commit(Record::RegisterBroker(RegisterBrokerRecord {
            broker_id: broker.0,
            address: address.to_owned(),
            incarnation_id,
        })))
    }

    async fn broker_heartbeat(
        &self,
        broker: BrokerId,
        _incarnation_id: u64,
        _per_send: Duration,
    ) -> Result<bool, ControlPlaneError> {
        self.record(Call::Heartbeat { broker });
        Ok(false)
    }

    async fn alter_isr(&self, request: AlterIsrRequest) -> Result<u64, ControlPlaneError> {
        Err(ControlPlaneError {
            code: ErrorCode::InvalidRequest,
            message: format!("a single-replica partition never changes its ISR: {request:?}"),
        })
    }

    async fn allocate_producer_ids(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
    ) -> Result<u64, ControlPlaneError> {
        let first = self.image.borrow().next_producer_id;
        Ok(self.commit(Record::ProducerIds(
            ferrolog_metadata::records::ProducerIdsRecord {
                broker_id: broker.0,
                incarnation_id,
                first_producer_id: first,
                next_producer_id: first + 1000,
            },
        )))
    }

    async fn controlled_shutdown(&self, _broker: BrokerId) -> Result<u64, ControlPlaneError> {
        Ok(self.image.borrow().applied_index)
    }

    async fn create_internal_topic(
        &self,
        topic: InternalTopic,
    ) -> Result<Option<u64>, ControlPlaneError> {
        self.record(Call::CreateInternalTopic(topic.name.clone()));
        if self.image.borrow().topic(&topic.name).is_some() {
            return Ok(None);
        }
        Ok(Some(
            self.commit(create_topic(&topic.name, topic.partitions)),
        ))
    }

    async fn submit_admin(&self, change: AdminChange) -> Result<u64, ControlPlaneError> {
        Err(ControlPlaneError {
            code: ErrorCode::NotController,
            message: format!("the fake takes no admin changes: {change:?}"),
        })
    }

    async fn quorum_status(&self) -> QuorumStatus {
        QuorumStatus::default()
    }
}

struct Started {
    broker: Arc<Broker>,
    plane: Arc<FakeControlPlane>,
    _data: tempfile::TempDir,
}

async fn start_broker() -> Started {
    let data = tempfile::tempdir().expect("temp dir");
    let (metadata, image) = MetadataView::local(ClusterImage::default());
    let plane = Arc::new(FakeControlPlane {
        image,
        metadata: metadata.clone(),
        calls: Mutex::new(Vec::new()),
    });
    plane.commit(create_topic("orders", 2));
    let broker = broker_process(&plane, data.path()).await;
    Started {
        broker,
        plane,
        _data: data,
    }
}

/// Another process of broker [`ME`] (a new incarnation) against the same control plane, as
/// after a restart.
async fn start_broker_on(plane: Arc<FakeControlPlane>) -> Started {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = broker_process(&plane, data.path()).await;
    Started {
        broker,
        plane,
        _data: data,
    }
}

async fn broker_process(plane: &Arc<FakeControlPlane>, data: &std::path::Path) -> Arc<Broker> {
    let metadata = plane.metadata.clone();
    let metrics = Arc::new(BrokerMetrics::new(&mut Default::default()));
    Broker::start(
        BrokerConfig {
            node_id: ME,
            advertised_address: "127.0.0.1:1".to_owned(),
            storage: StorageSettings {
                data_dir: data.to_owned(),
                flush_policy: FlushPolicy::EveryAppend,
                index_interval_bytes: 4096,
                topic_defaults: TopicConfig::default(),
            },
            maintenance_interval: Duration::from_secs(60),
            max_produce_timeout: Duration::from_secs(10),
            max_fetch_wait: Duration::from_secs(1),
            replica_lag_time_max: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(20),
            cleaner: Default::default(),
        },
        metadata,
        Arc::clone(plane) as Arc<dyn ControlPlane>,
        metrics,
    )
    .await
    .expect("broker starts")
}

/// Polls `condition` every 10 ms until it holds or `DEADLINE` passes.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_registers_heartbeats_and_serves_its_partitions_through_any_control_plane() {
    // `_data` keeps the data directory for the whole test.
    let Started {
        broker,
        plane,
        _data,
    } = start_broker().await;

    eventually("registration and two heartbeats", || {
        let calls = plane.calls();
        calls
            .iter()
            .any(|c| matches!(c, Call::Register { broker: ME, .. }))
            && calls
                .iter()
                .filter(|c| matches!(c, Call::Heartbeat { broker: ME }))
                .count()
                >= 2
    })
    .await;
    let registered = plane.calls().into_iter().find_map(|c| match c {
        Call::Register { incarnation_id, .. } => Some(incarnation_id),
        _ => None,
    });
    assert_eq!(registered, Some(broker.incarnation_id()));

    // The image assigns both partitions of `orders` to this broker: it leads them.
    let index = broker.image().applied_index;
    broker
        .wait_reconciled(index, DEADLINE)
        .await
        .expect("partitions open");
    let partition = broker
        .leader_partition("orders", 1)
        .expect("leads orders-1");
    let mut batch = RecordBatchBuilder::new(1_000);
    batch.push(1_000, Some(b"k"), Some(b"v"), &[]);
    let info = partition
        .append(batch.build(), Acks::All, DEADLINE)
        .await
        .expect("acks=all append on a single replica");
    assert_eq!(info.base_offset, Offset(0));
    let fetched = partition
        .fetch(Offset(0), 1 << 20, Duration::ZERO)
        .await
        .expect("fetch below the high watermark");
    assert_eq!(fetched.high_watermark, Offset(1));
    assert!(!fetched.read.batches.is_empty());

    // A partition the image does not have is refused with the valid range.
    let error = broker
        .leader_partition("orders", 2)
        .err()
        .expect("no partition 2");
    assert_eq!(error.code(), ErrorCode::UnknownPartition);

    broker.shutdown().await;
    assert_eq!(
        broker.leader_partition("orders", 0).err().map(|e| e.code()),
        Some(ErrorCode::BrokerShuttingDown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_coordinator_creates_the_offsets_topic_through_the_control_plane() {
    // `_data` keeps the data directory for the whole test.
    let Started {
        broker,
        plane,
        _data,
    } = start_broker().await;
    let config = GroupConfig {
        offsets_partitions: 3,
        ..GroupConfig::default()
    };
    // The coordinator's address comes from the broker's registration in the image.
    eventually("registration", || broker.image().brokers.contains_key(&ME)).await;
    let coordinator = GroupCoordinator::start(Arc::clone(&broker), config);

    let found = coordinator
        .find_coordinator("payments")
        .await
        .expect("the coordinator is this broker");
    assert_eq!(found.coordinator, ME);
    assert_eq!(
        plane
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::CreateInternalTopic(_)))
            .collect::<Vec<_>>(),
        vec![Call::CreateInternalTopic(OFFSETS_TOPIC.to_owned())]
    );
    let image = broker.image();
    let offsets = image.topic(OFFSETS_TOPIC).expect("created");
    assert_eq!(offsets.partitions.len(), 3);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_get_distinct_ids_across_blocks_and_a_restart_skips_the_old_block() {
    let started = start_broker().await;
    tracing::info!("phase: 16 callers at once ask for 2,560 ids, crossing two block boundaries");
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let broker = Arc::clone(&started.broker);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..160 {
                    let (id, epoch) = broker.init_producer_id().await.expect("a producer id");
                    assert_eq!(epoch, 0, "a new producer starts at epoch 0");
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut handed = std::collections::BTreeSet::new();
    for caller in callers {
        for id in caller.await.expect("caller") {
            assert!(handed.insert(id), "producer id {id} handed out twice");
        }
    }
    assert_eq!(handed.len(), 2_560);
    assert_eq!(handed.first().copied(), Some(0));
    assert_eq!(started.plane.image.borrow().next_producer_id, 3_000);

    tracing::info!("phase: a new process of the same broker takes a fresh block above them all");
    let restarted = start_broker_on(Arc::clone(&started.plane)).await;
    let (id, _) = restarted
        .broker
        .init_producer_id()
        .await
        .expect("an id after restart");
    assert_eq!(id, 3_000, "the rest of the old process's block is skipped");
}
