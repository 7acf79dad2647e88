//! The controller's decisions: pure functions from the cluster image and a request to the
//! metadata records that carry it out, or the reason it is refused. They read nothing but
//! their arguments and write nothing, so the same request on the same image always decides
//! the same way; [`crate::Controller`] runs them inside the quorum's proposal, on a
//! linearizable image. Broker liveness decides in [`crate::liveness`].

use std::collections::{BTreeMap, BTreeSet};

use ferrolog_metadata::records::{
    ConfigChangeRecord, ConfigResourceType, CreatePartitionsRecord, CreateTopicRecord,
    DeleteTopicRecord, MetadataRecord, PartitionAssignment, ProducerIdsRecord, Record,
    RegisterBrokerRecord,
};
use ferrolog_metadata::{
    BrokerId, ClusterImage, ConfigError, ConfigResource, PartitionImage, TopicConfig,
    alter_overrides, random_id,
};

use crate::change::{AlterConfigsRequest, AlterPartitionRequest, Change, CreateTopicRequest};
use crate::liveness::decide_fence_broker;
use crate::partition_change::NextPartition;
use crate::{ControllerError, assign_replicas, validate_topic_name};

/// Upper bound on partitions per topic. Each partition holds open files (log, index, time
/// index per segment); an accidental `--partitions 1000000` must be refused, not exhaust
/// the node's file descriptors.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 4096;
/// Replication factor when a request does not say: 3 (capped at the live brokers), the
/// smallest that survives losing a broker while another is down for maintenance.
pub const DEFAULT_REPLICATION_FACTOR: i64 = 3;

/// Checks what can be checked without the image, so a bad request is refused by the node
/// that receives it, before it is forwarded or proposed.
pub(crate) fn validate(change: &Change, defaults: &TopicConfig) -> Result<(), ControllerError> {
    match change {
        Change::CreateTopic(request) => validate_create(request, defaults),
        Change::RegisterBroker { id, address, .. } => validate_registration(*id, address),
        Change::AlterConfigs(request) => validate_alter_configs(request),
        Change::DeleteTopic(_)
        | Change::AlterPartition(_)
        | Change::ElectLeader { .. }
        | Change::ControlledShutdown(_)
        | Change::CreatePartitions { .. }
        | Change::ReassignPartition { .. }
        | Change::AllocateProducerIds { .. } => Ok(()),
    }
}

/// Producer ids per block a broker is given (Kafka's, KIP-730): a broker asks again only
/// every thousand idempotent producers.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// Gives broker `broker`'s process `incarnation_id` the next block of producer ids, if that
/// process is the one registered (a restarted broker's old process gets none).
pub fn decide_allocate_producer_ids(
    image: &ClusterImage,
    broker: BrokerId,
    incarnation_id: u64,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let registered = image.brokers.get(&broker);
    if registered.is_none_or(|b| b.incarnation_id != incarnation_id) {
        return Err(ControllerError::StaleBrokerIncarnation {
            broker: broker.0,
            incarnation_id,
            registered: registered.map_or_else(
                || "it is not registered".to_owned(),
                |b| format!("registered incarnation {}", b.incarnation_id),
            ),
        });
    }
    let first = image.next_producer_id;
    let next = first
        .checked_add(PRODUCER_ID_BLOCK_SIZE)
        .ok_or(ControllerError::ProducerIdsExhausted { next: first })?;
    Ok(vec![MetadataRecord {
        record: Some(Record::ProducerIds(ProducerIdsRecord {
            broker_id: broker.0,
            incarnation_id,
            first_producer_id: first,
            next_producer_id: next,
        })),
    }])
}

/// Checks a broker registration: node ids are never negative, and the address is where
/// clients and other brokers will connect, so it must at least name a host and a port.
fn validate_registration(id: BrokerId, address: &str) -> Result<(), ControllerError> {
    let invalid = |reason: &'static str| ControllerError::InvalidBrokerRegistration {
        broker: id.0,
        address: address.to_owned(),
        reason,
    };
    if id.0 < 0 {
        return Err(invalid("broker ids are never negative"));
    }
    let valid_address = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid_address {
        return Err(invalid("the address must be host:port"));
    }
    Ok(())
}

/// Checks a create-topic request without the image.
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
    defaults
        .with_overrides(&request.configs)?
        .check_consistent()?;
    Ok(())
}

