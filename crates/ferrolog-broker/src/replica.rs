//! What a partition replica knows about its role: as leader, where each follower's log ends
//! and when it last caught up (the inputs of the high watermark and of ISR changes); as
//! follower, which leader and epoch it follows. Pure bookkeeping, no I/O, so the rules are
//! tested here directly.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use ferrolog_log::Offset;
use ferrolog_metadata::{BrokerId, ClusterImage, PartitionImage};
// Tokio's clock, which is the system's except under a paused test runtime: there the
// data-path simulation (`crates/ferrolog-sim`) moves it, so ISR lag follows simulated time.
use tokio::time::Instant;

/// Where one follower stands, as the leader has seen it through its fetches.
#[derive(Clone, Copy, Debug)]
pub struct FollowerProgress {
    /// Where the follower's durable (fsynced) log ends, once a fetch has shown its log
    /// agrees with ours below it (before that it counts as nothing).
    pub end_offset: Option<Offset>,
    /// Last time the follower was caught up (Kafka's `lastCaughtUpTimeMs`).
    pub last_caught_up: Instant,
    /// Our log end offset when the follower last fetched, and when that was: a fetch that
    /// reaches it proves the follower was caught up at that earlier moment.
    leo_at_last_fetch: Offset,
    last_fetch: Instant,
}

impl FollowerProgress {
    /// A follower not heard from yet: it holds nothing, and it gets a full lag period to
    /// show up before it counts as lagging.
    fn new(now: Instant) -> Self {
        Self {
            end_offset: None,
            last_caught_up: now,
            leo_at_last_fetch: Offset(0),
            last_fetch: now,
        }
    }
}

/// A leader's view of its partition.
#[derive(Clone, Debug)]
pub struct LeaderState {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    pub followers: BTreeMap<BrokerId, FollowerProgress>,
    /// The partition epoch at which an ISR change was last requested, and when: a change
    /// is not requested twice for one epoch unless the first request is long gone.
    pub isr_change_requested: Option<(i32, Instant)>,
    /// The ISR last asked for. Until the image answers (a new partition epoch) or the
    /// controller refuses it, the high watermark counts the members it adds too, as Kafka's
    /// "maximal ISR" (KIP-497): the controller may already have committed the larger ISR,
    /// and then elects a new leader from it, which must hold everything committed here.
    pub requested_isr: Option<Vec<BrokerId>>,
}

/// This broker's role for one partition.
#[derive(Clone, Debug)]
pub enum Role {
    Leader(LeaderState),
    Follower {
        leader: Option<BrokerId>,
        leader_epoch: i32,
    },
}

impl Role {
    pub fn leader_epoch(&self) -> i32 {
        match self {
            Role::Leader(state) => state.leader_epoch,
            Role::Follower { leader_epoch, .. } => *leader_epoch,
        }
    }
}

/// What the image says this broker's role is.
/// The image as this process may act on it. Until the image holds this process's own
/// registration (its incarnation), every leadership the image gives the broker belongs to
/// its previous process: a restarted broker must not lead at that process's leader epoch,
/// because its log may have lost an unsynced suffix that followers fetched in that epoch.
/// The controller fences the previous process when this one registers, which moves those
/// leaderships to a new epoch; until then the broker's partitions have no leader here.
pub fn image_for_incarnation(
    image: &ClusterImage,
    me: BrokerId,
    incarnation_id: u64,
) -> Cow<'_, ClusterImage> {
    let registered = image
        .brokers
        .get(&me)
        .is_some_and(|b| b.incarnation_id == incarnation_id);
    let leads_any = image
        .topics
        .values()
        .any(|t| t.partitions.iter().any(|p| p.leader == Some(me)));
    if registered || !leads_any {
        return Cow::Borrowed(image);
    }
    let mut previous = image.clone();
    for topic in previous.topics.values_mut() {
        for p in topic.partitions.iter_mut().filter(|p| p.leader == Some(me)) {
            p.leader = None;
        }
    }
    Cow::Owned(previous)
}

pub fn role_from_image(me: BrokerId, image: &PartitionImage, now: Instant) -> Role {
    if image.leader == Some(me) {
        let followers = image
            .replicas
            .iter()
            .filter(|r| **r != me)
            .map(|r| (*r, FollowerProgress::new(now)))
            .collect();
        Role::Leader(LeaderState {
            leader_epoch: image.leader_epoch,
            partition_epoch: image.partition_epoch,
            replicas: image.replicas.clone(),
            isr: image.isr.clone(),
            followers,
            isr_change_requested: None,
            requested_isr: None,
        })
    } else {
        Role::Follower {
            leader: image.leader,
            leader_epoch: image.leader_epoch,
        }
    }
}

