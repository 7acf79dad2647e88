//! A seeded simulation of the metadata quorum: three real Raft nodes (openraft with our sled
//! log store and state machine) over an in-memory network that the seed partitions, while
//! nodes crash and restart and proposals keep coming. After every step it checks:
//!
//! - at most one leader per term, ever;
//! - committed entries never change: any node's image at a given applied index equals every
//!   other image ever seen at that index (images are the replay of the committed log);
//! - at the end, after healing, every node holds the same image, and every proposal that was
//!   acknowledged is in it.
//!
//! The seed drives the fault schedule and its timing. Time is real (sled does real I/O, which
//! a paused tokio clock would race) and openraft draws its election timeouts from its own
//! unseeded RNG, so a seed replays the same faults but not always the same interleaving. A failure prints the seed:
//! `SIM_SEED=<seed> cargo test -p ferrolog-metadata --test simulation`. `SIM_SEEDS` sets
//! how many seeds run (default 200).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolog_metadata::ClusterImage;
use ferrolog_metadata::raft::{
    MetadataCommand, MetadataStateMachine, NodeId, SledLogStore, TypeConfig,
};
use ferrolog_metadata::records::{CreateTopicRecord, MetadataRecord, PartitionAssignment, Record};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use prost::Message;

const NODES: [NodeId; 3] = [1, 2, 3];
const STEPS_PER_SEED: usize = 20;
/// Seeds run side by side; each is its own three-node cluster.
const PARALLEL_SEEDS: usize = 4;

/// xorshift64*: the seed's whole fault schedule comes from here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Which nodes are up and which are cut off; every RPC consults it.
#[derive(Default)]
struct Network {
    up: HashMap<NodeId, Raft<TypeConfig>>,
    isolated: BTreeSet<NodeId>,
}

#[derive(Clone)]
struct SimNetwork {
    from: NodeId,
    net: Arc<Mutex<Network>>,
}

struct SimClient {
    from: NodeId,
    target: NodeId,
    net: Arc<Mutex<Network>>,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> SimClient {
        SimClient {
            from: self.from,
            target,
            net: Arc::clone(&self.net),
        }
    }
}

impl SimClient {
    // openraft fixes the RPC error type; it is large and not ours to box.
    #[allow(clippy::result_large_err)]
    fn reachable<E: std::error::Error>(
        &self,
    ) -> Result<Raft<TypeConfig>, RPCError<NodeId, BasicNode, E>> {
        let net = self.net.lock().expect("network lock");
        let cut = net.isolated.contains(&self.from) || net.isolated.contains(&self.target);
        match net.up.get(&self.target) {
            Some(raft) if !cut => Ok(raft.clone()),
            _ => Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other("partitioned or down"),
            ))),
        }
    }
}

impl RaftNetwork<TypeConfig> for SimClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.reachable()?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.reachable()?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.reachable()?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

struct Node {
    raft: Raft<TypeConfig>,
    state_machine: MetadataStateMachine,
}

/// What the invariants remember across steps.
#[derive(Default)]
struct History {
    leader_of_term: BTreeMap<u64, NodeId>,
    image_at: BTreeMap<u64, Arc<ClusterImage>>,
    acknowledged: BTreeSet<String>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    dir: tempfile::TempDir,
    net: Arc<Mutex<Network>>,
    nodes: BTreeMap<NodeId, Node>,
    history: History,
    next_topic: u64,
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 30,
        election_timeout_min: 100,
        election_timeout_max: 200,
        // Small, so snapshots, purges and snapshot installs happen within a seed.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(8),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid Raft config"))
}

