//! Broker liveness: which brokers the controllers have heard from, and what the active
//! controller commits when one goes silent (fence it, move the leadership of its partitions
//! to live in-sync replicas), when an offline partition gets a live in-sync replica back,
//! and when a preferred replica can lead again. Also here: the heartbeats that feed it, on
//! both sides, and the refusal of a second process with a live broker's id.
//!
//! The decisions are pure functions of the image and the set of live brokers, so they are
//! tested here; the loop that applies them ([`Controller::run_liveness`]) runs on the active
//! controller only.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolog_metadata::records::{FenceBrokerRecord, MetadataRecord, Record};
use ferrolog_metadata::{BrokerId, ClusterImage, MetadataError};
use ferrolog_proto::v1;

use crate::partition_change::NextPartition;
use crate::{Controller, ControllerError};

/// How often brokers heartbeat. Four heartbeats fit in a session, so three in a row may be
/// lost (a scheduling stall, a retransmit) before a live broker is fenced.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(300);
/// How long the active controller waits for a heartbeat before it fences a broker. Kafka
/// waits 9 s; the failover target here is 2 s from a broker's death to the first
/// acknowledged write at the new leader: 1.2 s to notice, one metadata commit (about
/// 15 ms), the new leader applying the change, and the client's metadata refresh and retry
/// backoff (a few hundred ms) fit inside it.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_millis(1200);

/// How often leaderships move back to preferred replicas. Kafka checks every 5 minutes;
/// 30 s keeps a restarted broker idle only briefly, and a move costs one metadata commit
/// and a leader change per partition.
pub const DEFAULT_LEADER_REBALANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Heartbeats older than this are forgotten (only when many have piled up).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// When the active controller last heard from each broker, since it became active.
#[derive(Default)]
pub(crate) struct BrokerSessions {
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
    pub(crate) fn heartbeat(&self, broker: BrokerId, incarnation: u64, now: Instant) {
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
    pub(crate) fn heard_within(
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
    pub(crate) fn set_active(&self, term: Option<u64>, now: Instant) {
        let mut sessions = self.lock();
        match term {
            Some(term) if sessions.active_since.is_some_and(|(t, _)| t == term) => {}
            Some(term) => sessions.active_since = Some((term, now)),
            None => sessions.active_since = None,
        }
    }

    /// Brokers whose registered process (id, incarnation) was heard from within `timeout`,
    /// counting the grace period as a heartbeat.
    pub(crate) fn live(
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

impl Controller {
    /// Records a heartbeat on this controller; whether the image has the broker fenced (or
    /// unknown), in which case it must register again. Every controller records
    /// heartbeats, not only the active one, so a newly elected controller already knows
    /// who is alive and fences a dead broker without waiting out a grace period.
    /// A process other than the registered one (another incarnation) is told it is fenced:
    /// it must register, which is refused while the registered process is alive.
    pub(crate) fn record_heartbeat(
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

    /// Sends a broker's heartbeat to every controller (each records it, see
    /// `record_heartbeat`); whether it is fenced, as the local image (on a controller) or
    /// any controller says. Each send gives up after `per_send`: a paused or unreachable
    /// controller must not hold up the next heartbeat to the others, or the active one
    /// fences this broker. The sends run together, so no answer within `per_send` means
    /// none is coming.
    pub async fn broker_heartbeat(
        &self,
        broker: BrokerId,
        incarnation_id: u64,
        per_send: Duration,
    ) -> Result<bool, ControllerError> {
        let (local, targets): (Option<bool>, Vec<String>) = match &self.quorum {
            Some(quorum) => (
                Some(self.record_heartbeat(broker, incarnation_id)?),
                quorum
                    .voter_addresses()
                    .into_iter()
                    .filter(|(id, _)| *id != quorum.node_id())
                    .map(|(_, address)| address)
                    .collect(),
            ),
            None => (None, self.forwarder.voters().to_vec()),
        };
        let sends = targets.into_iter().map(|address| async move {
            let mut client = self
                .forwarder
                .client(&address)
                .map_err(|s| s.message().to_owned())?;
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
            timeout_ms: per_send.as_millis() as u64,
            last_error,
        })
    }

    /// The brokers whose registered process this controller heard from within the session
    /// timeout (or that are still in their grace period), as of `now`.
    pub(crate) fn live_brokers(&self, image: &ClusterImage, now: Instant) -> BTreeSet<BrokerId> {
        self.sessions.live(
            image.brokers.values().map(|b| (b.id, b.incarnation_id)),
            self.session_timeout,
            now,
        )
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
            let live = self.live_brokers(&image, now);
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

    /// A registration by a new process (another incarnation, at another address) of a
    /// broker whose registered process is alive and unfenced is refused: two processes
    /// with one broker id (a cloned data directory, a copy-pasted config) must not take
    /// turns leading. Once the old process stops, it is fenced after its session, and the
    /// new one registers.
    pub(crate) fn refuse_duplicate_broker(
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
