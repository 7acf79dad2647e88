//! The cluster image: what applying the metadata records in order yields. Brokers answer
//! Metadata requests and decide what to lead from it; nothing else is the truth.

use std::collections::BTreeMap;

use crate::records::{ConfigResourceType, MetadataRecord, Record};
use crate::{BrokerId, ConfigError, MetadataError, PartitionId, TopicConfig};

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerImage {
    pub id: BrokerId,
    /// `host:port` where clients and other brokers reach it.
    pub address: String,
    pub incarnation_id: u64,
    /// A fenced broker may not lead partitions (broker liveness sets this; a registration
    /// clears it).
    pub fenced: bool,
}

/// One partition's placement and leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionImage {
    pub partition: PartitionId,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// `None` while the partition is offline.
    pub leader: Option<BrokerId>,
    pub leader_epoch: i32,
    /// Bumped on every change of the partition, so a stale change request can be refused.
    pub partition_epoch: i32,
    /// A reassignment in progress: replicas copying the log to join, and replicas that
    /// leave once every target replica is in sync. `replicas` lists the target first.
    pub adding_replicas: Vec<BrokerId>,
    pub removing_replicas: Vec<BrokerId>,
}

impl PartitionImage {
    /// The replicas the partition ends with: all of them unless a reassignment is removing
    /// some.
    pub fn target_replicas(&self) -> Vec<BrokerId> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }

    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// A freshly created partition: its first replica leads, every replica is in sync.
    fn created(partition: PartitionId, replicas: &[i32]) -> Self {
        let replicas: Vec<BrokerId> = replicas.iter().copied().map(BrokerId).collect();
        PartitionImage {
            partition,
            leader: replicas.first().copied(),
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }
}

/// One topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicImage {
    pub name: String,
    pub topic_id: String,
    pub partitions: Vec<PartitionImage>,
    /// The topic's own settings (Kafka names); defaults are not stored, so changing a
    /// server default reaches every topic that did not override it.
    pub configs: BTreeMap<String, String>,
}

impl TopicImage {
    /// Of the first partition, counting a reassignment's target only. Counts the target
    /// replicas rather than subtracting the removed ones: a record may list a removing replica
    /// that is not a replica, and the count must not underflow.
    pub fn replication_factor(&self) -> usize {
        self.partitions
            .first()
            .map_or(0, |p| p.target_replicas().len())
    }

    pub fn partition(&self, partition: PartitionId) -> Option<&PartitionImage> {
        self.partitions.get(partition.0 as usize)
    }
}

/// Everything the cluster knows about itself, as of `applied_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterImage {
    /// Index of the last applied record; 0 before any.
    pub applied_index: u64,
    pub brokers: BTreeMap<BrokerId, BrokerImage>,
    pub topics: BTreeMap<String, TopicImage>,
    /// Cluster-wide dynamic topic defaults (Kafka names): every topic has them unless it sets
    /// its own. Like a topic's configs, only what was set is stored, so the static defaults
    /// below show through for the rest.
    pub cluster_configs: BTreeMap<String, String>,
    /// The first producer id no block has taken yet: blocks only move it forward, so no id
    /// is ever handed out twice.
    pub next_producer_id: i64,
    /// The last block of producer ids each broker was given, with the incarnation it was
    /// given to: a broker reads its new block here once the allocation is applied.
    pub producer_id_blocks: BTreeMap<BrokerId, ProducerIdBlock>,
}

/// Producer ids `first..next` given to one broker incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdBlock {
    pub incarnation_id: u64,
    pub first: i64,
    pub next: i64,
}

