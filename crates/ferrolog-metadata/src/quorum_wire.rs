//! A quorum status in its wire form (`QuorumStatusResponse`) and back: the controller
//! service answers with it, the admin service reports it, and a broker-only node reads the
//! controllers' answers with it.

use ferrolog_proto::v1;

use crate::QuorumStatus;

impl QuorumStatus {
    /// The wire form. A member's lag is the commit index when its matched index is unknown
    /// (only the leader knows matched indexes).
    pub fn to_wire(&self) -> v1::QuorumStatusResponse {
        v1::QuorumStatusResponse {
            node_id: self.node_id as i32,
            leader_id: self.leader.map_or(-1, |l| l as i32),
            term: self.term,
            commit_index: self.commit_index,
            applied_index: self.applied_index,
            snapshot_index: self.snapshot_index,
            purged_index: self.purged_index,
            last_log_index: self.last_log_index,
            controllers: self
                .members
                .iter()
                .map(|(id, address, voter, matched)| v1::ControllerStatus {
                    node_id: *id as i32,
                    address: address.clone(),
                    voter: *voter,
                    matched_index: matched.unwrap_or(0),
                    lag: matched.map_or(self.commit_index, |m| self.commit_index.saturating_sub(m)),
                })
                .collect(),
            state: self.state.clone(),
        }
    }

    /// Reads another controller's answer; negative ids (none) become `None` or 0.
    pub fn from_wire(wire: v1::QuorumStatusResponse) -> Self {
        QuorumStatus {
            node_id: wire.node_id.max(0) as u64,
            leader: (wire.leader_id >= 0).then_some(wire.leader_id as u64),
            term: wire.term,
            last_log_index: wire.last_log_index,
            commit_index: wire.commit_index,
            applied_index: wire.applied_index,
            snapshot_index: wire.snapshot_index,
            purged_index: wire.purged_index,
            state: wire.state,
            members: wire
                .controllers
                .into_iter()
                .map(|c| {
                    (
                        c.node_id.max(0) as u64,
                        c.address,
                        c.voter,
                        Some(c.matched_index),
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaders_status_survives_the_round_trip() {
        let status = QuorumStatus {
            node_id: 1,
            leader: Some(1),
            term: 4,
            last_log_index: 90,
            commit_index: 88,
            applied_index: 88,
            snapshot_index: 50,
            purged_index: 40,
            state: "Leader".to_owned(),
            members: vec![(1, "a:9293".to_owned(), true, Some(88))],
        };
        let back = QuorumStatus::from_wire(status.to_wire());
        assert_eq!(back.leader, Some(1));
        assert_eq!(back.commit_index, 88);
        assert_eq!(back.members, status.members);
        assert_eq!(status.to_wire().controllers[0].lag, 0);
    }

    #[test]
    fn no_leader_travels_as_minus_one() {
        let wire = QuorumStatus::default().to_wire();
        assert_eq!(wire.leader_id, -1);
        assert_eq!(QuorumStatus::from_wire(wire).leader, None);
    }
}