/// Checks a config change without the image: names known, values well formed, no name both
/// set and deleted. The layered result is checked against the image when it is decided.
fn validate_alter_configs(request: &AlterConfigsRequest) -> Result<(), ControllerError> {
    alter_overrides(&BTreeMap::new(), &request.set, &request.delete)?;
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
    // With the cluster's dynamic defaults under it, as the topic will be configured.
    defaults
        .layered(&image.cluster_configs, &request.configs)?
        .check_consistent()?;
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

/// The record that alters a topic's or the cluster's configs, if the layered result of every
/// topic it reaches is valid: the topic's own (static defaults, cluster defaults, its new
/// settings), or, for the cluster defaults, every topic's. Refused whole otherwise, as
/// Kafka's IncrementalAlterConfigs refuses a resource. A change that changes nothing
/// commits nothing.
pub fn decide_alter_configs(
    image: &ClusterImage,
    request: &AlterConfigsRequest,
    defaults: &TopicConfig,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    validate_alter_configs(request)?;
    let (name, resource_type, current) = match &request.resource {
        ConfigResource::Topic(name) => {
            let topic = image
                .topic(name)
                .ok_or_else(|| ControllerError::UnknownTopic(name.clone()))?;
            (name.clone(), ConfigResourceType::Topic, &topic.configs)
        }
        ConfigResource::Cluster => (
            String::new(),
            ConfigResourceType::Cluster,
            &image.cluster_configs,
        ),
    };
    let altered = alter_overrides(current, &request.set, &request.delete)?;
    if altered == *current {
        return Ok(Vec::new());
    }
    match &request.resource {
        ConfigResource::Topic(_) => defaults
            .layered(&image.cluster_configs, &altered)?
            .check_consistent()?,
        ConfigResource::Cluster => {
            defaults.with_overrides(&altered)?.check_consistent()?;
            for topic in image.topics.values() {
                let checked = defaults
                    .layered(&altered, &topic.configs)
                    .and_then(|config| config.check_consistent());
                if let Err(error) = checked {
                    return Err(in_context(error, format!("topic '{}'", topic.name)).into());
                }
            }
        }
    }
    // Only what the request changes, so the record says what the operator did; deleting a
    // name the resource does not set writes nothing for it.
    let record = ConfigChangeRecord {
        topic: name,
        set: request
            .set
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        delete: request
            .delete
            .iter()
            .filter(|k| current.contains_key(*k))
            .cloned()
            .collect(),
        resource_type: resource_type as i32,
    };
    Ok(vec![MetadataRecord {
        record: Some(Record::ConfigChange(record)),
    }])
}

/// Names the topic whose layered config a cluster change would make contradictory.
fn in_context(error: ConfigError, context: String) -> ConfigError {
    match error {
        ConfigError::Conflict { reason, .. } => ConfigError::Conflict {
            context: Some(context),
            reason,
        },
        other => other,
    }
}

/// The record that deletes a topic, which must exist.
pub(crate) fn decide_delete_topic(
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

/// The partition a request names, or why there is none.
fn find_partition<'a>(
    image: &'a ClusterImage,
    topic: &str,
    partition: i32,
) -> Result<&'a PartitionImage, ControllerError> {
    let t = image
        .topic(topic)
        .ok_or_else(|| ControllerError::UnknownTopic(topic.to_owned()))?;
    usize::try_from(partition)
        .ok()
        .and_then(|i| t.partitions.get(i))
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
pub(crate) fn decide_elect_leader(
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
pub(crate) fn decide_create_partitions(
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
pub(crate) fn decide_reassign_partition(
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

/// The brokers new replicas may be placed on.
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
/// that keep the broker alive from then on; registering again unfences it. `live` is the
/// brokers the controller hears from.
///
/// A new process of a broker whose old one was never fenced (a restart within its session)
/// first fences the old one, in the same command: its leaderships move to another live
/// in-sync replica, or wait offline for the next election, at a new leader epoch either way.
/// The restarted log may have lost an unsynced suffix that followers already fetched in the
/// old leader epoch; only a new epoch makes them truncate it (KIP-101), instead of keeping
/// records the restarted broker would write again at the same offsets. Kafka fences a
/// broker's old epoch on re-registration for the same reason.
pub fn decide_register_broker(
    image: &ClusterImage,
    id: BrokerId,
    address: &str,
    incarnation_id: u64,
    live: &BTreeSet<BrokerId>,
) -> Vec<MetadataRecord> {
    let mut records = match image.brokers.get(&id) {
        Some(b) if b.address == address && !b.fenced && b.incarnation_id == incarnation_id => {
            return Vec::new();
        }
        Some(b) if !b.fenced && b.incarnation_id != incarnation_id => {
            let mut others = live.clone();
            others.remove(&id);
            decide_fence_broker(image, id, &others)
        }
        _ => Vec::new(),
    };
    records.push(MetadataRecord {
        record: Some(Record::RegisterBroker(RegisterBrokerRecord {
            broker_id: id.0,
            address: address.to_owned(),
            incarnation_id,
        })),
    });
    records
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferrolog_proto::v1::ErrorCode;

    use super::*;

    fn image_with_broker() -> ClusterImage {
        let mut image = ClusterImage::default();
        for record in decide_register_broker(
            &image.clone(),
            BrokerId(1),
            "127.0.0.1:9290",
            7,
            &BTreeSet::new(),
        ) {
            image.apply(1, &record).expect("apply");
        }
        image
    }

    #[test]
    fn a_registered_broker_gets_the_next_block_of_producer_ids_and_a_stale_process_none() {
        let mut image = image_with_broker();
        for (index, first) in [(2, 0), (3, PRODUCER_ID_BLOCK_SIZE)] {
            let records = decide_allocate_producer_ids(&image, BrokerId(1), 7).expect("block");
            image.apply(index, &records[0]).expect("apply");
            let block = image.producer_id_blocks[&BrokerId(1)];
            assert_eq!(
                (block.first, block.next),
                (first, first + PRODUCER_ID_BLOCK_SIZE)
            );
        }
        for (broker, incarnation) in [(1, 6), (2, 7)] {
            let refused = decide_allocate_producer_ids(&image, BrokerId(broker), incarnation)
                .expect_err("not the registered process");
            assert_eq!(refused.code(), ErrorCode::FencedEpoch, "{refused}");
        }
        image.next_producer_id = i64::MAX - 10;
        let exhausted = decide_allocate_producer_ids(&image, BrokerId(1), 7).expect_err("end");
        assert!(matches!(
            exhausted,
            ControllerError::ProducerIdsExhausted { .. }
        ));
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

    fn alter_configs(
        resource: ConfigResource,
        set: &[(&str, &str)],
        delete: &[&str],
    ) -> AlterConfigsRequest {
        AlterConfigsRequest {
            resource,
            set: set
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            delete: delete.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn topic_image() -> ClusterImage {
        let mut image = image_with_broker();
        let records = decide_create_topic(&image, &request("orders", 1), &TopicConfig::default())
            .expect("create");
        apply_all(&mut image, records);
        image
    }

    #[test]
    fn config_alters_layer_topic_over_cluster_and_delete_falls_back() {
        let defaults = TopicConfig::default();
        let topic = || ConfigResource::Topic("orders".into());
        let mut image = topic_image();
        let retention = |image: &ClusterImage| {
            let t = image.topic("orders").expect("topic");
            image
                .topic_config(&defaults, t)
                .expect("valid")
                .retention_ms
        };
        let steps = [
            (
                alter_configs(ConfigResource::Cluster, &[("retention.ms", "2000")], &[]),
                Some(2000),
            ),
            (
                alter_configs(topic(), &[("retention.ms", "1000")], &[]),
                Some(1000),
            ),
            (alter_configs(topic(), &[], &["retention.ms"]), Some(2000)),
            (
                alter_configs(ConfigResource::Cluster, &[], &["retention.ms"]),
                defaults.retention_ms,
            ),
        ];
        for (request, expected) in steps {
            let records = decide_alter_configs(&image, &request, &defaults).expect("valid");
            assert_eq!(records.len(), 1, "{request:?}");
            apply_all(&mut image, records);
            assert_eq!(retention(&image), expected, "{request:?}");
        }
        // Deleting what is not set, or setting what is already set, commits nothing.
        let unset = alter_configs(topic(), &[], &["retention.ms"]);
        assert!(
            decide_alter_configs(&image, &unset, &defaults)
                .expect("no-op")
                .is_empty()
        );
        let set = alter_configs(topic(), &[("segment.bytes", "4096")], &[]);
        let records = decide_alter_configs(&image, &set, &defaults).expect("set");
        apply_all(&mut image, records);
        assert!(
            decide_alter_configs(&image, &set, &defaults)
                .expect("no-op")
                .is_empty()
        );
    }

    #[test]
    fn bad_config_alters_are_refused_whole_with_their_codes() {
        let defaults = TopicConfig::default();
        let mut image = topic_image();
        let topic = || ConfigResource::Topic("orders".into());
        let lag = alter_configs(topic(), &[("max.compaction.lag.ms", "1000")], &[]);
        let records = decide_alter_configs(&image, &lag, &defaults).expect("valid");
        apply_all(&mut image, records);
        for (request, code, needle) in [
            (
                alter_configs(
                    ConfigResource::Topic("nope".into()),
                    &[("retention.ms", "1")],
                    &[],
                ),
                ErrorCode::UnknownTopic,
                "unknown topic 'nope'",
            ),
            (
                alter_configs(
                    topic(),
                    &[("retention.ms", "1"), ("retention.hours", "1")],
                    &[],
                ),
                ErrorCode::InvalidConfig,
                "unknown topic config 'retention.hours'",
            ),
            (
                alter_configs(
                    topic(),
                    &[("segment.bytes", "1"), ("retention.ms", "1")],
                    &[],
                ),
                ErrorCode::InvalidConfig,
                "'segment.bytes': bytes between 1024",
            ),
            (
                alter_configs(topic(), &[("retention.ms", "1")], &["retention.ms"]),
                ErrorCode::InvalidConfig,
                "both set and deleted",
            ),
            (
                alter_configs(topic(), &[("min.compaction.lag.ms", "5000")], &[]),
                ErrorCode::InvalidConfig,
                "min.compaction.lag.ms (5000) must not exceed max.compaction.lag.ms (1000)",
            ),
            (
                alter_configs(
                    ConfigResource::Cluster,
                    &[("min.compaction.lag.ms", "5000")],
                    &[],
                ),
                ErrorCode::InvalidConfig,
                "of topic 'orders'",
            ),
        ] {
            let refused = decide_alter_configs(&image, &request, &defaults).expect_err("refused");
            assert_eq!(refused.code(), code, "{request:?}: {refused}");
            assert!(refused.to_string().contains(needle), "{refused}");
        }
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
        // incarnation) fences the old process first, then records itself.
        let none = BTreeSet::new();
        assert!(decide_register_broker(&image, BrokerId(1), "127.0.0.1:9290", 7, &none).is_empty());
        let restarted = decide_register_broker(&image, BrokerId(1), "127.0.0.1:9290", 8, &none);
        assert!(matches!(
            restarted.first().and_then(|r| r.record.as_ref()),
            Some(Record::FenceBroker(_))
        ));
        assert!(matches!(
            restarted.last().and_then(|r| r.record.as_ref()),
            Some(Record::RegisterBroker(r)) if r.incarnation_id == 8
        ));
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
            let records = decide_register_broker(
                &image,
                BrokerId(id),
                &format!("h{id}:1"),
                1,
                &BTreeSet::new(),
            );
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

    #[test]
    fn registrations_with_a_negative_id_or_no_host_and_port_are_refused() {
        for (id, address) in [(-1, "127.0.0.1:9290"), (1, ""), (1, "host"), (1, ":9290")] {
            let refused = validate_registration(BrokerId(id), address).expect_err(address);
            assert_eq!(refused.code(), ErrorCode::InvalidRequest, "{id} {address}");
        }
        for address in ["127.0.0.1:9290", "ferrolog-0.ferrolog:9292", "[::1]:9290"] {
            validate_registration(BrokerId(0), address).expect(address);
        }
    }

    #[test]
    fn a_partition_of_an_unknown_topic_is_an_unknown_topic() {
        let image = image_with_broker();
        let refused = decide_elect_leader(&image, "nope", 0, BrokerId(1)).expect_err("refused");
        assert_eq!(refused.code(), ErrorCode::UnknownTopic);
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
        let register = decide_register_broker(&image, BrokerId(4), "h4:1", 1, &BTreeSet::new());
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