impl LeaderState {
    /// Takes a newer image of the same leadership (same leader epoch): ISR, replicas and
    /// partition epoch may have changed. Progress of the remaining followers is kept; a
    /// replica added by a reassignment starts from nothing, like every follower of a new
    /// leader, and a removed one is forgotten.
    pub fn update_from(&mut self, me: BrokerId, image: &PartitionImage, now: Instant) {
        if image.partition_epoch != self.partition_epoch {
            // The image answered (or superseded) the last request.
            self.requested_isr = None;
        }
        self.partition_epoch = image.partition_epoch;
        self.replicas = image.replicas.clone();
        self.isr = image.isr.clone();
        self.followers
            .retain(|follower, _| image.replicas.contains(follower));
        for replica in image.replicas.iter().filter(|r| **r != me) {
            self.followers
                .entry(*replica)
                .or_insert_with(|| FollowerProgress::new(now));
        }
    }

    /// Records a validated fetch from `follower` at `fetch_offset`, with its log durable
    /// below `durable`; `leader_end` is our log end offset now.
    pub fn record_fetch(
        &mut self,
        follower: BrokerId,
        fetch_offset: Offset,
        durable: Offset,
        leader_end: Offset,
        now: Instant,
    ) {
        let Some(progress) = self.followers.get_mut(&follower) else {
            return;
        };
        if fetch_offset >= leader_end {
            progress.last_caught_up = now;
        } else if fetch_offset >= progress.leo_at_last_fetch {
            progress.last_caught_up = progress.last_caught_up.max(progress.last_fetch);
        }
        progress.end_offset = Some(durable.min(fetch_offset));
        progress.leo_at_last_fetch = leader_end;
        progress.last_fetch = now;
    }

    /// The smallest log end offset in the maximal ISR (the ISR and the members a pending
    /// request adds), counting the leader at `durable` (what it has on disk). A member that
    /// has not fetched yet holds it at nothing.
    pub fn isr_end(&self, me: BrokerId, durable: Offset) -> Offset {
        let joining = self
            .requested_isr
            .iter()
            .flatten()
            .filter(|member| !self.isr.contains(member));
        self.isr
            .iter()
            .chain(joining)
            .map(|member| {
                if *member == me {
                    durable
                } else {
                    self.followers
                        .get(member)
                        .and_then(|p| p.end_offset)
                        .unwrap_or(Offset(0))
                }
            })
            .min()
            .unwrap_or(durable)
    }

