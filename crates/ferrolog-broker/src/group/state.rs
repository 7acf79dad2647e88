//! One consumer group as its coordinator holds it: members, the target assignment, and
//! committed offsets. Pure state and rules, no I/O, so the incremental protocol is tested
//! here directly.
//!
//! Partitions move incrementally (KIP-848). The coordinator keeps, per member, what it last
//! allowed the member to own (`assigned`) and what the member last said it owns (`owned`).
//! A partition is handed to its new member only once no other member has it in either
//! set: its old owner first hears it is revoked (it is left out of its assignment), commits
//! and drops it, and says so in its next heartbeat. Members whose partitions do not move
//! see the same assignment at every heartbeat and never pause.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::assignor::{Assignor, MemberSpec, TopicPartition, assign};

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to read.
    pub offset: i64,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One member.
#[derive(Clone, Debug)]
pub struct Member {
    pub client_id: String,
    pub epoch: i32,
    /// The epoch before the last bump: a commit sent just before a heartbeat answer
    /// arrived still carries it, and is accepted.
    pub previous_epoch: i32,
    pub topics: BTreeSet<String>,
    /// What the coordinator last allowed the member to own.
    pub assigned: BTreeSet<TopicPartition>,
    /// What the member said it owns in its last heartbeat.
    pub owned: BTreeSet<TopicPartition>,
    pub last_heartbeat: Instant,
}

/// A heartbeat as the coordinator receives it.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub client_id: String,
    pub topics: Vec<String>,
    pub assignor: Option<Assignor>,
    pub owned: BTreeSet<TopicPartition>,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: BTreeSet<TopicPartition>,
}

/// The member epoch that means "join", and the one that means "leave".
pub const JOIN_EPOCH: i32 = 0;
pub const LEAVE_EPOCH: i32 = -1;

/// Why the coordinator refused a member's request.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GroupError {
    #[error(
        "group '{group}' has no member '{member}' (it expired or the coordinator moved); rejoin"
    )]
    UnknownMember { group: String, member: String },
    #[error("member '{member}' of group '{group}' sent epoch {epoch}, but its epoch is {current}")]
    StaleMemberEpoch {
        group: String,
        member: String,
        epoch: i32,
        current: i32,
    },
    #[error("group '{group}' has {members} member(s); stop them first")]
    NonEmptyGroup { group: String, members: usize },
}

/// A group at its coordinator.
#[derive(Clone, Debug)]
pub struct GroupState {
    pub group_id: String,
    pub assignor: Assignor,
    /// Bumped whenever the target assignment is recomputed.
    pub group_epoch: i32,
    pub members: BTreeMap<String, Member>,
    pub target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// Partition counts the target was computed for: a topic that grows is reassigned.
    target_basis: BTreeMap<String, u32>,
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// Until then, members keep what they report owning but get no other partitions: a
    /// coordinator that just took over does not know what members that have not rejoined
    /// yet still own.
    pub free_partitions_held_until: Option<Instant>,
}

impl GroupState {
    pub fn new(group_id: &str) -> Self {
        Self {
            group_id: group_id.to_owned(),
            assignor: Assignor::default(),
            group_epoch: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            target_basis: BTreeMap::new(),
            offsets: BTreeMap::new(),
            free_partitions_held_until: None,
        }
    }

