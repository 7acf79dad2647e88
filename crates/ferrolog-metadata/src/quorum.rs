//! The metadata quorum: one openraft group among the controllers. Proposals go through the
//! leader (the active controller); every node's state machine applies the committed records
//! to its cluster image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use prost::Message;
use tokio::sync::watch;

use crate::raft::{
    GrpcNetwork, MetadataCommand, MetadataStateMachine, NodeId, RaftApi, Sender, SledLogStore,
    TypeConfig,
};
use crate::records::MetadataRecord;
use crate::{ClusterImage, MetadataError};

const CLUSTER_ID_KEY: &[u8] = b"cluster-id";

/// How a node joins the quorum.
#[derive(Clone, Debug)]
pub struct QuorumConfig {
    pub node_id: NodeId,
    /// Every voter's node id and controller address; identical on every node.
    pub voters: BTreeMap<NodeId, String>,
    /// This node's own controller address, as the others reach it.
    pub advertised_address: String,
    /// Where the sled database lives.
    pub dir: PathBuf,
    /// Snapshot (and purge the log) every this many entries.
    pub snapshot_entries: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Upper bound on one proposal (waiting for a leader and for the commit).
    pub propose_timeout: Duration,
}

/// One controller's view of the quorum.
#[derive(Clone, Debug, Default)]
pub struct QuorumStatus {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    /// On the leader, the highest index stored on a majority of voters; elsewhere the
    /// applied index (a follower learns the commit index only as it applies).
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub state: String,
    /// (node id, address, voter?, matched index) of every member; matched indexes are only
    /// known on the leader.
    pub members: Vec<(NodeId, String, bool, Option<u64>)>,
}

/// A running member of the metadata quorum.
pub struct MetadataQuorum {
    config: QuorumConfig,
    raft: Raft<TypeConfig>,
    state_machine: MetadataStateMachine,
    cluster_id: String,
    /// Serializes proposals from this node: "decide from the image, then propose" must not
    /// interleave with another decision (two creates of one name).
    propose_lock: tokio::sync::Mutex<()>,
    /// Raft senders' incarnations, shared by every RaftService this node serves.
    incarnations: Arc<crate::raft::IncarnationTracker>,
    /// This node on the Raft wire.
    own: Sender,
}

