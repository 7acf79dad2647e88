//! Broker liveness: which brokers the active controller has heard from, and what to commit
//! when one goes silent (fence it, move the leadership of its partitions to live in-sync
//! replicas) or when an offline partition gets a live in-sync replica back.
//!
//! The decisions are pure functions of the image and the set of live brokers, so they are
//! tested here; the loop that applies them runs on the active controller only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrolog_metadata::records::{FenceBrokerRecord, MetadataRecord, Record};
use ferrolog_metadata::{BrokerId, ClusterImage};

use crate::partition_change::NextPartition;

/// How often brokers heartbeat. Four heartbeats fit in a session, so three in a row may be
/// lost (a scheduling stall, a retransmit) before a live broker is fenced.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(300);
/// How long the active controller waits for a heartbeat before it fences a broker. Kafka
/// waits 9 s; the failover target here is 2 s from a broker's death to the first
/// acknowledged write at the new leader: 1.2 s to notice, one metadata commit (about
/// 15 ms), the new leader applying the change, and the client's metadata refresh and retry
/// backoff (a few hundred ms) fit inside it.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_millis(1200);

/// Heartbeats older than this are forgotten (only when many have piled up).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// When the active controller last heard from each broker, since it became active.
#[derive(Default)]
pub struct BrokerSessions {
    inner: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    /// Last heartbeat of each broker process: a broker id with a new incarnation is a new
    /// process, and only the registered one keeps the broker's session alive (a second
    /// process started with the same id must not).
    last_heartbeat: HashMap<(BrokerId, u64), Instant>,
    /// The Raft term in which this node became the active controller, and when. Brokers
    /// heartbeat to every controller, so a new active controller usually knows them
    /// already; one it has never heard from (it restarted itself) gets half a session of
    /// grace from then.
    active_since: Option<(u64, Instant)>,
}

impl BrokerSessions {
    pub fn heartbeat(&self, broker: BrokerId, incarnation: u64, now: Instant) {
        let mut sessions = self.lock();
        sessions.last_heartbeat.insert((broker, incarnation), now);
        // Processes gone for long (restarts leave their old incarnation behind).
        if sessions.last_heartbeat.len() > 1024 {
            sessions
                .last_heartbeat
                .retain(|_, last| now.saturating_duration_since(*last) < FORGET_AFTER);
        }
    }

    /// How long ago process `incarnation` of `broker` last heartbeat, if within `timeout`.
    pub fn heard_within(
        &self,
        broker: BrokerId,
        incarnation: u64,
        timeout: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let last = *self.lock().last_heartbeat.get(&(broker, incarnation))?;
        let age = now.saturating_duration_since(last);
        (age <= timeout).then_some(age)
    }

    /// Notes that this node is the active controller in `term` (a new term restarts the
    /// grace period); `None` when it is not active.
    pub fn set_active(&self, term: Option<u64>, now: Instant) {
        let mut sessions = self.lock();
        match term {
            Some(term) if sessions.active_since.is_some_and(|(t, _)| t == term) => {}
            Some(term) => sessions.active_since = Some((term, now)),
            None => sessions.active_since = None,
        }
    }