    /// The ISR this leader wants: without followers that have not caught up within
    /// `max_lag`, with replicas that have reached the high watermark. `None` when it
    /// wants the ISR it has.
    pub fn wanted_isr(
        &self,
        me: BrokerId,
        high_watermark: Offset,
        epoch_start: Offset,
        max_lag: Duration,
        now: Instant,
    ) -> Option<Vec<BrokerId>> {
        let wanted: Vec<BrokerId> = self
            .replicas
            .iter()
            .copied()
            .filter(|replica| {
                if *replica == me {
                    return true;
                }
                let Some(progress) = self.followers.get(replica) else {
                    return false;
                };
                if self.isr.contains(replica) {
                    now.duration_since(progress.last_caught_up) <= max_lag
                } else {
                    // Kafka's rule: back in once it holds everything committed, and
                    // something of this leader's epoch.
                    progress
                        .end_offset
                        .is_some_and(|end| end >= high_watermark && end >= epoch_start)
                        && now.duration_since(progress.last_caught_up) <= max_lag
                }
            })
            .collect();
        let mut current = self.isr.clone();
        current.sort_unstable();
        let mut sorted = wanted.clone();
        sorted.sort_unstable();
        (sorted != current).then_some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_metadata::PartitionId;

    fn image(leader: i32, isr: &[i32]) -> PartitionImage {
        PartitionImage {
            partition: PartitionId(0),
            replicas: vec![BrokerId(1), BrokerId(2), BrokerId(3)],
            leader: Some(BrokerId(leader)),
            isr: isr.iter().copied().map(BrokerId).collect(),
            leader_epoch: 4,
            partition_epoch: 7,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    #[test]
    fn a_reassignment_adds_a_follower_from_nothing_and_forgets_a_removed_one() {
        let start = Instant::now();
        let mut state = leader_state(&[1, 2, 3], start);
        state.record_fetch(BrokerId(2), Offset(50), Offset(50), Offset(50), start);
        let mut moving = image(1, &[1, 2, 3]);
        moving.replicas = vec![BrokerId(1), BrokerId(2), BrokerId(4), BrokerId(3)];
        moving.adding_replicas = vec![BrokerId(4)];
        moving.partition_epoch = 8;
        state.update_from(BrokerId(1), &moving, start);
        assert_eq!(state.partition_epoch, 8);
        assert_eq!(state.followers[&BrokerId(2)].end_offset, Some(Offset(50)));
        assert_eq!(state.followers[&BrokerId(4)].end_offset, None);
        // Broker 4 joins the ISR once it holds everything committed.
        let later = start + Duration::from_secs(1);
        state.record_fetch(BrokerId(3), Offset(50), Offset(50), Offset(50), later);
        state.record_fetch(BrokerId(4), Offset(50), Offset(50), Offset(50), later);
        let wanted = state
            .wanted_isr(
                BrokerId(1),
                Offset(50),
                Offset(0),
                Duration::from_secs(10),
                later,
            )
            .expect("expand");
        assert!(wanted.contains(&BrokerId(4)), "{wanted:?}");

        let mut done = image(1, &[1, 2, 4]);
        done.replicas = vec![BrokerId(1), BrokerId(2), BrokerId(4)];
        state.update_from(BrokerId(1), &done, later);
        assert!(!state.followers.contains_key(&BrokerId(3)));
    }

    fn leader_state(isr: &[i32], now: Instant) -> LeaderState {
        match role_from_image(BrokerId(1), &image(1, isr), now) {
            Role::Leader(state) => state,
            Role::Follower { .. } => panic!("broker 1 leads"),
        }
    }

    #[test]
    fn the_isr_end_waits_for_every_member_and_counts_the_leader_at_its_durable_end() {
        let now = Instant::now();
        let mut state = leader_state(&[1, 2, 3], now);
        assert_eq!(state.isr_end(BrokerId(1), Offset(10)), Offset(0));
        state.record_fetch(BrokerId(2), Offset(8), Offset(8), Offset(10), now);
        state.record_fetch(BrokerId(3), Offset(10), Offset(10), Offset(10), now);
        assert_eq!(state.isr_end(BrokerId(1), Offset(10)), Offset(8));
        assert_eq!(state.isr_end(BrokerId(1), Offset(6)), Offset(6));
        // Out of the ISR, a follower no longer holds the high watermark back.
        state.isr = vec![BrokerId(1), BrokerId(3)];
        assert_eq!(state.isr_end(BrokerId(1), Offset(10)), Offset(10));
    }

    #[test]
    fn an_isr_member_asked_for_holds_the_high_watermark_until_the_image_answers() {
        let now = Instant::now();
        let mut state = leader_state(&[1], now);
        state.record_fetch(BrokerId(2), Offset(5), Offset(5), Offset(10), now);
        assert_eq!(state.isr_end(BrokerId(1), Offset(10)), Offset(10));
        // Asked to add broker 2: the controller may commit it and later elect broker 2, so
        // nothing broker 2 lacks may count as committed meanwhile (maximal ISR, KIP-497).
        state.requested_isr = Some(vec![BrokerId(1), BrokerId(2)]);
        assert_eq!(state.isr_end(BrokerId(1), Offset(10)), Offset(5));
        // The image answers with a new partition epoch; its ISR is the truth again.
        let mut answered = image(1, &[1]);
        answered.partition_epoch += 1;
        state.update_from(BrokerId(1), &answered, now);
        assert_eq!(state.requested_isr, None);
        assert_eq!(state.isr_end(BrokerId(1), Offset(10)), Offset(10));
    }

    #[test]
    fn a_lagging_follower_leaves_the_isr_and_returns_once_caught_up() {
        let start = Instant::now();
        let lag = Duration::from_secs(10);
        let mut state = leader_state(&[1, 2, 3], start);
        state.record_fetch(BrokerId(2), Offset(100), Offset(100), Offset(100), start);
        state.record_fetch(BrokerId(3), Offset(100), Offset(100), Offset(100), start);
        assert_eq!(
            state.wanted_isr(BrokerId(1), Offset(100), Offset(0), lag, start),
            None
        );

        // Broker 3 stops fetching; broker 2 keeps up.
        let later = start + Duration::from_secs(11);
        state.record_fetch(BrokerId(2), Offset(150), Offset(150), Offset(150), later);
        assert_eq!(
            state.wanted_isr(BrokerId(1), Offset(150), Offset(0), lag, later),
            Some(vec![BrokerId(1), BrokerId(2)])
        );
        state.isr = vec![BrokerId(1), BrokerId(2)];

        // Broker 3 comes back behind the high watermark: not yet.
        state.record_fetch(BrokerId(3), Offset(120), Offset(120), Offset(150), later);
        assert_eq!(
            state.wanted_isr(BrokerId(1), Offset(150), Offset(0), lag, later),
            None
        );
        // Caught up: back in, in replica order.
        state.record_fetch(BrokerId(3), Offset(150), Offset(150), Offset(150), later);
        assert_eq!(
            state.wanted_isr(BrokerId(1), Offset(150), Offset(0), lag, later),
            Some(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
        );
    }

    #[test]
    fn a_follower_that_fetches_steadily_but_trails_a_busy_leader_stays_in_sync() {
        let start = Instant::now();
        let lag = Duration::from_secs(10);
        let mut state = leader_state(&[1, 2], start);
        // Each fetch reaches where the leader ended at the previous fetch, never the end.
        let mut leader_end = 100;
        for second in 1..30u64 {
            let now = start + Duration::from_secs(second);
            state.record_fetch(
                BrokerId(2),
                Offset(leader_end),
                Offset(leader_end),
                Offset(leader_end + 50),
                now,
            );
            leader_end += 50;
        }
        let now = start + Duration::from_secs(30);
        assert_eq!(
            state.wanted_isr(BrokerId(1), Offset(0), Offset(0), lag, now),
            None
        );
    }

    #[test]
    fn a_follower_counts_towards_the_high_watermark_only_as_far_as_it_is_durable() {
        let now = Instant::now();
        let mut state = leader_state(&[1, 2], now);
        // Fetching at 80 while only 50 is fsynced: caught up, but it holds the HW at 50.
        state.record_fetch(BrokerId(2), Offset(80), Offset(50), Offset(80), now);
        assert_eq!(state.isr_end(BrokerId(1), Offset(80)), Offset(50));
        state.record_fetch(BrokerId(2), Offset(80), Offset(80), Offset(80), now);
        assert_eq!(state.isr_end(BrokerId(1), Offset(80)), Offset(80));
    }

    #[test]
    fn the_image_decides_the_role() {
        let now = Instant::now();
        assert!(matches!(
            role_from_image(BrokerId(2), &image(1, &[1, 2]), now),
            Role::Follower {
                leader: Some(BrokerId(1)),
                leader_epoch: 4
            }
        ));
        assert_eq!(leader_state(&[1, 2], now).followers.len(), 2);
    }

    #[test]
    fn a_restarted_process_leads_nothing_until_the_image_holds_its_registration() {
        use ferrolog_metadata::records::{
            CreateTopicRecord, MetadataRecord, PartitionAssignment, Record, RegisterBrokerRecord,
        };
        let mut image = ClusterImage::default();
        let records = [
            Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: 1,
                address: "b1:1".to_owned(),
                incarnation_id: 7,
            }),
            Record::CreateTopic(CreateTopicRecord {
                name: "t".to_owned(),
                topic_id: "t-id".to_owned(),
                assignments: vec![PartitionAssignment {
                    partition: 0,
                    replicas: vec![1],
                }],
                configs: Default::default(),
            }),
        ];
        for (index, record) in records.into_iter().enumerate() {
            let record = MetadataRecord {
                record: Some(record),
            };
            image.apply(index as u64 + 1, &record).expect("applies");
        }
        let leader = |image: &ClusterImage| image.topics["t"].partitions[0].leader;
        assert_eq!(leader(&image), Some(BrokerId(1)));
        // The process that registered acts on the image as it is.
        assert_eq!(
            leader(&image_for_incarnation(&image, BrokerId(1), 7)),
            Some(BrokerId(1))
        );
        // A new process of the same broker does not lead at its predecessor's epoch.
        assert_eq!(leader(&image_for_incarnation(&image, BrokerId(1), 8)), None);
        // Other brokers' leaderships are not its to judge.
        assert_eq!(
            leader(&image_for_incarnation(&image, BrokerId(2), 1)),
            Some(BrokerId(1))
        );
    }
}