/// A cluster id all nodes derive alike from the voters list (FNV-1a of its canonical
/// form), so nodes configured with different lists refuse each other's traffic. It is
/// stored at first start and never recomputed.
fn cluster_id_for(voters: &BTreeMap<NodeId, String>) -> String {
    let canonical: Vec<String> = voters
        .iter()
        .map(|(id, addr)| format!("{id}@{addr}"))
        .collect();
    let fnv = |seed: u64| {
        canonical.join(",").bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

impl MetadataQuorum {
    /// Opens the node's Raft state and starts Raft. A fresh cluster is initialized exactly
    /// once, by the voter with the lowest id, and only when it has no Raft state at all; a
    /// restart never initializes again.
    pub async fn start(config: QuorumConfig) -> Result<Arc<Self>, MetadataError> {
        let store = |context| move |source| MetadataError::Store { context, source };
        let db = sled::Config::new()
            .path(&config.dir)
            .open()
            .map_err(store("open sled database"))?;
        let cluster_id = match db.get(CLUSTER_ID_KEY).map_err(store("read cluster id"))? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = cluster_id_for(&config.voters);
                db.insert(CLUSTER_ID_KEY, id.as_bytes())
                    .map_err(store("write cluster id"))?;
                // Synchronous, like the open above: once, at start-up (see raft/flush.rs
                // for why never `flush_async`).
                db.flush().map_err(store("flush cluster id"))?;
                id
            }
        };
        let log_store = SledLogStore::open(&db).map_err(store("open Raft log"))?;
        let state_machine = MetadataStateMachine::open(&db)?;
        let raft_config = Config {
            cluster_name: "ferrolog-metadata".to_owned(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_entries.max(1)),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .map_err(|e| MetadataError::Raft(format!("invalid Raft config: {e}")))?;
        let own = Sender {
            cluster_id: cluster_id.clone(),
            node_id: config.node_id,
            address: config.advertised_address.clone(),
            // Never 0, which means "not tracked".
            incarnation: rand08::random::<u64>().max(1),
        };
        let incarnations = Arc::new(crate::raft::IncarnationTracker::default());
        let network = GrpcNetwork::new(own.clone(), Arc::clone(&incarnations));
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|e| MetadataError::Raft(format!("start Raft: {e}")))?;

        let lowest = config.voters.keys().next().copied();
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| MetadataError::Raft(format!("read Raft state: {e}")))?;
        if !initialized && lowest == Some(config.node_id) {
            let members: BTreeMap<NodeId, BasicNode> = config
                .voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(voters = ?config.voters, %cluster_id, "metadata quorum initialized")
                }
                Err(RaftError::APIError(e)) => tracing::info!(%e, "quorum already initialized"),
                Err(e) => return Err(MetadataError::Raft(format!("initialize: {e}"))),
            }
        }
        tokio::spawn(log_leadership_changes(raft.metrics()));
        Ok(Arc::new(Self {
            config,
            raft,
            state_machine,
            cluster_id,
            propose_lock: tokio::sync::Mutex::new(()),
            incarnations,
            own,
        }))
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The RaftService that serves this node's Raft peers.
    pub fn raft_service(&self) -> RaftApi {
        RaftApi::new(
            self.raft.clone(),
            self.own.clone(),
            self.config.voters.clone(),
            Arc::clone(&self.incarnations),
        )
    }

    /// The latest image this node has applied.
    pub fn image(&self) -> Arc<ClusterImage> {
        self.state_machine.image()
    }

    /// A receiver of every new image.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        self.state_machine.subscribe()
    }

    /// What changed after the image at `from`: the commands since, when still kept (see
    /// [`crate::MetadataChanges`]).
    pub fn changes_since(&self, from: u64) -> crate::MetadataChanges {
        self.state_machine.changes_since(from)
    }

    /// Every configured voter and its controller address.
    pub fn voter_addresses(&self) -> Vec<(NodeId, String)> {
        self.config
            .voters
            .iter()
            .map(|(id, address)| (*id, address.clone()))
            .collect()
    }

    /// The current leader and its controller address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .or_else(|| self.config.voters.get(&leader).cloned())?;
        Some((leader, address))
    }

    /// Decides records from an up-to-date image and commits them, on the leader only
    /// (elsewhere: `NotController` naming the leader, if known). Returns the log index.
    pub async fn propose_with<E: From<MetadataError>>(
        &self,
        decide: impl FnOnce(&ClusterImage) -> Result<Vec<MetadataRecord>, E>,
    ) -> Result<u64, E> {
        let timeout = self.config.propose_timeout;
        let _serial = tokio::time::timeout(timeout, self.propose_lock.lock())
            .await
            .map_err(|_| MetadataError::Timeout {
                waiting_for: "earlier proposals from this node",
                timeout_ms: timeout.as_millis() as u64,
            })?;
        tokio::time::timeout(timeout, self.raft.ensure_linearizable())
            .await
            .map_err(|_| MetadataError::Timeout {
                waiting_for: "a controller leader",
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|e| match e.forward_to_leader() {
                Some(forward) => self.not_controller(forward.leader_id),
                None => MetadataError::Raft(e.to_string()),
            })?;
        let records = decide(&self.image())?;
        if records.is_empty() {
            return Ok(self.image().applied_index);
        }
        let command = MetadataCommand {
            records: records.iter().map(Message::encode_to_vec).collect(),
        };
        let written = tokio::time::timeout(timeout, self.raft.client_write(command))
            .await
            .map_err(|_| MetadataError::CommitUnknown {
                timeout_ms: timeout.as_millis() as u64,
            })?;
        let response = match written {
            Ok(response) => response,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                return Err(self.not_controller(f.leader_id).into());
            }
            Err(e) => return Err(MetadataError::Raft(e.to_string()).into()),
        };
        if let Some(error) = response.data.error {
            return Err(MetadataError::InvalidRecord(error).into());
        }
        Ok(response.log_id.index)
    }

    fn not_controller(&self, leader: Option<NodeId>) -> MetadataError {
        let leader = leader.and_then(|id| {
            self.leader()
                .filter(|(l, _)| *l == id)
                .or_else(|| self.config.voters.get(&id).map(|a| (id, a.clone())))
        });
        MetadataError::NotController { leader }
    }

    /// This node's view of the quorum.
    pub fn status(&self) -> QuorumStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members: Vec<(NodeId, String, bool, Option<u64>)> = membership
            .nodes()
            .map(|(id, node)| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|log_id| log_id.index)
                    .or_else(|| {
                        (*id == self.config.node_id).then_some(metrics.last_log_index.unwrap_or(0))
                    });
                (*id, node.addr.clone(), voters.contains(id), matched)
            })
            .collect();
        let applied_index = metrics.last_applied.map_or(0, |l| l.index);
        let voter_matches: Vec<Option<u64>> = members
            .iter()
            .filter(|(_, _, voter, _)| *voter)
            .map(|(_, _, _, matched)| *matched)
            .collect();
        let commit_index = match metrics.state {
            ServerState::Leader => majority_index(&voter_matches).max(applied_index),
            _ => applied_index,
        };
        QuorumStatus {
            node_id: self.config.node_id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index,
            applied_index,
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
            state: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            members,
        }
    }

    /// Stops Raft (clean shutdown).
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "Raft shutdown");
        }
    }
}