    /// Brokers whose registered process (id, incarnation) was heard from within `timeout`,
    /// counting the grace period as a heartbeat.
    pub fn live(
        &self,
        brokers: impl IntoIterator<Item = (BrokerId, u64)>,
        timeout: Duration,
        now: Instant,
    ) -> BTreeSet<BrokerId> {
        let sessions = self.lock();
        // Becoming active counts as a heartbeat half a session old: every broker gets half
        // a session of grace to find the new controller.
        let grace = sessions
            .active_since
            .map(|(_, since)| since.checked_sub(timeout / 2).unwrap_or(since));
        brokers
            .into_iter()
            .filter(|key| {
                let last = sessions.last_heartbeat.get(key).copied().or(grace);
                last.is_some_and(|last| now.saturating_duration_since(last) <= timeout)
            })
            .map(|(broker, _)| broker)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Fences `broker` (it missed its session) and, for each partition, takes it out of the
/// ISR and moves its leaderships to the first live ISR member in replica order (the
/// preferred replica when it is live), at the next leader epoch.
///
/// The last ISR member is never removed: with no other in-sync copy, the partition goes
/// offline (leader -1) with the fenced broker still the only eligible leader, and it leads
/// again when it returns. Electing an out-of-sync replica instead would silently drop
/// acknowledged records; Kafka's KIP-966 keeps the same "last replica standing" rule.
pub fn decide_fence_broker(
    image: &ClusterImage,
    broker: BrokerId,
    live: &BTreeSet<BrokerId>,
) -> Vec<MetadataRecord> {
    let Some(registered) = image.brokers.get(&broker) else {
        return Vec::new();
    };
    if registered.fenced {
        return Vec::new();
    }
    let mut records = vec![MetadataRecord {
        record: Some(Record::FenceBroker(FenceBrokerRecord {
            broker_id: broker.0,
            incarnation_id: registered.incarnation_id,
        })),
    }];
    for topic in image.topics.values() {
        for p in &topic.partitions {
            let in_isr = p.isr.contains(&broker);
            let leads = p.leader == Some(broker);
            if !in_isr && !leads {
                continue;
            }
            let isr: Vec<BrokerId> = if p.isr.len() > 1 {
                p.isr.iter().copied().filter(|b| *b != broker).collect()
            } else {
                p.isr.clone()
            };
            let mut next = NextPartition::from(&topic.name, p);
            if leads {
                next = next.leader(
                    p.replicas
                        .iter()
                        .copied()
                        .find(|r| *r != broker && isr.contains(r) && live.contains(r)),
                );
            }
            records.extend(next.isr(isr).into_record());
        }
    }
    records
}

/// Leaders for offline partitions (no leader) that have a live, unfenced ISR member again.
pub fn decide_elect_offline(
    image: &ClusterImage,
    live: &BTreeSet<BrokerId>,
) -> Vec<MetadataRecord> {
    let eligible = |b: &BrokerId| {
        live.contains(b)
            && image
                .brokers
                .get(b)
                .is_some_and(|registered| !registered.fenced)
    };
    let mut records = Vec::new();
    for topic in image.topics.values() {
        for p in &topic.partitions {
            if p.leader.is_some() {
                continue;
            }
            if let Some(leader) = p
                .replicas
                .iter()
                .copied()
                .find(|r| p.isr.contains(r) && eligible(r))
            {
                records.extend(
                    NextPartition::from(&topic.name, p)
                        .leader(Some(leader))
                        .into_record(),
                );
            }
        }
    }
    records
}

/// Gives each partition back to its preferred replica (the first in its replica list,
/// where placement spreads leaders evenly) when that replica is live and in sync but
/// another leads, e.g. after a failover: without this, leadership piles up on the
/// brokers that stayed up.
pub fn decide_preferred_leaders(
    image: &ClusterImage,
    live: &BTreeSet<BrokerId>,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics.values() {
        for p in &topic.partitions {
            let Some(preferred) = p.replicas.first().copied() else {
                continue;
            };
            let eligible = p.leader.is_some()
                && p.leader != Some(preferred)
                && p.isr.contains(&preferred)
                && live.contains(&preferred)
                && image.brokers.get(&preferred).is_some_and(|b| !b.fenced);
            if eligible {
                records.extend(
                    NextPartition::from(&topic.name, p)
                        .leader(Some(preferred))
                        .into_record(),
                );
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_metadata::PartitionImage;
    use ferrolog_metadata::records::{
        CreateTopicRecord, PartitionAssignment, RegisterBrokerRecord,
    };

    fn apply(image: &mut ClusterImage, records: Vec<MetadataRecord>) {
        for record in records {
            let index = image.applied_index + 1;
            image.apply(index, &record).expect("apply");
        }
    }

    /// Brokers 1..=3 and topic "t": partition 0 on [1,2,3], partition 1 on [2,3,1].
    fn image() -> ClusterImage {
        let mut image = ClusterImage::default();
        let mut records: Vec<MetadataRecord> = (1..=3)
            .map(|id| MetadataRecord {
                record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                    broker_id: id,
                    address: format!("h{id}:1"),
                    incarnation_id: 7,
                })),
            })
            .collect();
        records.push(MetadataRecord {
            record: Some(Record::CreateTopic(CreateTopicRecord {
                name: "t".into(),
                topic_id: "id".into(),
                assignments: vec![
                    PartitionAssignment {
                        partition: 0,
                        replicas: vec![1, 2, 3],
                    },
                    PartitionAssignment {
                        partition: 1,
                        replicas: vec![2, 3, 1],
                    },
                ],
                configs: Default::default(),
            })),
        });
        apply(&mut image, records);
        image
    }

    fn live(ids: &[i32]) -> BTreeSet<BrokerId> {
        ids.iter().copied().map(BrokerId).collect()
    }

    fn partition(image: &ClusterImage, p: usize) -> PartitionImage {
        image.topic("t").expect("topic").partitions[p].clone()
    }

    #[test]
    fn a_fenced_leader_is_replaced_by_the_next_live_in_sync_replica() {
        let mut image = image();
        let records = decide_fence_broker(&image, BrokerId(1), &live(&[2, 3]));
        apply(&mut image, records);
        assert!(image.brokers[&BrokerId(1)].fenced);
        let p0 = partition(&image, 0);
        assert_eq!(p0.leader, Some(BrokerId(2)));
        assert_eq!(p0.leader_epoch, 1);
        assert_eq!(p0.isr, vec![BrokerId(2), BrokerId(3)]);
        // Partition 1 keeps its leader and epoch; only its ISR shrinks.
        let p1 = partition(&image, 1);
        assert_eq!(p1.leader, Some(BrokerId(2)));
        assert_eq!(p1.leader_epoch, 0);
        assert_eq!(p1.isr, vec![BrokerId(2), BrokerId(3)]);
        // Fencing twice commits nothing.
        assert!(decide_fence_broker(&image, BrokerId(1), &live(&[2, 3])).is_empty());
    }

    #[test]
    fn the_last_replica_standing_stays_in_the_isr_and_leads_again_when_it_returns() {
        let mut image = image();
        for broker in [2, 3] {
            let records = decide_fence_broker(&image, BrokerId(broker), &live(&[1]));
            apply(&mut image, records);
        }
        assert_eq!(partition(&image, 0).isr, vec![BrokerId(1)]);
        let records = decide_fence_broker(&image, BrokerId(1), &live(&[]));
        apply(&mut image, records);
        let p0 = partition(&image, 0);
        assert_eq!(p0.leader, None, "no live in-sync replica: offline");
        assert_eq!(p0.isr, vec![BrokerId(1)], "never an empty ISR");

        // Broker 3 returns first: out of sync, it must not lead.
        let unfence = |image: &mut ClusterImage, id: i32| {
            apply(
                image,
                vec![MetadataRecord {
                    record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                        broker_id: id,
                        address: format!("h{id}:1"),
                        incarnation_id: 8,
                    })),
                }],
            )
        };
        unfence(&mut image, 3);
        assert!(decide_elect_offline(&image, &live(&[3])).is_empty());
        // Broker 1, the last in-sync replica, returns and leads again.
        unfence(&mut image, 1);
        let records = decide_elect_offline(&image, &live(&[1, 3]));
        assert_eq!(records.len(), 2);
        apply(&mut image, records);
        assert_eq!(partition(&image, 0).leader, Some(BrokerId(1)));
    }

    #[test]
    fn leadership_returns_to_the_preferred_replica_once_it_is_back_in_sync() {
        let mut image = image();
        let records = decide_fence_broker(&image, BrokerId(1), &live(&[2, 3]));
        apply(&mut image, records);
        assert_eq!(partition(&image, 0).leader, Some(BrokerId(2)));
        // Fenced and out of the ISR: not yet.
        assert!(decide_preferred_leaders(&image, &live(&[1, 2, 3])).is_empty());
        // Registered again, but still out of the ISR: not yet.
        apply(
            &mut image,
            vec![MetadataRecord {
                record: Some(Record::RegisterBroker(RegisterBrokerRecord {
                    broker_id: 1,
                    address: "h1:1".into(),
                    incarnation_id: 9,
                })),
            }],
        );
        assert!(decide_preferred_leaders(&image, &live(&[1, 2, 3])).is_empty());
        // Back in the ISR: it leads again, at the next epoch.
        let p0 = partition(&image, 0);
        apply(
            &mut image,
            NextPartition::from("t", &p0)
                .isr(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                .into_record()
                .into_iter()
                .collect(),
        );
        let records = decide_preferred_leaders(&image, &live(&[1, 2, 3]));
        assert_eq!(records.len(), 1);
        apply(&mut image, records);
        let p0 = partition(&image, 0);
        assert_eq!(p0.leader, Some(BrokerId(1)));
        assert_eq!(p0.leader_epoch, 2);
        assert!(decide_preferred_leaders(&image, &live(&[1, 2, 3])).is_empty());
    }

    #[test]
    fn a_new_active_controller_trusts_heartbeats_it_has_and_gives_the_rest_half_a_session() {
        let sessions = BrokerSessions::default();
        let t0 = Instant::now() + Duration::from_secs(5);
        let timeout = Duration::from_secs(1);
        sessions.set_active(Some(5), t0);
        let brokers = [(BrokerId(1), 7), (BrokerId(2), 7)];
        assert_eq!(
            sessions
                .live(brokers, timeout, t0 + Duration::from_millis(400))
                .len(),
            2
        );
        assert!(
            sessions
                .live(brokers, timeout, t0 + Duration::from_millis(600))
                .is_empty()
        );
        sessions.heartbeat(BrokerId(1), 7, t0 + Duration::from_millis(800));
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(sessions.live(brokers, timeout, later), live(&[1]));
        // Same term: no new grace. A new term: grace again for the broker never heard
        // from, none for one whose heartbeats stopped (it is dead, not unknown).
        sessions.set_active(Some(5), later);
        assert_eq!(sessions.live(brokers, timeout, later), live(&[1]));
        sessions.set_active(Some(6), later);
        assert_eq!(sessions.live(brokers, timeout, later).len(), 2);
        let much_later = later + Duration::from_millis(900);
        sessions.set_active(Some(7), much_later);
        assert_eq!(sessions.live(brokers, timeout, much_later), live(&[2]));
    }

    #[test]
    fn only_the_registered_process_keeps_a_broker_alive() {
        let sessions = BrokerSessions::default();
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        // Process 7 is registered; process 8 runs with the same broker id.
        sessions.heartbeat(BrokerId(1), 8, t0);
        assert!(sessions.live([(BrokerId(1), 7)], timeout, t0).is_empty());
        assert_eq!(sessions.heard_within(BrokerId(1), 7, timeout, t0), None);
        sessions.heartbeat(BrokerId(1), 7, t0);
        let soon = t0 + Duration::from_millis(300);
        assert_eq!(sessions.live([(BrokerId(1), 7)], timeout, soon), live(&[1]));
        assert_eq!(
            sessions.heard_within(BrokerId(1), 7, timeout, soon),
            Some(Duration::from_millis(300))
        );
        let late = t0 + Duration::from_secs(2);
        assert_eq!(sessions.heard_within(BrokerId(1), 7, timeout, late), None);
    }
}
