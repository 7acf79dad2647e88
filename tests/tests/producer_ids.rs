//! Producer ids with real processes (issue 21 item 1): every node answers InitProducerId from
//! blocks the controller commits to the metadata log, and no id is ever handed out twice,
//! across block boundaries, a SIGKILL of the active controller, and broker restarts (a
//! restarted broker takes a fresh block above every id given before).

use std::collections::BTreeMap;
use std::time::Duration;

use ferrolog_proto::status::code_of;
use ferrolog_proto::v1::InitProducerIdRequest;
use ferrolog_proto::v1::client_service_client::ClientServiceClient;
use ferrolog_tests::{Cluster, http_get, init_logging, metric_sum};
use tonic::transport::Channel;

/// How long an election, or a restarted node's registration, may take.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Calls per node in each phase: more than one block of 1000, so every node crosses a block
/// boundary (and prefetches) in every phase.
const CALLS_PER_NODE: usize = 1_200;
/// Calls per surviving node while the active controller is killed: more than two blocks, so
/// the new controller must give some.
const FAILOVER_CALLS_PER_NODE: usize = 2_400;
/// Callers per node running at once.
const CALLERS: usize = 8;
/// Attempts of one call that fails for a moment (a block still on its way while the
/// controller fails over); a failed call hands out no id.
const ATTEMPTS: u32 = 20;

async fn client(address: &str) -> anyhow::Result<ClientServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(45))
        .connect()
        .await?;
    Ok(ClientServiceClient::new(channel))
}

/// One new idempotent producer's id from the node at `address`, retrying what may pass.
async fn init_producer_id(client: &mut ClientServiceClient<Channel>) -> anyhow::Result<i64> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client
            .init_producer_id(InitProducerIdRequest::default())
            .await
        {
            Ok(answer) => {
                let answer = answer.into_inner();
                anyhow::ensure!(answer.producer_epoch == 0, "a new producer's epoch is 0");
                return Ok(answer.producer_id);
            }
            Err(status) if attempt < ATTEMPTS => {
                tracing::info!(code = ?code_of(&status), message = status.message(), "retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => anyhow::bail!("InitProducerId failed {ATTEMPTS} times: {status}"),
        }
    }
}

/// `count` producer ids from the node at `address`, asked by [`CALLERS`] callers at once.
async fn producer_ids(address: &str, count: usize) -> anyhow::Result<Vec<i64>> {
    let client = client(address).await?;
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let mut client = client.clone();
        let calls = count / CALLERS + usize::from(caller < count % CALLERS);
        callers.spawn(async move {
            let mut ids = Vec::with_capacity(calls);
            for _ in 0..calls {
                ids.push(init_producer_id(&mut client).await?);
            }
            anyhow::Ok(ids)
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(caller) = callers.join_next().await {
        ids.extend(caller??);
    }
    Ok(ids)
}

/// Every id handed out, with the node and phase that handed it out; fails on a duplicate.
#[derive(Default)]
struct Handed(BTreeMap<i64, (i32, &'static str)>);

impl Handed {
    fn add(&mut self, node: i32, phase: &'static str, ids: Vec<i64>) -> anyhow::Result<()> {
        for id in ids {
            anyhow::ensure!(id >= 0, "node {node} ({phase}) handed out negative id {id}");
            if let Some(first) = self.0.insert(id, (node, phase)) {
                anyhow::bail!(
                    "producer id {id} handed out twice: by node {} ({}) and node {node} ({phase})",
                    first.0,
                    first.1
                );
            }
        }
        Ok(())
    }

    fn max(&self) -> i64 {
        self.0.keys().next_back().copied().unwrap_or(-1)
    }

    fn by(&self, node: i32, phase: &str) -> Vec<i64> {
        self.0
            .iter()
            .filter(|(_, (n, p))| *n == node && *p == phase)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Asks every node in `nodes` for `count` ids each, all at the same time; the asks run in
/// the background until [`Asks::join`].
struct Asks(tokio::task::JoinSet<(i32, anyhow::Result<Vec<i64>>)>);

impl Asks {
    fn start(cluster: &Cluster, nodes: &[i32], count: usize) -> Self {
        let mut asks = tokio::task::JoinSet::new();
        for &node in nodes {
            let address = cluster.address(node).to_owned();
            asks.spawn(async move { (node, producer_ids(&address, count).await) });
        }
        Self(asks)
    }

    async fn join(mut self, phase: &'static str, handed: &mut Handed) -> anyhow::Result<()> {
        while let Some(answer) = self.0.join_next().await {
            let (node, ids) = answer?;
            handed.add(node, phase, ids?)?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_ids_are_never_handed_out_twice_across_blocks_failover_and_restarts()
-> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: three nodes, each broker and controller");
    let mut cluster = Cluster::start(3, &[])?;
    let nodes = cluster.ids();
    cluster.wait_for_leader(READY_DEADLINE)?;
    for &node in &nodes {
        cluster.wait_ready(node, READY_DEADLINE)?;
    }

    tracing::info!("phase: every node hands out ids past its first block");
    let mut handed = Handed::default();
    Asks::start(&cluster, &nodes, CALLS_PER_NODE)
        .join("start", &mut handed)
        .await?;
    let (_, metrics) = http_get(&cluster.node(nodes[0]).http_address, "/metrics")?;
    assert!(metric_sum(&metrics, "ferrolog_producer_id_blocks_total", &[]) >= 2.0);
    assert!(
        metric_sum(&metrics, "ferrolog_producer_ids_handed_out_total", &[])
            >= CALLS_PER_NODE as f64
    );

    tracing::info!(
        "phase: SIGKILL the active controller while the other nodes hand out ids: they need \
         new blocks, from its successor"
    );
    let leader = cluster.wait_for_leader(READY_DEADLINE)?;
    let survivors: Vec<i32> = nodes.iter().copied().filter(|n| *n != leader).collect();
    let asks = Asks::start(&cluster, &survivors, FAILOVER_CALLS_PER_NODE);
    tokio::time::sleep(Duration::from_millis(30)).await;
    cluster.kill(leader)?;
    asks.join("failover", &mut handed).await?;

    tracing::info!(
        "phase: the old controller comes back and another broker restarts: each takes a \
         fresh block above every id given before"
    );
    let before_restarts = handed.max();
    let restarted_broker = survivors[0];
    cluster.start_node(leader)?;
    cluster.restart(restarted_broker)?;
    cluster.wait_for_leader(READY_DEADLINE)?;
    for &node in &nodes {
        cluster.wait_ready(node, READY_DEADLINE)?;
    }
    Asks::start(&cluster, &nodes, CALLS_PER_NODE)
        .join("restarted", &mut handed)
        .await?;
    for node in [leader, restarted_broker] {
        let after = handed.by(node, "restarted");
        let lowest = after.first().copied().expect("the phase handed out ids");
        assert!(
            lowest > before_restarts,
            "node {node} restarted and handed out {lowest}, not above {before_restarts}"
        );
    }

    let total = 3 * CALLS_PER_NODE + 2 * FAILOVER_CALLS_PER_NODE + 3 * CALLS_PER_NODE;
    assert_eq!(handed.0.len(), total, "every id handed out is distinct");
    tracing::info!(
        total,
        highest = handed.max(),
        "no producer id was handed out twice"
    );
    Ok(())
}
