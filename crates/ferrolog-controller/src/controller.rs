//! Turns admin requests into metadata records and appends them to the metadata log.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrolog_metadata::records::{
    CreateTopicRecord, DeleteTopicRecord, MetadataRecord, PartitionAssignment, Record,
    RegisterBrokerRecord,
};
use ferrolog_metadata::{BrokerId, MetadataStore, TopicConfig, TopicImage, random_id};

use crate::{ControllerError, assign_replicas, validate_topic_name};

/// Upper bound on partitions per topic. Each partition holds open files (log, index, time
/// index per segment); an accidental `--partitions 1000000` must be refused, not exhaust
/// the node's file descriptors.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 4096;

/// A create-topic request as the admin API receives it, before validation.
#[derive(Clone, Debug, Default)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: i64,
    /// 0 picks the default: min(3, live brokers).
    pub replication_factor: i64,
    pub configs: BTreeMap<String, String>,
}

/// The controller of a cluster: validates admin requests and commits their records.
pub struct Controller {
    store: Arc<MetadataStore>,
    topic_defaults: TopicConfig,
}

impl Controller {
    pub fn new(store: Arc<MetadataStore>, topic_defaults: TopicConfig) -> Self {
        Self {
            store,
            topic_defaults,
        }
    }

    pub fn topic_defaults(&self) -> &TopicConfig {
        &self.topic_defaults
    }

    /// Registers (or re-registers, after a restart) a broker at `address`.
    #[tracing::instrument(skip(self))]
    pub fn register_broker(
        &self,
        id: BrokerId,
        address: &str,
        incarnation_id: u64,
    ) -> Result<(), ControllerError> {
        let current = self.store.image();
        if current
            .brokers
            .get(&id)
            .is_some_and(|b| b.address == address)
        {
            return Ok(());
        }
        self.store.append(&[MetadataRecord {
            record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: id.0,
                address: address.to_owned(),
                incarnation_id,
            })),
        }])?;
        Ok(())
    }

    /// Validates the request, places the replicas, and commits the topic.
    #[tracing::instrument(skip(self, request), fields(topic = %request.name))]
    pub fn create_topic(&self, request: CreateTopicRequest) -> Result<TopicImage, ControllerError> {
        validate_topic_name(&request.name)?;
        if request.partitions < 1 || request.partitions > i64::from(MAX_PARTITIONS_PER_TOPIC) {
            return Err(ControllerError::InvalidPartitions {
                requested: request.partitions,
                max: MAX_PARTITIONS_PER_TOPIC,
            });
        }
        self.topic_defaults.with_overrides(&request.configs)?;

        let name = request.name.clone();
        self.store.append_with(|image| {
            if image.topic(&request.name).is_some() {
                return Err(ControllerError::TopicAlreadyExists(request.name.clone()));
            }
            let brokers: Vec<BrokerId> = image.brokers.keys().copied().collect();
            let replication_factor = match request.replication_factor {
                0 => brokers.len().min(3) as i64,
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
        })?;
        tracing::info!("topic created");
        self.store
            .image()
            .topic(&name)
            .cloned()
            .ok_or(ControllerError::UnknownTopic(name))
    }

    /// Commits the deletion of a topic; brokers then remove its partitions.
    #[tracing::instrument(skip(self))]
    pub fn delete_topic(&self, name: &str) -> Result<(), ControllerError> {
        self.store.append_with(|image| {
            let topic = image
                .topic(name)
                .ok_or_else(|| ControllerError::UnknownTopic(name.to_owned()))?;
            Ok::<_, ControllerError>(vec![MetadataRecord {
                record: Some(Record::DeleteTopic(DeleteTopicRecord {
                    name: name.to_owned(),
                    topic_id: topic.topic_id.clone(),
                })),
            }])
        })?;
        tracing::info!("topic deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(dir: &std::path::Path) -> Controller {
        let store = Arc::new(MetadataStore::open(dir).expect("open store"));
        let controller = Controller::new(store, TopicConfig::default());
        controller
            .register_broker(BrokerId(1), "127.0.0.1:9290", 7)
            .expect("register");
        controller
    }

    fn request(name: &str, partitions: i64) -> CreateTopicRequest {
        CreateTopicRequest {
            name: name.to_owned(),
            partitions,
            ..Default::default()
        }
    }

    #[test]
    fn create_topic_defaults_replication_to_the_live_brokers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let topic = controller(dir.path())
            .create_topic(request("orders", 3))
            .expect("create");
        assert_eq!(topic.partitions.len(), 3);
        assert_eq!(topic.replication_factor(), 1);
    }

    #[test]
    fn bad_requests_are_refused_with_their_codes() {
        use ferrolog_proto::v1::ErrorCode;
        let dir = tempfile::tempdir().expect("tempdir");
        let c = controller(dir.path());
        c.create_topic(request("orders", 1)).expect("create");
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
            let name = req.name.clone();
            let err = c.create_topic(req).expect_err(&name);
            assert_eq!(err.code(), code, "{name}: {err}");
        }
        assert!(matches!(
            c.delete_topic("nope"),
            Err(ControllerError::UnknownTopic(_))
        ));
    }
}