/// The highest index a majority of voters hold, given each voter's matched index
/// (`None`: unknown, counted as nothing).
fn majority_index(matched: &[Option<u64>]) -> u64 {
    let mut indexes: Vec<u64> = matched.iter().map(|m| m.unwrap_or(0)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    // Sorted high to low, the majority-th entry is held by a majority.
    indexes.get(matched.len() / 2).copied().unwrap_or(0)
}

/// Logs each change of the quorum's leader or term, as this node sees it. Operators need
/// these lines; openraft's own info-level logs (state dumps, every vote step) are filtered
/// out by the server's default log filter, so this is where elections show up. Ends when
/// the Raft instance shuts down.
async fn log_leadership_changes(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
) {
    let mut seen = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term, m.state)
        };
        if seen != Some(now) {
            let (leader, term, state) = now;
            match (state, leader) {
                (ServerState::Shutdown, _) => {
                    tracing::info!(term, "metadata quorum member stopped");
                    return;
                }
                (_, Some(leader)) => tracing::info!(leader, term, this_node = ?state,
                    "metadata quorum leader"),
                (_, None) => tracing::info!(term, this_node = ?state,
                    "metadata quorum has no leader"),
            }
            seen = Some(now);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_index_is_what_a_majority_of_voters_hold() {
        assert_eq!(majority_index(&[Some(10), Some(7), Some(3)]), 7);
        assert_eq!(majority_index(&[Some(10), None, None]), 0);
        assert_eq!(
            majority_index(&[Some(9), Some(9), Some(4), Some(2), None]),
            4
        );
        assert_eq!(majority_index(&[Some(5)]), 5);
        assert_eq!(majority_index(&[]), 0);
    }

    #[test]
    fn cluster_ids_are_equal_for_equal_voter_lists_only() {
        let a = BTreeMap::from([(1, "h1:9293".to_owned()), (2, "h2:9293".to_owned())]);
        let b = BTreeMap::from([(2, "h2:9293".to_owned()), (1, "h1:9293".to_owned())]);
        let c = BTreeMap::from([(1, "h1:9293".to_owned()), (2, "h3:9293".to_owned())]);
        assert_eq!(cluster_id_for(&a), cluster_id_for(&b));
        assert_ne!(cluster_id_for(&a), cluster_id_for(&c));
    }
}