impl Sim {
    async fn new(seed: u64) -> Self {
        let mut sim = Sim {
            seed,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            dir: tempfile::tempdir().expect("tempdir"),
            net: Arc::default(),
            nodes: BTreeMap::new(),
            history: History::default(),
            next_topic: 0,
        };
        for id in NODES {
            sim.start(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> = NODES
            .iter()
            .map(|id| {
                (
                    *id,
                    BasicNode {
                        addr: format!("node-{id}"),
                    },
                )
            })
            .collect();
        sim.nodes[&1]
            .raft
            .initialize(members)
            .await
            .expect("initialize");
        sim
    }

    async fn start(&mut self, id: NodeId) {
        let path = self.dir.path().join(format!("node-{id}"));
        // A crashed node's sled files may still be held briefly by tasks winding down.
        let mut db = None;
        for _ in 0..1000 {
            match sled::Config::new().path(&path).open() {
                Ok(opened) => {
                    db = Some(opened);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let db = db.unwrap_or_else(|| panic!("seed {}: cannot reopen node {id}", self.seed));
        let log = SledLogStore::open(&db).expect("log store");
        let state_machine = MetadataStateMachine::open(&db).expect("state machine");
        let network = SimNetwork {
            from: id,
            net: Arc::clone(&self.net),
        };
        let raft = Raft::new(id, raft_config(), network, log, state_machine.clone())
            .await
            .expect("start Raft");
        self.net.lock().expect("lock").up.insert(id, raft.clone());
        self.nodes.insert(
            id,
            Node {
                raft,
                state_machine,
            },
        );
    }

    async fn crash(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            self.net.lock().expect("lock").up.remove(&id);
            // Bounded: a crash must not wait on the node it crashes.
            let _ = tokio::time::timeout(Duration::from_secs(5), node.raft.shutdown()).await;
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes.iter().find_map(|(id, node)| {
            (node.raft.metrics().borrow().state == ServerState::Leader).then_some(*id)
        })
    }

    async fn propose(&mut self) {
        let Some(leader) = self.leader() else { return };
        self.next_topic += 1;
        let name = format!("t{}", self.next_topic);
        let record = MetadataRecord {
            record: Some(Record::CreateTopic(CreateTopicRecord {
                name: name.clone(),
                topic_id: format!("{:032x}", self.next_topic),
                assignments: vec![PartitionAssignment {
                    partition: 0,
                    replicas: vec![1],
                }],
                configs: Default::default(),
            })),
        };
        let command = MetadataCommand {
            records: vec![record.encode_to_vec()],
        };
        let raft = self.nodes[&leader].raft.clone();
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_millis(300), raft.client_write(command)).await
            && response.data.error.is_none()
        {
            self.history.acknowledged.insert(name);
        }
    }

    /// One random fault or action, then time passes.
    async fn step(&mut self) {
        let target = NODES[self.rng.below(NODES.len() as u64) as usize];
        match self.rng.below(10) {
            0..=3 => self.propose().await,
            4 => {
                self.net.lock().expect("lock").isolated.insert(target);
            }
            5 => self.net.lock().expect("lock").isolated.clear(),
            6 if self.nodes.len() == NODES.len() => self.crash(target).await,
            7 if !self.nodes.contains_key(&target) => self.start(target).await,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10 + self.rng.below(90))).await;
    }

    fn check(&mut self) {
        for (id, node) in &self.nodes {
            let metrics = node.raft.metrics().borrow().clone();
            if metrics.state == ServerState::Leader {
                let first = *self
                    .history
                    .leader_of_term
                    .entry(metrics.current_term)
                    .or_insert(*id);
                assert_eq!(
                    first, *id,
                    "seed {}: two leaders in term {}: {first} and {id}",
                    self.seed, metrics.current_term
                );
            }
            let image = node.state_machine.image();
            let seen = self
                .history
                .image_at
                .entry(image.applied_index)
                .or_insert_with(|| Arc::clone(&image));
            assert_eq!(
                **seen, *image,
                "seed {}: node {id} holds a different image at applied index {}: a committed \
                 entry changed",
                self.seed, image.applied_index
            );
        }
    }

    /// Heals everything, waits (bounded) for all nodes to agree, and checks that every
    /// acknowledged proposal survived.
    async fn converge(&mut self) {
        self.net.lock().expect("lock").isolated.clear();
        for id in NODES {
            if !self.nodes.contains_key(&id) {
                self.start(id).await;
            }
        }
        // One more write through a leader commits everything before it in the new term.
        for _ in 0..100 {
            if self.leader().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.propose().await;
        let mut agreed = false;
        for _ in 0..200 {
            let images: Vec<Arc<ClusterImage>> = self
                .nodes
                .values()
                .map(|n| n.state_machine.image())
                .collect();
            if images.windows(2).all(|w| w[0] == w[1]) {
                agreed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.check();
        assert!(
            agreed,
            "seed {}: nodes did not converge on one image after healing",
            self.seed
        );
        let image = self.nodes[&1].state_machine.image();
        for name in &self.history.acknowledged {
            assert!(
                image.topic(name).is_some(),
                "seed {}: acknowledged topic {name} is missing from the converged image",
                self.seed
            );
        }
        eprintln!(
            "seed {}: {} acknowledged proposals, {} terms with a leader, converged at applied index {}",
            self.seed,
            self.history.acknowledged.len(),
            self.history.leader_of_term.len(),
            image.applied_index
        );
        for id in NODES {
            self.crash(id).await;
        }
    }
}

/// Bound on one seed: steps and convergence take a few seconds; more is a liveness bug.
const SEED_DEADLINE: Duration = Duration::from_secs(90);

async fn run_seed(seed: u64) {
    let run = async {
        let mut sim = Sim::new(seed).await;
        for _ in 0..STEPS_PER_SEED {
            sim.step().await;
            sim.check();
        }
        sim.converge().await;
    };
    if tokio::time::timeout(SEED_DEADLINE, run).await.is_err() {
        panic!("seed {seed}: no progress within {SEED_DEADLINE:?}; replay with SIM_SEED={seed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_invariants_hold_under_partitions_crashes_and_restarts() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            (1..=count).collect()
        }
    };
    // A panic inside names its seed.
    for batch in seeds.chunks(PARALLEL_SEEDS) {
        let runs: Vec<_> = batch
            .iter()
            .map(|seed| tokio::spawn(run_seed(*seed)))
            .collect();
        for run in runs {
            if let Err(error) = run.await {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }
}