impl ClusterImage {
    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topics.get(name)
    }

    /// The effective config of `topic`: `static_defaults` (the node's own) overlaid with the
    /// cluster's dynamic defaults, then with the topic's settings.
    pub fn topic_config(
        &self,
        static_defaults: &TopicConfig,
        topic: &TopicImage,
    ) -> Result<TopicConfig, ConfigError> {
        static_defaults.layered(&self.cluster_configs, &topic.configs)
    }

    fn set_fenced(&mut self, broker_id: i32, fenced: bool) -> Result<(), MetadataError> {
        let broker = self.brokers.get_mut(&BrokerId(broker_id)).ok_or_else(|| {
            MetadataError::InvalidRecord(format!("broker {broker_id} is not registered"))
        })?;
        broker.fenced = fenced;
        Ok(())
    }

    /// Rebuilds an image from encoded records (a snapshot, or a controller's metadata
    /// stream), as of `index`.
    pub fn from_records(index: u64, records: &[Vec<u8>]) -> Result<Self, MetadataError> {
        use prost::Message;
        let mut image = ClusterImage::default();
        for bytes in records {
            let record = MetadataRecord::decode(bytes.as_slice())
                .map_err(|source| MetadataError::Decode { index, source })?;
            image.apply(index, &record)?;
        }
        image.applied_index = index;
        Ok(image)
    }

    /// Records that rebuild this image when applied in order to an empty one: what a
    /// snapshot holds and what a broker that fell behind the purged log receives.
    pub fn to_records(&self) -> Vec<MetadataRecord> {
        use crate::records::{
            CreateTopicRecord, PartitionAssignment, PartitionChangeRecord, RegisterBrokerRecord,
        };
        let mut records = Vec::new();
        if !self.cluster_configs.is_empty() {
            records.push(MetadataRecord {
                record: Some(Record::ConfigChange(crate::records::ConfigChangeRecord {
                    topic: String::new(),
                    set: self.cluster_configs.clone().into_iter().collect(),
                    delete: Vec::new(),
                    resource_type: ConfigResourceType::Cluster as i32,
                })),
            });
        }
        for broker in self.brokers.values() {
            records.push(MetadataRecord {
                record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                    broker_id: broker.id.0,
                    address: broker.address.clone(),
                    incarnation_id: broker.incarnation_id,
                })),
            });
            if broker.fenced {
                records.push(MetadataRecord {
                    record: Some(Record::FenceBroker(crate::records::FenceBrokerRecord {
                        broker_id: broker.id.0,
                        incarnation_id: broker.incarnation_id,
                    })),
                });
            }
        }
        // Oldest block first, so each applies after the ones below it. The newest block ever
        // given is its broker's latest, so the last record restores `next_producer_id`.
        let mut blocks: Vec<(&BrokerId, &ProducerIdBlock)> =
            self.producer_id_blocks.iter().collect();
        blocks.sort_by_key(|(_, block)| block.first);
        for (broker, block) in blocks {
            records.push(MetadataRecord {
                record: Some(Record::ProducerIds(crate::records::ProducerIdsRecord {
                    broker_id: broker.0,
                    incarnation_id: block.incarnation_id,
                    first_producer_id: block.first,
                    next_producer_id: block.next,
                })),
            });
        }
        for topic in self.topics.values() {
            records.push(MetadataRecord {
                record: Some(Record::CreateTopic(CreateTopicRecord {
                    name: topic.name.clone(),
                    topic_id: topic.topic_id.clone(),
                    assignments: topic
                        .partitions
                        .iter()
                        .map(|p| PartitionAssignment {
                            partition: p.partition.0 as i32,
                            replicas: p.replicas.iter().map(|b| b.0).collect(),
                        })
                        .collect(),
                    configs: topic.configs.clone().into_iter().collect(),
                })),
            });
            for p in &topic.partitions {
                records.push(MetadataRecord {
                    record: Some(Record::PartitionChange(PartitionChangeRecord {
                        topic: topic.name.clone(),
                        partition: p.partition.0 as i32,
                        leader: p.leader.map_or(NO_LEADER, |l| l.0),
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        replicas: p.replicas.iter().map(|b| b.0).collect(),
                        isr: p.isr.iter().map(|b| b.0).collect(),
                        adding_replicas: p.adding_replicas.iter().map(|b| b.0).collect(),
                        removing_replicas: p.removing_replicas.iter().map(|b| b.0).collect(),
                    })),
                });
            }
        }
        records
    }

    /// Applies one committed record. Records are validated before they are appended, so an
    /// error here means a damaged log or a bug; the image is left unchanged on error.
    pub fn apply(&mut self, index: u64, record: &MetadataRecord) -> Result<(), MetadataError> {
        let Some(record) = &record.record else {
            return Err(MetadataError::InvalidRecord(format!(
                "empty record at index {index}"
            )));
        };
        match record {
            Record::RegisterBroker(r) => {
                let id = BrokerId(r.broker_id);
                self.brokers.insert(
                    id,
                    BrokerImage {
                        id,
                        address: r.address.clone(),
                        incarnation_id: r.incarnation_id,
                        fenced: false,
                    },
                );
            }
            Record::FenceBroker(r) => self.set_fenced(r.broker_id, true)?,
            Record::UnfenceBroker(r) => self.set_fenced(r.broker_id, false)?,
            Record::CreateTopic(r) => {
                if self.topics.contains_key(&r.name) {
                    return Err(MetadataError::InvalidRecord(format!(
                        "topic '{}' already exists",
                        r.name
                    )));
                }
                for a in &r.assignments {
                    check_broker_ids(&r.name, "replicas", &a.replicas)?;
                }
                let partitions = r
                    .assignments
                    .iter()
                    .enumerate()
                    .map(|(i, a)| PartitionImage::created(PartitionId(i as u32), &a.replicas))
                    .collect();
                self.topics.insert(
                    r.name.clone(),
                    TopicImage {
                        name: r.name.clone(),
                        topic_id: r.topic_id.clone(),
                        partitions,
                        configs: r.configs.clone().into_iter().collect(),
                    },
                );
            }
            Record::DeleteTopic(r) => {
                // The id must match: a delete decided for an older topic of the same name
                // must never remove a newer one.
                match self.topics.get(&r.name) {
                    Some(topic) if topic.topic_id == r.topic_id => {
                        self.topics.remove(&r.name);
                    }
                    _ => {
                        return Err(MetadataError::InvalidRecord(format!(
                            "topic '{}' with id {} does not exist",
                            r.name, r.topic_id
                        )));
                    }
                }
            }
            Record::PartitionChange(r) => {
                for (what, ids) in [
                    ("replicas", &r.replicas),
                    ("isr", &r.isr),
                    ("adding replicas", &r.adding_replicas),
                    ("removing replicas", &r.removing_replicas),
                ] {
                    check_broker_ids(&r.topic, what, ids)?;
                }
                if r.leader < NO_LEADER {
                    return Err(MetadataError::InvalidRecord(format!(
                        "partition {}-{} names leader {}: a broker id or {NO_LEADER}",
                        r.topic, r.partition, r.leader
                    )));
                }
                let partition = self
                    .topics
                    .get_mut(&r.topic)
                    .and_then(|t| t.partitions.get_mut(r.partition as usize))
                    .ok_or_else(|| {
                        MetadataError::InvalidRecord(format!(
                            "partition {}-{} does not exist",
                            r.topic, r.partition
                        ))
                    })?;
                partition.leader = (r.leader >= 0).then_some(BrokerId(r.leader));
                partition.leader_epoch = r.leader_epoch;
                partition.partition_epoch = r.partition_epoch;
                partition.replicas = r.replicas.iter().copied().map(BrokerId).collect();
                partition.isr = r.isr.iter().copied().map(BrokerId).collect();
                partition.adding_replicas =
                    r.adding_replicas.iter().copied().map(BrokerId).collect();
                partition.removing_replicas =
                    r.removing_replicas.iter().copied().map(BrokerId).collect();
            }
            Record::CreatePartitions(r) => {
                let topic = self
                    .topics
                    .get_mut(&r.topic)
                    .filter(|t| t.topic_id == r.topic_id)
                    .ok_or_else(|| {
                        MetadataError::InvalidRecord(format!(
                            "topic '{}' with id {} does not exist",
                            r.topic, r.topic_id
                        ))
                    })?;
                let first = topic.partitions.len();
                for a in &r.assignments {
                    check_broker_ids(&r.topic, "replicas", &a.replicas)?;
                }
                if r.assignments.is_empty()
                    || r.assignments
                        .iter()
                        .enumerate()
                        .any(|(i, a)| a.partition as usize != first + i || a.replicas.is_empty())
                {
                    return Err(MetadataError::InvalidRecord(format!(
                        "partitions added to '{}' must be numbered on from {first}, each with replicas",
                        r.topic
                    )));
                }
                topic.partitions.extend(r.assignments.iter().map(|a| {
                    PartitionImage::created(PartitionId(a.partition as u32), &a.replicas)
                }));
            }
            Record::ConfigChange(r) => {
                let configs = match ConfigResourceType::try_from(r.resource_type) {
                    Ok(ConfigResourceType::Topic) => {
                        &mut self
                            .topics
                            .get_mut(&r.topic)
                            .ok_or_else(|| {
                                MetadataError::InvalidRecord(format!(
                                    "topic '{}' does not exist",
                                    r.topic
                                ))
                            })?
                            .configs
                    }
                    // The name must be empty, so the record reads back exactly as written
                    // (`to_records` writes none).
                    Ok(ConfigResourceType::Cluster) if r.topic.is_empty() => {
                        &mut self.cluster_configs
                    }
                    Ok(ConfigResourceType::Cluster) => {
                        return Err(MetadataError::InvalidRecord(format!(
                            "a cluster config change names resource '{}': it names none",
                            r.topic
                        )));
                    }
                    // A newer node's resource type: refused rather than applied to a topic.
                    Err(_) => {
                        return Err(MetadataError::InvalidRecord(format!(
                            "config change for unknown resource type {}",
                            r.resource_type
                        )));
                    }
                };
                for (k, v) in &r.set {
                    configs.insert(k.clone(), v.clone());
                }
                for k in &r.delete {
                    configs.remove(k);
                }
            }
            Record::ProducerIds(r) => {
                if r.broker_id < 0 {
                    return Err(MetadataError::InvalidRecord(format!(
                        "producer ids for broker {}: broker ids are not negative",
                        r.broker_id
                    )));
                }
                if r.first_producer_id < self.next_producer_id
                    || r.next_producer_id <= r.first_producer_id
                {
                    return Err(MetadataError::InvalidRecord(format!(
                        "producer id block {}..{} for broker {} overlaps ids already given \
                         (next free id {}) or is empty",
                        r.first_producer_id, r.next_producer_id, r.broker_id, self.next_producer_id
                    )));
                }
                self.next_producer_id = r.next_producer_id;
                self.producer_id_blocks.insert(
                    BrokerId(r.broker_id),
                    ProducerIdBlock {
                        incarnation_id: r.incarnation_id,
                        first: r.first_producer_id,
                        next: r.next_producer_id,
                    },
                );
            }
        }
        self.applied_index = index;
        Ok(())
    }
}

