//! gRPC channels to brokers, one per address, created lazily and shared by every request to
//! that broker (HTTP/2 multiplexes them), plus the deadline wrapper every call goes through.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};

/// HTTP/2 flow-control windows of a connection to a broker: per stream (one request) and
/// per connection. Large enough for a whole produce or fetch of several megabytes.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// The largest HTTP/2 frame this client accepts, as the broker does for requests (see
/// `ferrolog_broker::HTTP2_MAX_FRAME_BYTES`): a fetch response of megabytes then comes in a
/// few frames, not 64 per MiB, each a separate write on the broker.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Lazily connected channels keyed by `host:port`.
#[derive(Debug)]
pub(crate) struct Connections {
    connect_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Connections {
    pub(crate) fn new(config: &ClientConfig) -> Self {
        Self {
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `address`, creating it on first use. No I/O happens here: the connection
    /// is made by the first request, and remade by a later one after it breaks.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "broker address {address:?} is not host:port: {e}"
            ))
        })?;
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // HTTP/2's default 64 KiB windows cost a round trip per 64 KiB of a fetch
            // response; batches of a megabyte and more want the whole message in flight.
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            // Detects a dead peer on an idle connection instead of waiting for the OS.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Awaits one gRPC call to `address` for at most `timeout`, mapping its status to a
/// [`ClientError`]. `what` names the request in the timeout message.
pub(crate) async fn call<T>(
    address: &str,
    what: &str,
    timeout: Duration,
    request: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(ClientError::from_status(&status, address)),
        Err(_elapsed) => Err(ClientError::Timeout {
            what: format!("{what} from {address}"),
            after_ms: timeout.as_millis() as u64,
        }),
    }
}
