//! Whether each controller peer answers Raft RPCs, told to the operator once per change
//! instead of once per failed RPC.
//!
//! openraft logs every failed RPC to an unreachable voter, several of them at ERROR: with
//! one voter of three down, the Raft leader wrote 85 lines in 10 s, 21 of them ERROR, and
//! every node's start printed ERRORs while its peers were still starting. A voter that is
//! down is routine (a restart, a rolling upgrade) and the quorum goes on without it. The
//! binary drops those openraft lines (see `ferrolog::logging`); this tracker says instead,
//! per peer: WARN once it has failed for `WARN_AFTER`, again every `REPEAT_EVERY` while it
//! stays down (with how many RPCs failed), INFO when it answers again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::NodeId;

/// How long a peer fails before it is reported: a peer that is starting up, or a lost
/// connection that the next RPC re-establishes, goes unreported.
pub const WARN_AFTER: Duration = Duration::from_secs(3);
/// How often a peer that stays unreachable is reported again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);
/// A failure this long after the previous one starts a new episode. Only a leader or a
/// candidate sends RPCs, so a node that stops sending (it became a follower) never sees
/// the answer that would end an episode; without this, its next failure, hours later,
/// would be reported at once as hours long.
pub const EPISODE_GAP: Duration = Duration::from_secs(10);

/// What to tell about a peer after a failed RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillFailing {
    pub failing_for: Duration,
    pub failed_rpcs: u64,
}

/// What to tell about a peer that answers again after it was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub was_down_for: Duration,
    pub failed_rpcs: u64,
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    last_failed: Instant,
    failed_rpcs: u64,
    reported_at: Option<Instant>,
}

impl Failing {
    fn starting(now: Instant) -> Self {
        Self {
            since: now,
            last_failed: now,
            failed_rpcs: 0,
            reported_at: None,
        }
    }
}

/// Peers whose last RPC failed; a peer that answers is forgotten.
#[derive(Debug, Default)]
pub struct PeerReachability {
    failing: Mutex<HashMap<NodeId, Failing>>,
}

impl PeerReachability {
    /// Notes a failed RPC to `peer` at `now`; says what to report, if anything is due.
    pub fn failed(&self, peer: NodeId, now: Instant) -> Option<StillFailing> {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let state = failing
            .entry(peer)
            .or_insert_with(|| Failing::starting(now));
        if now.saturating_duration_since(state.last_failed) > EPISODE_GAP {
            *state = Failing::starting(now);
        }
        state.last_failed = now;
        state.failed_rpcs += 1;
        let failing_for = now.saturating_duration_since(state.since);
        let due = match state.reported_at {
            None => failing_for >= WARN_AFTER,
            Some(at) => now.saturating_duration_since(at) >= REPEAT_EVERY,
        };
        due.then(|| {
            state.reported_at = Some(now);
            StillFailing {
                failing_for,
                failed_rpcs: state.failed_rpcs,
            }
        })
    }

    /// Notes an answer from `peer` at `now`; says so if its failure had been reported.
    pub fn answered(&self, peer: NodeId, now: Instant) -> Option<Recovered> {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let state = failing.remove(&peer)?;
        state.reported_at.map(|_| Recovered {
            was_down_for: now.saturating_duration_since(state.since),
            failed_rpcs: state.failed_rpcs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: NodeId = 3;

    #[test]
    fn a_peer_is_reported_after_failing_for_a_while_then_once_a_minute() {
        let peers = PeerReachability::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Openraft retries every 500 ms while a peer is down.
        assert_eq!(peers.failed(PEER, at(0)), None);
        assert_eq!(peers.failed(PEER, at(2_500)), None);
        assert_eq!(
            peers.failed(PEER, at(3_000)),
            Some(StillFailing {
                failing_for: Duration::from_secs(3),
                failed_rpcs: 3
            })
        );
        for ms in (3_500..63_000).step_by(500) {
            assert_eq!(peers.failed(PEER, at(ms)), None, "at {ms} ms");
        }
        assert_eq!(
            peers.failed(PEER, at(63_000)),
            Some(StillFailing {
                failing_for: Duration::from_secs(63),
                failed_rpcs: 3 + 119 + 1
            })
        );
        // Other peers are tracked apart.
        assert_eq!(peers.failed(PEER + 1, at(63_000)), None);
    }

    #[test]
    fn recovery_is_told_only_for_a_reported_failure() {
        let peers = PeerReachability::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A short blip (a peer restarting within WARN_AFTER): nothing either way.
        assert_eq!(peers.failed(PEER, at(0)), None);
        assert_eq!(peers.answered(PEER, at(1_000)), None);
        // The blip is forgotten: a later failure starts its own clock.
        assert_eq!(peers.failed(PEER, at(10_000)), None);
        assert!(peers.failed(PEER, at(13_000)).is_some());
        assert_eq!(
            peers.answered(PEER, at(14_000)),
            Some(Recovered {
                was_down_for: Duration::from_secs(4),
                failed_rpcs: 2
            })
        );
        assert_eq!(peers.answered(PEER, at(15_000)), None);
    }

    #[test]
    fn a_failure_long_after_the_last_starts_a_new_episode() {
        let peers = PeerReachability::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A candidate's vote fails, then the node stops sending (it became a follower).
        assert_eq!(peers.failed(PEER, at(0)), None);
        // An hour later it leads, and the peer is restarting: not reported at once.
        assert_eq!(peers.failed(PEER, at(3_600_000)), None);
        assert_eq!(peers.answered(PEER, at(3_601_000)), None);
    }
}
