//! `ferrolog server`: one node with both roles (broker and controller), its gRPC port and
//! its HTTP port.

mod config;
mod control_plane;
mod http;
mod meta_properties;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use ferrolog_broker::group::{GroupConfig, GroupCoordinator};
use ferrolog_broker::service::{
    AdminApi, ClientApi, GroupApi, ReplicationApi, ReplicationServer, TransactionApi,
};
use ferrolog_broker::txn::{MarkerWriter, TransactionCoordinator, TxnConfig};
use ferrolog_broker::{Broker, BrokerConfig, BrokerMetrics, StorageSettings};
use ferrolog_controller::Controller;
use ferrolog_controller::ControllerApi;
use ferrolog_metadata::{BrokerId, MetadataFollower, MetadataQuorum, MetadataView, QuorumConfig};
use ferrolog_proto::v1::admin_service_server::AdminServiceServer;
use ferrolog_proto::v1::client_service_server::ClientServiceServer;
use ferrolog_proto::v1::controller_service_server::ControllerServiceServer;
use ferrolog_proto::v1::group_service_server::GroupServiceServer;
use ferrolog_proto::v1::raft_service_server::RaftServiceServer;
use ferrolog_proto::v1::transaction_service_server::TransactionServiceServer;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use config::{ServerConfig, ServerSettings};

/// Largest gRPC message a node accepts or sends: Kafka's `socket.request.max.bytes`.
const MAX_GRPC_MESSAGE_BYTES: usize = 100 * 1024 * 1024;
/// How long in-flight requests may take to finish after SIGTERM before the server exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Directory of the metadata store inside the data directory (Kafka's name for its log).
const METADATA_DIR: &str = "__cluster_metadata";

async fn bind(address: &str, what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("bind {what} address {address}"))?;
    let local = listener.local_addr().context("read bound address")?;
    Ok((listener, local))
}

type ServerFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs a server until SIGINT or SIGTERM, then shuts down cleanly.
pub async fn run(settings: ServerSettings) -> anyhow::Result<()> {
    let config = settings.resolve()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data directory {}", config.data_dir.display()))?;
    let shutdown = tokio::sync::watch::Sender::new(false);
    let mut servers: Vec<ServerFuture> = Vec::new();
    let mut ready = Vec::new();

    let (http_listener, http_addr) = bind(&config.http_listen, "HTTP").await?;
    ready.push(format!("http={http_addr}"));

    // The controller role: a member of the metadata quorum, serving Raft and the
    // controller API on its own port.
    let controller_role = if config.roles.controller {
        let (listener, addr) = bind(&config.controller_listen, "controller").await?;
        let voters = match &config.controller_voters {
            Some(voters) => voters.clone(),
            None => BTreeMap::from([(config.node_id as u64, addr.to_string())]),
        };
        let quorum = start_quorum(&config, voters, addr).await?;
        let controller = Arc::new(
            Controller::new(Arc::clone(&quorum), config.topic_defaults.clone())
                .with_session_timeout(Duration::from_millis(config.broker_session_timeout_ms))
                .with_leader_rebalance_interval(
                    (config.leader_rebalance_interval_ms > 0)
                        .then(|| Duration::from_millis(config.leader_rebalance_interval_ms)),
                ),
        );
        tokio::spawn(Arc::clone(&controller).run_liveness());
        let service = tonic::transport::Server::builder()
            .add_service(
                RaftServiceServer::new(quorum.raft_service())
                    .max_decoding_message_size(
                        ferrolog_metadata::raft::MAX_CONTROLLER_MESSAGE_BYTES,
                    )
                    .max_encoding_message_size(
                        ferrolog_metadata::raft::MAX_CONTROLLER_MESSAGE_BYTES,
                    ),
            )
            .add_service(ControllerServiceServer::new(ControllerApi::new(
                Arc::clone(&controller),
            )))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                wait_for(shutdown.clone()),
            );
        servers.push(Box::pin(async move {
            service.await.context("controller server")
        }));
        ready.push(format!("controller={addr}"));
        Some((quorum, controller))
    } else {
        None
    };
    let quorum = controller_role
        .as_ref()
        .map(|(quorum, _)| Arc::clone(quorum));

    // The broker role: partitions and the client API. On a controller it reads the local
    // quorum's image; otherwise it follows the controllers' metadata stream.
    let mut registry = Registry::default();
    // The controller handle readiness asks: the quorum member, or on a broker-only node the
    // forwarder the broker uses.
    let mut node_controller = controller_role.as_ref().map(|(_, c)| Arc::clone(c));
    let broker = if config.roles.broker {
        let (metadata, controller) = match &controller_role {
            Some((quorum, controller)) => (
                MetadataView::Quorum(Arc::clone(quorum)),
                Arc::clone(controller),
            ),
            None => {
                let voters: Vec<String> = config
                    .controller_voters
                    .as_ref()
                    .context(
                        "a broker-only node needs --controller-voters to find the controllers",
                    )?
                    .values()
                    .cloned()
                    .collect();
                let follower = MetadataFollower::start(voters.clone());
                let cluster_id = wait_for_cluster_id(&follower).await?;
                meta_properties::check_or_write(&config.data_dir, config.node_id, &cluster_id)?;
                (
                    MetadataView::Follower(follower),
                    Arc::new(Controller::forwarding_only(
                        voters,
                        config.topic_defaults.clone(),
                    )),
                )
            }
        };
        node_controller = Some(Arc::clone(&controller));
        let (listener, addr) = bind(&config.listen, "gRPC").await?;
        let advertised_address = config
            .advertised_address
            .clone()
            .unwrap_or_else(|| addr.to_string());
        let metrics = Arc::new(BrokerMetrics::new(&mut registry));
        let broker = Broker::start(
            BrokerConfig {
                node_id: BrokerId(config.node_id),
                advertised_address,
                storage: StorageSettings {
                    data_dir: config.data_dir.clone(),
                    flush_policy: config.flush_policy,
                    index_interval_bytes: config.index_interval_bytes,
                    topic_defaults: config.topic_defaults.clone(),
                },
                maintenance_interval: config.maintenance_interval,
                max_produce_timeout: Duration::from_secs(300),
                max_fetch_wait: Duration::from_secs(60),
                replica_lag_time_max: Duration::from_millis(config.replica_lag_time_max_ms),
                heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
                cleaner: config.cleaner.clone(),
            },
            metadata,
            Arc::new(control_plane::ControllerPlane(Arc::clone(&controller))),
            metrics,
        )
        .await
        .context("start broker")?;
        let service = client_server(
            &broker,
            config.groups.clone(),
            listener,
            wait_for(shutdown.clone()),
        )
        .await?;
        servers.push(service);
        ready.insert(0, format!("grpc={addr}"));
        Some(broker)
    } else {
        None
    };

    let stopping = Arc::new(AtomicBool::new(false));
    let readiness = http::Readiness {
        node_id: config.node_id,
        quorum: quorum.clone(),
        controller: node_controller.context("a node runs at least one role")?,
        broker: broker.clone(),
        stopping: Arc::clone(&stopping),
    };
    let http = axum::serve(
        http_listener,
        http::router(Arc::new(http::HttpState {
            registry,
            readiness,
        })),
    )
    .with_graceful_shutdown(wait_for(shutdown.clone()));
    servers.push(Box::pin(async move { http.await.context("HTTP server") }));

    tracing::info!(node_id = config.node_id, roles = ?config.roles, addresses = %ready.join(" "),
        data_dir = %config.data_dir.display(), "ferrolog server ready");
    // One machine-readable line on stdout, for scripts and tests that start a server on
    // port 0.
    println!("ferrolog ready {}", ready.join(" "));

    // On a signal the broker stops first: waiting produces are answered, long polls and
    // Subscribe streams end, and every partition is flushed; then the servers drain, for a
    // bounded time.
    let signals = {
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            stopping.store(true, Ordering::Release);
            if let Some(broker) = broker {
                broker.shutdown().await;
            }
            shutdown.send_replace(true);
        })
    };
    let drain_deadline = async {
        wait_for(shutdown.clone()).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let finished = tokio::select! {
        results = futures::future::join_all(servers) => Some(results),
        () = drain_deadline => None,
    };
    signals.abort();
    if let Some(broker) = &broker {
        broker.shutdown().await;
    }
    if let Some(quorum) = &quorum {
        quorum.shutdown().await;
    }
    match finished {
        Some(results) => {
            for result in results {
                result?;
            }
        }
        None => tracing::warn!(
            ?DRAIN_TIMEOUT,
            "requests still open after the drain timeout"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Joins (or, on the lowest voter of a fresh cluster, initializes) the metadata quorum.
async fn start_quorum(
    config: &ServerConfig,
    voters: BTreeMap<u64, String>,
    bound: SocketAddr,
) -> anyhow::Result<Arc<MetadataQuorum>> {
    let own_address = voters
        .get(&(config.node_id as u64))
        .cloned()
        .with_context(|| {
            format!(
                "node {} is not among the controller voters {}; a controller must be one of them",
                config.node_id,
                voters
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })?;
    // The voters list names where this node's peers reach it; listening elsewhere means a
    // copy-paste mistake, or a second process started with another node's id.
    let listed_port = own_address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    if listed_port.is_some_and(|port| port != bound.port()) {
        anyhow::bail!(
            "node {} is {own_address} in --controller-voters but its controller port listens on \
             {bound}; fix --controller-listen, or check that no other node uses id {}",
            config.node_id,
            config.node_id
        );
    }
    let metadata_dir = config.data_dir.join(METADATA_DIR);
    let quorum = MetadataQuorum::start(QuorumConfig {
        node_id: config.node_id as u64,
        voters,
        advertised_address: own_address,
        dir: metadata_dir.clone(),
        snapshot_entries: config.metadata_snapshot_entries,
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 500,
        election_timeout_max_ms: 1000,
        propose_timeout: Duration::from_secs(5),
    })
    .await
    .with_context(|| {
        format!(
            "open metadata quorum in {} (is another ferrolog server using this data directory?)",
            metadata_dir.display()
        )
    })?;
    meta_properties::check_or_write(&config.data_dir, config.node_id, quorum.cluster_id())?;
    Ok(quorum)
}

/// A broker-only node learns the cluster id from the controllers' first answer.
async fn wait_for_cluster_id(follower: &MetadataFollower) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(id) = follower.cluster_id() {
            return Ok(id);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no controller answered within 60 s; check --controller-voters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The client port: data plane, admin, health and reflection.
async fn client_server(
    broker: &Arc<Broker>,
    groups: GroupConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ServerFuture> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ClientServiceServer<ClientApi>>()
        .await;
    health_reporter
        .set_serving::<AdminServiceServer<AdminApi>>()
        .await;
    health_reporter
        .set_serving::<GroupServiceServer<GroupApi>>()
        .await;
    health_reporter
        .set_serving::<TransactionServiceServer<TransactionApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferrolog_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build gRPC reflection service")?;
    let admin = AdminServiceServer::new(AdminApi::new(Arc::clone(broker)));
    let coordinator = GroupCoordinator::start(Arc::clone(broker), groups);
    let markers = MarkerWriter::new(Arc::clone(broker));
    markers.set_group_coordinator(Arc::clone(&coordinator));
    let transactions = TransactionCoordinator::start(
        Arc::clone(broker),
        Arc::clone(&markers),
        TxnConfig::default(),
    );
    let client = ClientServiceServer::new(
        ClientApi::new(Arc::clone(broker)).with_transactions(Arc::clone(&transactions)),
    )
    .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let transaction = TransactionServiceServer::new(TransactionApi::new(
        Arc::clone(broker),
        transactions,
        Arc::clone(&coordinator),
        markers,
    ));
    let group = GroupServiceServer::new(GroupApi::new(coordinator, Arc::clone(broker.metrics())));
    // Hand-made rather than generated, so that batches go to followers uncopied.
    let replication = ReplicationServer::new(ReplicationApi::new(Arc::clone(broker)));
    let server = tonic::transport::Server::builder()
        // Produce requests of megabytes must not trickle through HTTP/2's default 64 KiB
        // window, a round trip per window.
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(32 * 1024 * 1024)
        .max_frame_size(ferrolog_broker::HTTP2_MAX_FRAME_BYTES)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(client)
        .add_service(admin)
        .add_service(group)
        .add_service(transaction)
        .add_service(replication)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        );
    Ok(Box::pin(async move { server.await.context("gRPC server") }))
}

async fn wait_for(shutdown: tokio::sync::watch::Sender<bool>) {
    let mut rx = shutdown.subscribe();
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