/// How a partition record says "no leader".
const NO_LEADER: i32 = -1;

/// Broker ids are non-negative: a record naming a negative one is damaged. Refused here
/// because the image could not write it back (`to_records` writes a missing leader as
/// [`NO_LEADER`], and a negative first replica would lead), so a snapshot would change it.
fn check_broker_ids(topic: &str, what: &str, ids: &[i32]) -> Result<(), MetadataError> {
    match ids.iter().find(|id| **id < 0) {
        Some(id) => Err(MetadataError::InvalidRecord(format!(
            "{what} of topic '{topic}' name broker {id}: broker ids are not negative"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{CreateTopicRecord, DeleteTopicRecord, PartitionAssignment};

    fn create(name: &str, replicas: &[&[i32]]) -> MetadataRecord {
        MetadataRecord {
            record: Some(Record::CreateTopic(CreateTopicRecord {
                name: name.to_owned(),
                topic_id: format!("{name}-id"),
                assignments: replicas
                    .iter()
                    .enumerate()
                    .map(|(i, r)| PartitionAssignment {
                        partition: i as i32,
                        replicas: r.to_vec(),
                    })
                    .collect(),
                configs: Default::default(),
            })),
        }
    }

    #[test]
    fn created_topic_has_first_replica_as_leader_and_full_isr() {
        let mut image = ClusterImage::default();
        image
            .apply(1, &create("orders", &[&[1, 2], &[2, 1]]))
            .expect("apply");
        let topic = image.topic("orders").expect("exists");
        assert_eq!(topic.partitions[1].leader, Some(BrokerId(2)));
        assert_eq!(topic.partitions[1].isr, vec![BrokerId(2), BrokerId(1)]);
        assert_eq!(image.applied_index, 1);
    }

    #[test]
    fn to_records_rebuilds_an_identical_image() {
        let mut image = ClusterImage::default();
        image
            .apply(1, &create("orders", &[&[1, 2], &[2, 1]]))
            .expect("apply");
        image.apply(2, &create("audit", &[&[2]])).expect("apply");
        let mut rebuilt = ClusterImage::default();
        for record in image.to_records() {
            rebuilt.apply(2, &record).expect("apply");
        }
        assert_eq!(rebuilt, image);
    }

    #[test]
    fn added_partitions_and_a_reassignment_survive_a_snapshot() {
        use crate::records::{CreatePartitionsRecord, PartitionChangeRecord};
        let mut image = ClusterImage::default();
        image
            .apply(1, &create("orders", &[&[1, 2]]))
            .expect("apply");
        let add = |topic_id: &str, first: i32| MetadataRecord {
            record: Some(Record::CreatePartitions(CreatePartitionsRecord {
                topic: "orders".into(),
                topic_id: topic_id.into(),
                assignments: vec![PartitionAssignment {
                    partition: first,
                    replicas: vec![2, 1],
                }],
            })),
        };
        assert!(
            image.apply(2, &add("other-id", 1)).is_err(),
            "wrong topic id"
        );
        assert!(
            image.apply(2, &add("orders-id", 5)).is_err(),
            "gap in numbering"
        );
        image
            .apply(2, &add("orders-id", 1))
            .expect("add partition 1");
        let reassign = MetadataRecord {
            record: Some(Record::PartitionChange(PartitionChangeRecord {
                topic: "orders".into(),
                partition: 1,
                leader: 2,
                leader_epoch: 0,
                partition_epoch: 1,
                replicas: vec![3, 2, 1],
                isr: vec![2, 1],
                adding_replicas: vec![3],
                removing_replicas: vec![1],
            })),
        };
        image.apply(3, &reassign).expect("reassign");
        let p1 = &image.topic("orders").expect("exists").partitions[1];
        assert_eq!(p1.leader, Some(BrokerId(2)));
        assert_eq!(p1.target_replicas(), vec![BrokerId(3), BrokerId(2)]);
        assert!(p1.is_reassigning());
        let mut rebuilt = ClusterImage::default();
        for record in image.to_records() {
            rebuilt.apply(3, &record).expect("apply");
        }
        assert_eq!(rebuilt, image);
    }

    #[test]
    fn fencing_survives_a_snapshot_and_unknown_brokers_are_refused() {
        use crate::records::{FenceBrokerRecord, RegisterBrokerRecord};
        let mut image = ClusterImage::default();
        let register = MetadataRecord {
            record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: 1,
                address: "a:1".into(),
                incarnation_id: 9,
            })),
        };
        let fence = |id| MetadataRecord {
            record: Some(Record::FenceBroker(FenceBrokerRecord {
                broker_id: id,
                incarnation_id: 9,
            })),
        };
        image.apply(1, &register).expect("register");
        image.apply(2, &fence(1)).expect("fence");
        assert!(image.brokers[&BrokerId(1)].fenced);
        assert!(image.apply(3, &fence(7)).is_err());
        let mut rebuilt = ClusterImage::default();
        for record in image.to_records() {
            rebuilt.apply(2, &record).expect("apply");
        }
        assert_eq!(rebuilt, image);
    }

    /// Found by the `metadata_record` fuzz target: a topic created with a negative broker id
    /// as first replica got that id as leader, which `to_records` writes as "no leader", so the
    /// image changed through its own snapshot. Negative broker ids are refused.
    #[test]
    fn records_naming_negative_broker_ids_are_refused_and_change_nothing() {
        use crate::records::PartitionChangeRecord;
        let mut image = ClusterImage::default();
        image
            .apply(1, &create("orders", &[&[1, 2]]))
            .expect("apply");
        let before = image.clone();
        for (i, record) in [
            create("events", &[&[1], &[-12986, 105]]),
            MetadataRecord {
                record: Some(Record::PartitionChange(PartitionChangeRecord {
                    topic: "orders".into(),
                    partition: 0,
                    leader: 1,
                    leader_epoch: 1,
                    partition_epoch: 1,
                    replicas: vec![1, 2],
                    isr: vec![1, -2],
                    adding_replicas: vec![],
                    removing_replicas: vec![],
                })),
            },
            MetadataRecord {
                record: Some(Record::PartitionChange(PartitionChangeRecord {
                    topic: "orders".into(),
                    partition: 0,
                    leader: -7,
                    leader_epoch: 1,
                    partition_epoch: 1,
                    replicas: vec![1, 2],
                    isr: vec![1, 2],
                    adding_replicas: vec![],
                    removing_replicas: vec![],
                })),
            },
        ]
        .iter()
        .enumerate()
        {
            let refused = image.apply(2 + i as u64, record);
            assert!(
                matches!(refused, Err(MetadataError::InvalidRecord(_))),
                "record {i}: {refused:?}"
            );
            assert_eq!(image, before, "record {i} changed the image");
        }
    }

    /// Found by the `metadata_record` fuzz target: a partition change whose removing replicas
    /// outnumber its replicas made `replication_factor` underflow.
    #[test]
    fn replication_factor_counts_target_replicas_whatever_the_removing_list_holds() {
        use crate::records::PartitionChangeRecord;
        let mut image = ClusterImage::default();
        image
            .apply(1, &create("orders", &[&[1, 2, 3]]))
            .expect("apply");
        let change = |replicas: Vec<i32>, removing: Vec<i32>| MetadataRecord {
            record: Some(Record::PartitionChange(PartitionChangeRecord {
                topic: "orders".into(),
                partition: 0,
                leader: 1,
                leader_epoch: 1,
                partition_epoch: 1,
                isr: replicas.clone(),
                replicas,
                adding_replicas: vec![],
                removing_replicas: removing,
            })),
        };
        image
            .apply(2, &change(vec![1, 2, 3], vec![3]))
            .expect("apply");
        assert_eq!(
            image.topic("orders").expect("exists").replication_factor(),
            2
        );
        image
            .apply(3, &change(vec![1], vec![2, 3, 4]))
            .expect("apply");
        assert_eq!(
            image.topic("orders").expect("exists").replication_factor(),
            1
        );
    }

    fn config_change(
        resource_type: ConfigResourceType,
        name: &str,
        set: &[(&str, &str)],
        delete: &[&str],
    ) -> MetadataRecord {
        use crate::records::ConfigChangeRecord;
        MetadataRecord {
            record: Some(Record::ConfigChange(ConfigChangeRecord {
                topic: name.to_owned(),
                set: set
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                delete: delete.iter().map(|d| (*d).to_owned()).collect(),
                resource_type: resource_type as i32,
            })),
        }
    }

    #[test]
    fn cluster_and_topic_configs_apply_delete_and_survive_a_snapshot() {
        let mut image = ClusterImage::default();
        image.apply(1, &create("orders", &[&[1]])).expect("apply");
        let cluster = |set: &[(&str, &str)], delete: &[&str]| {
            config_change(ConfigResourceType::Cluster, "", set, delete)
        };
        image
            .apply(
                2,
                &cluster(&[("retention.ms", "1000"), ("segment.ms", "5")], &[]),
            )
            .expect("cluster set");
        image
            .apply(
                3,
                &config_change(
                    ConfigResourceType::Topic,
                    "orders",
                    &[("retention.ms", "9")],
                    &[],
                ),
            )
            .expect("topic set");
        image
            .apply(4, &cluster(&[], &["segment.ms"]))
            .expect("cluster delete");
        let expected: BTreeMap<String, String> =
            [("retention.ms".to_owned(), "1000".to_owned())].into();
        assert_eq!(image.cluster_configs, expected);
        let topic = image.topic("orders").expect("exists");
        let effective = image
            .topic_config(&TopicConfig::default(), topic)
            .expect("valid");
        assert_eq!(
            effective.retention_ms,
            Some(9),
            "the topic's own value wins"
        );
        let mut rebuilt = ClusterImage::default();
        for record in image.to_records() {
            rebuilt.apply(4, &record).expect("apply");
        }
        assert_eq!(rebuilt, image);
    }

    #[test]
    fn config_changes_for_missing_or_unknown_resources_are_refused() {
        let mut image = ClusterImage::default();
        image.apply(1, &create("orders", &[&[1]])).expect("apply");
        let before = image.clone();
        let mut unknown_type = config_change(ConfigResourceType::Topic, "orders", &[], &[]);
        if let Some(Record::ConfigChange(r)) = &mut unknown_type.record {
            r.resource_type = 7;
        }
        for record in [
            config_change(
                ConfigResourceType::Topic,
                "nope",
                &[("retention.ms", "1")],
                &[],
            ),
            config_change(
                ConfigResourceType::Cluster,
                "orders",
                &[("retention.ms", "1")],
                &[],
            ),
            unknown_type,
        ] {
            assert!(image.apply(2, &record).is_err(), "{record:?}");
            assert_eq!(image, before);
        }
    }

    #[test]
    fn invalid_records_leave_the_image_unchanged() {
        let mut image = ClusterImage::default();
        image.apply(1, &create("orders", &[&[1]])).expect("apply");
        let before = image.clone();
        assert!(image.apply(2, &create("orders", &[&[1]])).is_err());
        let delete_unknown = MetadataRecord {
            record: Some(Record::DeleteTopic(DeleteTopicRecord {
                name: "nope".to_owned(),
                topic_id: String::new(),
            })),
        };
        assert!(image.apply(3, &delete_unknown).is_err());
        assert_eq!(image, before);
    }

    fn producer_ids(broker_id: i32, incarnation_id: u64, first: i64, next: i64) -> MetadataRecord {
        MetadataRecord {
            record: Some(Record::ProducerIds(crate::records::ProducerIdsRecord {
                broker_id,
                incarnation_id,
                first_producer_id: first,
                next_producer_id: next,
            })),
        }
    }

    #[test]
    fn producer_id_blocks_only_move_forward_and_survive_a_snapshot() {
        let mut image = ClusterImage::default();
        image
            .apply(1, &producer_ids(1, 11, 0, 1000))
            .expect("first block");
        image
            .apply(2, &producer_ids(2, 22, 1000, 2000))
            .expect("second block");
        image
            .apply(3, &producer_ids(1, 12, 2000, 3000))
            .expect("a restarted broker's block");
        assert_eq!(image.next_producer_id, 3000);
        assert_eq!(
            image.producer_id_blocks[&BrokerId(1)],
            ProducerIdBlock {
                incarnation_id: 12,
                first: 2000,
                next: 3000
            }
        );
        for (first, next) in [(2999, 4000), (0, 500), (3000, 3000), (3500, 3400)] {
            let before = image.clone();
            assert!(
                image.apply(4, &producer_ids(3, 33, first, next)).is_err(),
                "{first}..{next} must be refused"
            );
            assert_eq!(image, before, "a refused block changes nothing");
        }
        assert!(image.apply(4, &producer_ids(-1, 1, 3000, 4000)).is_err());

        let mut rebuilt = ClusterImage::default();
        for (i, record) in image.to_records().iter().enumerate() {
            rebuilt
                .apply(i as u64 + 1, record)
                .expect("snapshot records apply");
        }
        assert_eq!(rebuilt.next_producer_id, image.next_producer_id);
        assert_eq!(rebuilt.producer_id_blocks, image.producer_id_blocks);
    }

    #[test]
    fn a_snapshot_written_before_producer_ids_existed_starts_them_at_zero() {
        let mut old = ClusterImage::default();
        old.apply(1, &create("orders", &[&[1, 2]])).expect("apply");
        let records = old.to_records();
        assert!(
            !records
                .iter()
                .any(|r| matches!(r.record, Some(Record::ProducerIds(_)))),
            "an image that never gave producer ids writes no producer id record"
        );
        let encoded: Vec<Vec<u8>> = records.iter().map(prost::Message::encode_to_vec).collect();
        let rebuilt = ClusterImage::from_records(1, &encoded).expect("old snapshot decodes");
        assert_eq!(rebuilt.next_producer_id, 0);
        assert!(rebuilt.producer_id_blocks.is_empty());
        assert_eq!(rebuilt, old);
    }
}
