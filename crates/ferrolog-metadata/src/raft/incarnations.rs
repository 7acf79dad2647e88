//! Noticing two running processes that use one node id.
//!
//! Every controller picks a random incarnation id when it starts and sends it with each Raft
//! request. A restart shows up as a new incarnation that replaces the old one for good. An
//! incarnation that was replaced and then speaks again means two processes are alive under
//! one id: a copy started on another host with the same voters entry, which the address check
//! cannot see. Letting either vote would let the id vote twice in one term, so every request
//! under that id is refused while the conflict lasts, and the error says why.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::NodeId;

/// How long an id stays refused after the last sign of two processes.
const CONFLICT_HOLD: Duration = Duration::from_secs(30);
/// Replaced incarnations remembered per id (restarts are rare; a handful is plenty).
const REMEMBERED: usize = 16;

#[derive(Default)]
struct History {
    current: u64,
    replaced: VecDeque<u64>,
    conflict: Option<(Instant, u64, u64)>,
}

/// Per-sender incarnation histories.
#[derive(Default)]
pub struct IncarnationTracker {
    senders: Mutex<BTreeMap<NodeId, History>>,
}

/// Why a sender is refused: two incarnations of one id are alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateNode {
    pub node_id: NodeId,
    pub incarnations: (u64, u64),
}

impl std::fmt::Display for DuplicateNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "two running processes use node id {} (incarnations {:016x} and {:016x}); stop \
             one of them: each node needs its own --node-id",
            self.node_id, self.incarnations.0, self.incarnations.1
        )
    }
}

impl IncarnationTracker {
    /// Records a request from `node_id` sent by `incarnation`; an error while that id is
    /// in conflict. Incarnation 0 (a sender that predates incarnations) is not tracked.
    pub fn observe(&self, node_id: NodeId, incarnation: u64) -> Result<(), DuplicateNode> {
        self.observe_at(node_id, incarnation, Instant::now())
    }

    fn observe_at(
        &self,
        node_id: NodeId,
        incarnation: u64,
        now: Instant,
    ) -> Result<(), DuplicateNode> {
        if incarnation == 0 {
            return Ok(());
        }
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let history = senders.entry(node_id).or_default();
        if history.current == 0 {
            history.current = incarnation;
        } else if incarnation != history.current {
            if history.replaced.contains(&incarnation) {
                history.conflict = Some((now, history.current, incarnation));
            } else {
                // A restart: the old incarnation is gone for good.
                history.replaced.push_back(history.current);
                if history.replaced.len() > REMEMBERED {
                    history.replaced.pop_front();
                }
            }
            history.current = incarnation;
        }
        match history.conflict {
            Some((since, a, b)) if now.duration_since(since) < CONFLICT_HOLD => {
                Err(DuplicateNode {
                    node_id,
                    incarnations: (a.min(b), a.max(b)),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_accepted_and_a_returning_old_incarnation_is_a_duplicate() {
        let tracker = IncarnationTracker::default();
        let t0 = Instant::now();
        assert!(tracker.observe_at(2, 11, t0).is_ok());
        assert!(tracker.observe_at(2, 11, t0).is_ok());
        // Restarted twice: new incarnations replace old ones.
        assert!(tracker.observe_at(2, 12, t0).is_ok());
        assert!(tracker.observe_at(2, 13, t0).is_ok());
        // Another id is unaffected by all of this.
        assert!(tracker.observe_at(3, 99, t0).is_ok());
        // 12 speaks again while 13 runs: two processes. Both are refused from now on.
        let error = tracker.observe_at(2, 12, t0).expect_err("duplicate");
        assert_eq!(error.incarnations, (12, 13));
        assert!(error.to_string().contains("node id 2"));
        assert!(tracker.observe_at(2, 13, t0).is_err());
        assert!(tracker.observe_at(3, 99, t0).is_ok());
        // Once one of them is stopped and the hold has passed, the survivor is accepted.
        let later = t0 + CONFLICT_HOLD + Duration::from_secs(1);
        assert!(tracker.observe_at(2, 13, later).is_ok());
    }

    #[test]
    fn senders_without_an_incarnation_are_not_tracked() {
        let tracker = IncarnationTracker::default();
        assert!(tracker.observe(1, 0).is_ok());
        assert!(tracker.observe(1, 0).is_ok());
    }
}
