//! The HTTP port: `/health` (the process answers), `/ready` (the node is caught up with the
//! cluster's metadata and may take traffic) for probes, and `/metrics` in Prometheus text
//! format.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ferrolog_broker::Broker;
use ferrolog_controller::Controller;
use ferrolog_metadata::{BrokerId, MetadataQuorum};
use prometheus_client::registry::Registry;

/// Upper bound on one `/ready` answer: asking the controller leader included.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `/ready` waits for this node to apply what the leader has committed before it
/// answers "not ready".
const CATCH_UP_GRACE: Duration = Duration::from_secs(1);
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

/// Shared state of the HTTP handlers.
pub struct HttpState {
    pub registry: Registry,
    pub readiness: Readiness,
}

/// What `/ready` looks at.
pub struct Readiness {
    pub node_id: i32,
    /// This node's quorum member, when it is a controller.
    pub quorum: Option<Arc<MetadataQuorum>>,
    /// Reaches the active controller (forwarding only on a broker-only node).
    pub controller: Arc<Controller>,
    /// This node's broker, when it is one.
    pub broker: Option<Arc<Broker>>,
    /// Set when a signal asked the server to stop.
    pub stopping: Arc<AtomicBool>,
}

impl Readiness {
    /// Ready means: a controller leader answers; a controller has applied every metadata
    /// entry the leader had committed when asked; a broker is registered and unfenced in
    /// its own image and is in the ISR of every partition it replicates that has a leader.
    /// `Err` carries the reason.
    ///
    /// A broker-only node counts as caught up once its image holds its own registration: its
    /// image is indexed by metadata records, not by Raft entries, so the leader's commit
    /// index is not comparable with it.
    async fn check(&self) -> Result<String, String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".to_owned());
        }
        let status = self.controller.quorum_status().await;
        let Some(leader) = status.leader else {
            return Err("no controller leader (waiting for quorum)".to_owned());
        };
        if status.node_id != leader {
            return Err(format!(
                "the controller leader (node {leader}) does not answer"
            ));
        }
        let committed = status.commit_index;
        let mut summary = format!(
            "node {}: controller leader {leader} at term {}, committed index {committed}",
            self.node_id, status.term
        );
        if let Some(quorum) = &self.quorum {
            let deadline = tokio::time::Instant::now() + CATCH_UP_GRACE;
            let applied = loop {
                let applied = quorum.status().applied_index;
                if applied >= committed || tokio::time::Instant::now() >= deadline {
                    break applied;
                }
                tokio::time::sleep(CATCH_UP_POLL).await;
            };
            if applied < committed {
                return Err(format!(
                    "metadata applied up to index {applied}, the leader has committed {committed}"
                ));
            }
            summary.push_str(&format!(", applied {applied}"));
        }
        if let Some(broker) = &self.broker {
            let image = broker.image();
            match image.brokers.get(&BrokerId(self.node_id)) {
                None => return Err(format!("broker {} is not registered yet", self.node_id)),
                Some(b) if b.fenced => {
                    return Err(format!(
                        "broker {} is fenced (it registers again after its next heartbeat)",
                        self.node_id
                    ));
                }
                // A restarted broker is listed under its previous process until its new
                // registration commits; a controller failover meanwhile would fence it.
                Some(b) if b.incarnation_id != broker.incarnation_id() => {
                    return Err(format!(
                        "the registration of this process of broker {} is not committed yet",
                        self.node_id
                    ));
                }
                Some(_) => {}
            }
            // A rolling restart must not take the next node down before this one holds
            // every acknowledged record again, or partitions fall below min.insync.replicas.
            let me = BrokerId(self.node_id);
            let behind: Vec<String> = image
                .topics
                .values()
                .flat_map(|topic| {
                    topic
                        .partitions
                        .iter()
                        .filter(|p| {
                            p.leader.is_some() && p.replicas.contains(&me) && !p.isr.contains(&me)
                        })
                        .map(|p| format!("{}-{}", topic.name, p.partition.0))
                })
                .collect();
            if !behind.is_empty() {
                return Err(format!(
                    "not yet in the ISR of {} partition(s): {}",
                    behind.len(),
                    behind
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            // Being back in every ISR already shows the partitions are open and followed;
            // waiting for the local reconcile as well would add nothing.
            summary.push_str(&format!(
                "; broker registered and in sync, image at metadata record {}",
                image.applied_index
            ));
        }
        Ok(summary)
    }
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok\n"
}

/// 200 when the node may take traffic, 503 with the reason otherwise (a Kubernetes
/// readiness probe, or a script waiting for a cluster).
async fn ready(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let (code, body) =
        match tokio::time::timeout(READY_CHECK_TIMEOUT, state.readiness.check()).await {
            Ok(Ok(summary)) => (StatusCode::OK, format!("ready: {summary}\n")),
            Ok(Err(reason)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: no answer from the controller leader within {} s\n",
                    READY_CHECK_TIMEOUT.as_secs()
                ),
            ),
        };
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}