    /// "empty" (offsets only), "reconciling" (partitions are moving) or "stable".
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else if self
            .members
            .iter()
            .any(|(id, m)| Some(&m.assigned) != self.target.get(id) || m.owned != m.assigned)
        {
            "reconciling"
        } else {
            "stable"
        }
    }

    /// Handles one heartbeat. `partitions` holds the partition count of every existing
    /// topic; `new_member_id` names a member that joins without an id.
    pub fn heartbeat(
        &mut self,
        heartbeat: Heartbeat,
        partitions: &BTreeMap<String, u32>,
        now: Instant,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<HeartbeatAnswer, GroupError> {
        let topics: BTreeSet<String> = heartbeat.topics.iter().cloned().collect();
        let mut changed = false;
        let member_id = match heartbeat.member_epoch {
            LEAVE_EPOCH => {
                if self.members.remove(&heartbeat.member_id).is_some() {
                    self.recompute_target(partitions);
                }
                return Ok(HeartbeatAnswer {
                    member_id: heartbeat.member_id,
                    member_epoch: LEAVE_EPOCH,
                    assignment: BTreeSet::new(),
                });
            }
            JOIN_EPOCH => {
                let member_id = if heartbeat.member_id.is_empty() {
                    new_member_id()
                } else {
                    heartbeat.member_id.clone()
                };
                if self.members.is_empty() {
                    self.assignor = heartbeat.assignor.unwrap_or_default();
                }
                // A member rejoining (its coordinator moved, or it expired) keeps what it
                // owns unless another member has it: its partitions do not pause.
                self.members.remove(&member_id);
                let assigned: BTreeSet<TopicPartition> = heartbeat
                    .owned
                    .iter()
                    .filter(|p| !self.held_by_others(&member_id, p))
                    .cloned()
                    .collect();
                self.members.insert(
                    member_id.clone(),
                    Member {
                        client_id: heartbeat.client_id.clone(),
                        epoch: JOIN_EPOCH,
                        previous_epoch: JOIN_EPOCH,
                        topics: topics.clone(),
                        assigned,
                        owned: heartbeat.owned.clone(),
                        last_heartbeat: now,
                    },
                );
                changed = true;
                member_id
            }
            epoch => {
                let group = self.group_id.clone();
                let member = self.members.get_mut(&heartbeat.member_id).ok_or_else(|| {
                    GroupError::UnknownMember {
                        group: group.clone(),
                        member: heartbeat.member_id.clone(),
                    }
                })?;
                if epoch != member.epoch {
                    return Err(GroupError::StaleMemberEpoch {
                        group,
                        member: heartbeat.member_id,
                        epoch,
                        current: member.epoch,
                    });
                }
                member.last_heartbeat = now;
                member.owned = heartbeat.owned.clone();
                if member.topics != topics {
                    member.topics = topics.clone();
                    changed = true;
                }
                heartbeat.member_id
            }
        };
        if changed || self.topics_changed(partitions) {
            self.recompute_target(partitions);
        }
        Ok(self.reconcile(&member_id, now))
    }

    /// Removes members not heard from within `session_timeout`; their partitions go to
    /// the others at once. Returns the ids removed.
    pub fn expire(
        &mut self,
        now: Instant,
        session_timeout: Duration,
        partitions: &BTreeMap<String, u32>,
    ) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_heartbeat) > session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        if !expired.is_empty() {
            self.recompute_target(partitions);
        }
        expired
    }

    /// Whether a commit from `member_id` at `epoch` is allowed: from a current member at its
    /// epoch (or the one before its last bump), or from outside the group (empty id) while
    /// the group has no members.
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if self.members.is_empty() {
                return Ok(());
            }
            return Err(GroupError::NonEmptyGroup {
                group: self.group_id.clone(),
                members: self.members.len(),
            });
        }
        let member = self
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember {
                group: self.group_id.clone(),
                member: member_id.to_owned(),
            })?;
        if epoch == member.epoch || epoch == member.previous_epoch {
            Ok(())
        } else {
            Err(GroupError::StaleMemberEpoch {
                group: self.group_id.clone(),
                member: member_id.to_owned(),
                epoch,
                current: member.epoch,
            })
        }
    }

    fn held_by_others(&self, member_id: &str, partition: &TopicPartition) -> bool {
        self.members.iter().any(|(id, m)| {
            id != member_id && (m.assigned.contains(partition) || m.owned.contains(partition))
        })
    }

    fn topics_changed(&self, partitions: &BTreeMap<String, u32>) -> bool {
        let subscribed: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .collect();
        let now: BTreeMap<String, u32> = subscribed
            .into_iter()
            .filter_map(|t| partitions.get(t).map(|n| (t.clone(), *n)))
            .collect();
        now != self.target_basis
    }

    fn recompute_target(&mut self, partitions: &BTreeMap<String, u32>) {
        let specs: Vec<MemberSpec> = self
            .members
            .iter()
            .map(|(id, m)| MemberSpec {
                member_id: id.clone(),
                topics: m.topics.clone(),
                current: m.assigned.clone(),
            })
            .collect();
        self.target = assign(self.assignor, &specs, partitions);
        let subscribed: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .collect();
        self.target_basis = subscribed
            .into_iter()
            .filter_map(|t| partitions.get(t).map(|n| (t.clone(), *n)))
            .collect();
        self.group_epoch += 1;
    }

    /// Moves `member_id` one step toward its target: it keeps what it has of the target,
    /// loses the rest, and gains target partitions no other member holds. The member epoch
    /// grows when it gains partitions (or joins), so a commit from before can be told
    /// apart.
    fn reconcile(&mut self, member_id: &str, now: Instant) -> HeartbeatAnswer {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let holding = self.free_partitions_held_until.is_some_and(|t| now < t);
        let free: Vec<TopicPartition> = if holding {
            Vec::new()
        } else {
            target
                .iter()
                .filter(|p| !self.held_by_others(member_id, p))
                .cloned()
                .collect()
        };
        let group_epoch = self.group_epoch;
        let member = self
            .members
            .get_mut(member_id)
            .expect("reconcile is called for a member just added or found");
        let mut next: BTreeSet<TopicPartition> =
            member.assigned.intersection(&target).cloned().collect();
        let before = next.len();
        next.extend(free);
        let gained = next.len() > before && !next.is_subset(&member.assigned);
        if gained || member.epoch == JOIN_EPOCH {
            member.previous_epoch = member.epoch;
            member.epoch = (member.epoch + 1).max(group_epoch);
        }
        member.assigned = next.clone();
        HeartbeatAnswer {
            member_id: member_id.to_owned(),
            member_epoch: member.epoch,
            assignment: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: u32) -> TopicPartition {
        TopicPartition {
            topic: "t".to_owned(),
            partition,
        }
    }

    fn counts(n: u32) -> BTreeMap<String, u32> {
        BTreeMap::from([("t".to_owned(), n)])
    }

    /// Heartbeats `member` with what it was last told, as a well-behaved member does.
    fn beat(group: &mut GroupState, member: &str, now: Instant) -> HeartbeatAnswer {
        let m = &group.members[member];
        let heartbeat = Heartbeat {
            member_id: member.to_owned(),
            member_epoch: m.epoch,
            topics: vec!["t".to_owned()],
            owned: m.assigned.clone(),
            ..Heartbeat::default()
        };
        group
            .heartbeat(heartbeat, &counts(4), now, || unreachable!())
            .expect("heartbeat")
    }

    fn join(group: &mut GroupState, member: &str, now: Instant) -> HeartbeatAnswer {
        let heartbeat = Heartbeat {
            member_id: member.to_owned(),
            member_epoch: JOIN_EPOCH,
            topics: vec!["t".to_owned()],
            ..Heartbeat::default()
        };
        group
            .heartbeat(heartbeat, &counts(4), now, || unreachable!())
            .expect("join")
    }

    /// Two members sharing four partitions two and two, stable.
    fn two_members(now: Instant) -> GroupState {
        let mut group = GroupState::new("g");
        join(&mut group, "a", now);
        join(&mut group, "b", now);
        for _ in 0..3 {
            beat(&mut group, "a", now);
            beat(&mut group, "b", now);
        }
        assert_eq!(group.state_name(), "stable");
        assert_eq!(group.members["a"].assigned.len(), 2);
        assert_eq!(group.members["b"].assigned.len(), 2);
        group
    }

    #[test]
    fn a_joining_member_gets_only_what_is_revoked_and_the_others_never_pause() {
        let now = Instant::now();
        let mut group = two_members(now);
        let (a_before, b_before) = (
            group.members["a"].assigned.clone(),
            group.members["b"].assigned.clone(),
        );
        let c = join(&mut group, "c", now);
        assert!(
            c.assignment.is_empty(),
            "nothing is free until a member revokes: {c:?}"
        );
        let a = beat(&mut group, "a", now);
        let b = beat(&mut group, "b", now);
        // Exactly one partition is revoked, from one member; the other keeps all of its.
        let revoked: Vec<&TopicPartition> = a_before
            .difference(&a.assignment)
            .chain(b_before.difference(&b.assignment))
            .collect();
        assert_eq!(revoked.len(), 1, "{a:?} {b:?}");
        assert!(a.assignment.is_subset(&a_before) && b.assignment.is_subset(&b_before));
        // The revoking member acknowledges with its next heartbeat; then c gets it.
        beat(&mut group, "a", now);
        beat(&mut group, "b", now);
        let c = beat(&mut group, "c", now);
        assert_eq!(c.assignment.iter().collect::<Vec<_>>(), revoked);
        beat(&mut group, "c", now);
        assert_eq!(group.state_name(), "stable");
    }

    #[test]
    fn a_partition_is_never_owned_by_two_members_at_once() {
        let now = Instant::now();
        let mut group = two_members(now);
        let victim = group.members["a"].assigned.clone();
        join(&mut group, "c", now);
        join(&mut group, "d", now);
        // a is slow to acknowledge: it still reports its old partitions.
        for _ in 0..3 {
            let stale = Heartbeat {
                member_id: "a".to_owned(),
                member_epoch: group.members["a"].epoch,
                topics: vec!["t".to_owned()],
                owned: victim.clone(),
                ..Heartbeat::default()
            };
            group
                .heartbeat(stale, &counts(4), now, || unreachable!())
                .expect("a");
            beat(&mut group, "b", now);
            beat(&mut group, "c", now);
            beat(&mut group, "d", now);
            for p in &victim {
                let holders = group
                    .members
                    .iter()
                    .filter(|(id, m)| *id != "a" && m.assigned.contains(p))
                    .count();
                assert_eq!(holders, 0, "{p:?} handed out before a released it");
            }
        }
    }

    #[test]
    fn an_expired_member_is_replaced_and_its_partitions_move_at_once() {
        let start = Instant::now();
        let mut group = two_members(start);
        let later = start + Duration::from_secs(11);
        beat(&mut group, "b", later);
        let expired = group.expire(later, Duration::from_secs(10), &counts(4));
        assert_eq!(expired, vec!["a".to_owned()]);
        let b = beat(&mut group, "b", later);
        assert_eq!(b.assignment.len(), 4);
    }

    #[test]
    fn commits_are_fenced_by_member_and_epoch() {
        let now = Instant::now();
        let mut group = two_members(now);
        let epoch = group.members["a"].epoch;
        assert_eq!(group.check_commit("a", epoch), Ok(()));
        assert!(matches!(
            group.check_commit("a", epoch + 5),
            Err(GroupError::StaleMemberEpoch { .. })
        ));
        assert!(matches!(
            group.check_commit("zed", epoch),
            Err(GroupError::UnknownMember { .. })
        ));
        assert!(matches!(
            group.check_commit("", -1),
            Err(GroupError::NonEmptyGroup { members: 2, .. })
        ));
        group.expire(
            now + Duration::from_secs(60),
            Duration::from_secs(10),
            &counts(4),
        );
        assert_eq!(group.check_commit("", -1), Ok(()));
    }

    #[test]
    fn stale_epochs_and_unknown_members_are_refused() {
        let now = Instant::now();
        let mut group = two_members(now);
        let stale = Heartbeat {
            member_id: "a".to_owned(),
            member_epoch: group.members["a"].epoch + 1,
            topics: vec!["t".to_owned()],
            ..Heartbeat::default()
        };
        assert!(matches!(
            group.heartbeat(stale, &counts(4), now, || unreachable!()),
            Err(GroupError::StaleMemberEpoch { .. })
        ));
        let unknown = Heartbeat {
            member_id: "ghost".to_owned(),
            member_epoch: 3,
            ..Heartbeat::default()
        };
        assert!(matches!(
            group.heartbeat(unknown, &counts(4), now, || unreachable!()),
            Err(GroupError::UnknownMember { .. })
        ));
    }

    #[test]
    fn a_member_rejoining_a_new_coordinator_keeps_what_it_owns() {
        let now = Instant::now();
        let old = two_members(now);
        let mut group = GroupState::new("g");
        group.free_partitions_held_until = Some(now + Duration::from_secs(5));
        for id in ["a", "b"] {
            let heartbeat = Heartbeat {
                member_id: id.to_owned(),
                member_epoch: JOIN_EPOCH,
                topics: vec!["t".to_owned()],
                owned: old.members[id].assigned.clone(),
                ..Heartbeat::default()
            };
            let answer = group
                .heartbeat(heartbeat, &counts(4), now, || unreachable!())
                .expect("rejoin");
            assert_eq!(answer.assignment, old.members[id].assigned);
        }
        // After the hold, a member that never came back leaves its partitions free.
        let later = now + Duration::from_secs(6);
        group.expire(later, Duration::from_secs(1), &counts(4));
        let mut rejoined = GroupState::new("g");
        rejoined.free_partitions_held_until = Some(now + Duration::from_secs(5));
        let heartbeat = Heartbeat {
            member_id: "a".to_owned(),
            member_epoch: JOIN_EPOCH,
            topics: vec!["t".to_owned()],
            owned: old.members["a"].assigned.clone(),
            ..Heartbeat::default()
        };
        rejoined
            .heartbeat(heartbeat, &counts(4), now, || unreachable!())
            .expect("rejoin");
        assert_eq!(beat(&mut rejoined, "a", later).assignment.len(), 4);
    }

    #[test]
    fn a_grown_topic_is_reassigned() {
        let now = Instant::now();
        let mut group = two_members(now);
        let m = &group.members["a"];
        let heartbeat = Heartbeat {
            member_id: "a".to_owned(),
            member_epoch: m.epoch,
            topics: vec!["t".to_owned()],
            owned: m.assigned.clone(),
            ..Heartbeat::default()
        };
        let answer = group
            .heartbeat(heartbeat, &counts(6), now, || unreachable!())
            .expect("heartbeat");
        assert_eq!(answer.assignment.len(), 3, "{answer:?}");
        assert!(answer.assignment.contains(&tp(4)) || answer.assignment.contains(&tp(5)));
    }
}
