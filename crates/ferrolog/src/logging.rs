//! Log output: `RUST_LOG` (or a per-command default) to standard error, without openraft's
//! line per failed RPC to an unreachable controller peer.
//!
//! With one voter of three down, openraft had the Raft leader write 85 lines in 10 s, 21
//! of them ERROR ("RPCError", "error replication to target", "backoff mode", "while
//! requesting vote", ...), and every node's start printed ERRORs while its peers were still
//! starting. The metadata quorum's network layer reports a peer that does not answer itself,
//! once per change (`ferrolog_metadata::raft::peer_reachability`), so those lines are dropped
//! here. Every other openraft warning and error still shows.
//!
//! Lines carry ANSI colours only when standard error is a terminal and `NO_COLOR` is not set:
//! a log file, `docker logs` or a pod's log collector gets plain text.

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// What openraft's messages about a peer that does not answer contain: the `Unreachable`
/// error our network returns for it (its Display), and the backoff that error starts.
const UNREACHABLE_PEER_MARKERS: [&str; 2] = ["Unreachable node", "backoff mode"];

/// Installs the global subscriber: `RUST_LOG` if set, else `default_filter`.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = ansi_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(QuietUnreachablePeers)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr),
        )
        .init();
}

/// Whether log lines carry ANSI colours: only for a terminal, where a person reads them (in a
/// file they are escape codes around every level and field name), and not when `NO_COLOR`
/// is set to anything but the empty string (https://no-color.org).
fn ansi_colours(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Drops openraft's warnings and errors about a controller peer that does not answer.
struct QuietUnreachablePeers;

impl<S: Subscriber> Layer<S> for QuietUnreachablePeers {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        // Levels compare by verbosity: anything above WARN is INFO, DEBUG or TRACE.
        if !metadata.target().starts_with("openraft") || *metadata.level() > Level::WARN {
            return true;
        }
        let mut mentions = MentionsUnreachablePeer(false);
        event.record(&mut mentions);
        !mentions.0
    }
}

/// Whether any field of an event (its message included) names an unreachable peer.
struct MentionsUnreachablePeer(bool);

impl Visit for MentionsUnreachablePeer {
    fn record_str(&mut self, _field: &Field, value: &str) {
        self.0 |= UNREACHABLE_PEER_MARKERS.iter().any(|m| value.contains(m));
    }

    fn record_debug(&mut self, _field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0 {
            let text = format!("{value:?}");
            self.0 = UNREACHABLE_PEER_MARKERS.iter().any(|m| text.contains(m));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn colours_only_on_a_terminal_and_only_without_no_color() {
        assert!(ansi_colours(true, None));
        assert!(ansi_colours(true, Some(OsStr::new(""))));
        assert!(!ansi_colours(true, Some(OsStr::new("1"))));
        assert!(!ansi_colours(false, None));
        assert!(!ansi_colours(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn openraft_lines_about_unreachable_peers_are_dropped_and_nothing_else() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(QuietUnreachablePeers)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            // As openraft 0.9 logs them (replication/mod.rs, core/raft_core.rs).
            let unreachable = "Unreachable node: tcp connect error";
            tracing::error!(target: "openraft::replication", err = %unreachable, "RPCError");
            tracing::warn!(target: "openraft::replication", error = %unreachable,
                "error replication to target=3");
            tracing::warn!(target: "openraft::replication",
                "backoff_drain_events backoff mode: drain events without processing them");
            tracing::warn!(target: "openraft::engine::handler::replication_handler",
                "heartbeat error: {}, no update to inflight data", unreachable);
            tracing::error!(target: "openraft::core::raft_core", error = %unreachable,
                "while requesting vote");
            // Kept: other openraft problems, openraft's info, and everything of ours.
            tracing::error!(target: "openraft::replication", error = "StorageError: disk full",
                "error replication to target=2");
            tracing::info!(target: "openraft::core::raft_core", "Unreachable node: at info");
            tracing::warn!(target: "ferrolog_metadata::raft::network", error = %unreachable,
                "controller peer does not answer Raft RPCs");
        });
        let text =
            String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("StorageError: disk full"), "{text}");
        assert!(lines[1].contains("at info"), "{text}");
        assert!(
            lines[2].contains("controller peer does not answer"),
            "{text}"
        );
    }
}
