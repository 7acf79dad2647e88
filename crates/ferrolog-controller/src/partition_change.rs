//! The one way the controller writes a partition's next state. Every decision (an ISR
//! change, an election, a fencing, a reassignment) starts from the partition's image, edits
//! it, and turns it into a `PartitionChangeRecord` here, so the rules every change must
//! keep live in one place: the partition epoch grows by one, the leader epoch grows when
//! the leader changes, and a reassignment completes as soon as its target is in sync.

use ferrolog_metadata::records::{MetadataRecord, PartitionChangeRecord, Record};
use ferrolog_metadata::{BrokerId, PartitionImage};

/// A partition's next state, being decided.
#[derive(Clone, Debug)]
pub(crate) struct NextPartition<'a> {
    topic: &'a str,
    current: &'a PartitionImage,
    pub leader: Option<BrokerId>,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    pub adding: Vec<BrokerId>,
    pub removing: Vec<BrokerId>,
}

impl<'a> NextPartition<'a> {
    pub fn from(topic: &'a str, current: &'a PartitionImage) -> Self {
        Self {
            topic,
            current,
            leader: current.leader,
            replicas: current.replicas.clone(),
            isr: current.isr.clone(),
            adding: current.adding_replicas.clone(),
            removing: current.removing_replicas.clone(),
        }
    }

    pub fn leader(mut self, leader: Option<BrokerId>) -> Self {
        self.leader = leader;
        self
    }

    pub fn isr(mut self, isr: Vec<BrokerId>) -> Self {
        self.isr = isr;
        self
    }

    /// Finishes a reassignment whose target replicas are all in sync: the replicas being
    /// removed leave (and the ISR), and if one of them led, the first in-sync target
    /// replica takes over. Until then they keep serving, so a move never lowers the number
    /// of in-sync copies.
    fn complete_reassignment(&mut self) {
        if self.adding.is_empty() && self.removing.is_empty() {
            return;
        }
        let target: Vec<BrokerId> = self
            .replicas
            .iter()
            .copied()
            .filter(|r| !self.removing.contains(r))
            .collect();
        if target.is_empty() || !target.iter().all(|r| self.isr.contains(r)) {
            return;
        }
        self.isr.retain(|r| target.contains(r));
        if self.leader.is_some_and(|l| !target.contains(&l)) {
            self.leader = target.iter().copied().find(|r| self.isr.contains(r));
        }
        self.replicas = target;
        self.adding.clear();
        self.removing.clear();
    }

    /// The record, or `None` when nothing would change.
    pub fn into_record(mut self) -> Option<MetadataRecord> {
        self.complete_reassignment();
        let current = self.current;
        let unchanged = self.leader == current.leader
            && self.replicas == current.replicas
            && self.isr == current.isr
            && self.adding == current.adding_replicas
            && self.removing == current.removing_replicas;
        if unchanged {
            return None;
        }
        let leader_epoch = if self.leader == current.leader {
            current.leader_epoch
        } else {
            current.leader_epoch + 1
        };
        let ids = |brokers: &[BrokerId]| brokers.iter().map(|b| b.0).collect();
        Some(MetadataRecord {
            record: Some(Record::PartitionChange(PartitionChangeRecord {
                topic: self.topic.to_owned(),
                partition: current.partition.0 as i32,
                leader: self.leader.map_or(-1, |l| l.0),
                leader_epoch,
                partition_epoch: current.partition_epoch + 1,
                replicas: ids(&self.replicas),
                isr: ids(&self.isr),
                adding_replicas: ids(&self.adding),
                removing_replicas: ids(&self.removing),
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_metadata::PartitionId;

    fn ids(v: &[i32]) -> Vec<BrokerId> {
        v.iter().copied().map(BrokerId).collect()
    }

    fn moving(isr: &[i32]) -> PartitionImage {
        // From [1,2,3] to [4,2,3]: 4 is added, 1 (the leader) is removed.
        PartitionImage {
            partition: PartitionId(0),
            replicas: ids(&[4, 2, 3, 1]),
            isr: ids(isr),
            leader: Some(BrokerId(1)),
            leader_epoch: 5,
            partition_epoch: 9,
            adding_replicas: ids(&[4]),
            removing_replicas: ids(&[1]),
        }
    }

    fn change(record: Option<MetadataRecord>) -> PartitionChangeRecord {
        match record.and_then(|r| r.record) {
            Some(Record::PartitionChange(change)) => change,
            other => panic!("expected a partition change, got {other:?}"),
        }
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let p = moving(&[1, 2, 3]);
        assert!(NextPartition::from("t", &p).into_record().is_none());
    }

    #[test]
    fn a_reassignment_waits_until_every_target_replica_is_in_sync() {
        let p = moving(&[1, 2, 3]);
        let shrunk = change(NextPartition::from("t", &p).isr(ids(&[1, 2])).into_record());
        assert_eq!(shrunk.replicas, vec![4, 2, 3, 1], "still moving");
        assert_eq!(shrunk.adding_replicas, vec![4]);
        assert_eq!(shrunk.leader_epoch, 5);
        assert_eq!(shrunk.partition_epoch, 10);
    }

    #[test]
    fn a_reassignment_completes_when_the_target_is_in_sync_and_moves_the_leader() {
        let p = moving(&[1, 2, 3]);
        let done = change(
            NextPartition::from("t", &p)
                .isr(ids(&[1, 2, 3, 4]))
                .into_record(),
        );
        assert_eq!(done.replicas, vec![4, 2, 3]);
        assert_eq!(
            done.isr,
            vec![2, 3, 4],
            "the removed replica leaves the ISR"
        );
        assert!(done.adding_replicas.is_empty() && done.removing_replicas.is_empty());
        assert_eq!(done.leader, 4, "the first in-sync target replica leads");
        assert_eq!(
            done.leader_epoch, 6,
            "a new leader means a new leader epoch"
        );
    }

    #[test]
    fn a_remaining_leader_keeps_its_epoch_when_a_reassignment_completes() {
        let mut p = moving(&[1, 2, 3, 4]);
        p.leader = Some(BrokerId(2));
        let done = change(
            NextPartition::from("t", &p)
                .isr(ids(&[1, 2, 3, 4]))
                .into_record(),
        );
        assert_eq!(done.leader, 2);
        assert_eq!(done.leader_epoch, 5);
    }
}
