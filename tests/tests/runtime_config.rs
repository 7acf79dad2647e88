//! Runtime configuration against real servers: topic configs and cluster-wide topic defaults
//! change through the metadata log without a restart (Kafka's IncrementalAlterConfigs), every
//! replica applies them, they survive restarts, a deleted config falls back to the layer
//! below (cluster default, then the server's static default), and bad changes are refused
//! whole with a clear error and a stable code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferrolog_client::{
    Admin, ClientConfig, ClientError, ConfigEntry, ConfigResource, ConfigSource, ErrorCode,
};
use ferrolog_tests::describe::{self, DescribeTopicResponse};
use ferrolog_tests::{
    Cluster, Server, assert_ok, init_logging, run_cli, stderr, stdout, wait_until,
};

/// How long a committed change may take to show on every node, or a retention pass to run.
const APPLY_DEADLINE: Duration = Duration::from_secs(30);
/// The server's static `retention.ms` default in these tests' config file.
const STATIC_RETENTION_MS: &str = "3600000";

/// A config file that runs retention every 200 ms (so a test sees its effect at once) and
/// sets a static `retention.ms` default, so the DEFAULT layer is visible as such.
fn write_server_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("ferrolog.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nmaintenance_interval_ms = 200\n\n[topic_defaults]\n\
             \"retention.ms\" = \"{STATIC_RETENTION_MS}\"\n"
        ),
    )?;
    Ok(path)
}

/// Runs an admin request through the node at `address` alone, on a runtime of its own.
fn with_admin<T>(
    address: &str,
    request: impl AsyncFnOnce(Admin) -> Result<T, ClientError>,
) -> anyhow::Result<Result<T, ClientError>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let admin = Admin::connect(ClientConfig::with_brokers([address.to_owned()])).await?;
        tokio::time::timeout(Duration::from_secs(30), request(admin))
            .await
            .context("no admin answer within 30 s")
    })
}

fn alter(
    address: &str,
    resource: &ConfigResource,
    set: &[(&str, &str)],
    delete: &[&str],
) -> anyhow::Result<Result<u64, ClientError>> {
    let set: BTreeMap<String, String> = set
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let delete: Vec<String> = delete.iter().map(|d| (*d).to_owned()).collect();
    with_admin(address, async move |admin| {
        admin.alter_configs(resource, set, delete).await
    })
}

/// A config's value and source in a list of entries.
fn entry<'a>(entries: &'a [ConfigEntry], name: &str) -> Option<(&'a str, ConfigSource)> {
    entries
        .iter()
        .find(|e| e.name == name)
        .map(|e| (e.value.as_str(), e.source()))
}

fn topic_entry<'a>(
    described: &'a DescribeTopicResponse,
    name: &str,
) -> Option<(&'a str, ConfigSource)> {
    entry(&described.config_entries, name)
}

/// Waits until every node of `nodes` describes `topic`'s `config` as `value` from `source`.
fn wait_everywhere(
    cluster: &Cluster,
    nodes: &[i32],
    topic: &str,
    config: &str,
    value: &str,
    source: ConfigSource,
) -> anyhow::Result<()> {
    for &id in nodes {
        let mut last = String::new();
        wait_until(
            &format!("node {id} to show {topic} {config}={value} from {source:?}"),
            APPLY_DEADLINE,
            || match cluster.describe(id, topic) {
                Ok(d) if topic_entry(&d, config) == Some((value, source)) => Some(()),
                Ok(d) => {
                    last = format!("{:?}", topic_entry(&d, config));
                    None
                }
                Err(error) => {
                    last = format!("{error:#}");
                    None
                }
            },
        )
        .with_context(|| format!("last answer: {last}"))?;
    }
    Ok(())
}

/// Produces `batches` separate batches of 20 records of about 80 bytes each: with
/// `segment.bytes=1024` every batch fills a segment of its own.
fn produce_batches(brokers: &str, topic: &str, batches: usize) -> anyhow::Result<()> {
    for batch in 0..batches {
        let lines: String = (0..20)
            .map(|i| format!("batch {batch} record {i} {}\n", "x".repeat(60)))
            .collect();
        let out = run_cli(brokers, &["produce", topic, "--acks", "all"], Some(&lines))?;
        assert_ok(&out);
    }
    Ok(())
}

#[test]
fn retention_change_at_runtime_deletes_old_segments_without_restart() -> anyhow::Result<()> {
    init_logging();
    let data = tempfile::tempdir()?;
    let etc = tempfile::tempdir()?;
    let config = write_server_config(etc.path())?;
    let config = config.to_str().context("utf-8 path")?;
    let mut server = Server::start_with(data.path(), &["--config", config])?;
    let brokers = server.grpc_address.clone();

    tracing::info!("phase: a topic with small segments keeps them all under the default retention");
    let out = run_cli(
        &brokers,
        &[
            "topic",
            "create",
            "logs",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
            "--config",
            "segment.bytes=1024",
        ],
        None,
    )?;
    assert_ok(&out);
    produce_batches(&brokers, "logs", 5)?;
    // Several maintenance passes (200 ms apart) run meanwhile; none may delete anything.
    std::thread::sleep(Duration::from_secs(1));
    let before = describe::topic(&brokers, "logs")?;
    let p = describe::partition(&before, 0)?;
    assert_eq!(p.log_start_offset, 0, "{p:?}");
    assert_eq!(p.log_end_offset, 100, "{p:?}");

    tracing::info!("phase: retention.ms=1 at runtime makes the next pass delete the old segments");
    let out = run_cli(
        &brokers,
        &["topic", "alter-config", "logs", "--set", "retention.ms=1"],
        None,
    )?;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("altered topic logs: set retention.ms=1"),
        "{}",
        stdout(&out)
    );
    let after = wait_until("retention to delete segments", APPLY_DEADLINE, || {
        let d = describe::topic(&brokers, "logs").ok()?;
        let p = describe::partition(&d, 0).ok()?.clone();
        (p.log_start_offset > 0).then_some(p)
    })?;
    assert_eq!(after.log_end_offset, 100, "retention never moves the end");
    assert!(
        after.log_start_offset < 100,
        "the active segment stays: {after:?}"
    );
    assert!(
        server.exit_status()?.is_none(),
        "the same server process applied the change"
    );
    let d = describe::topic(&brokers, "logs")?;
    assert_eq!(
        topic_entry(&d, "retention.ms"),
        Some(("1", ConfigSource::Topic))
    );
    Ok(())
}

/// One refused alter: what it sends, and the code and message it must get.
struct BadAlter {
    name: &'static str,
    resource: ConfigResource,
    set: Vec<(&'static str, &'static str)>,
    delete: Vec<&'static str>,
    code: ErrorCode,
    message: &'static str,
}

fn bad(
    name: &'static str,
    resource: ConfigResource,
    set: Vec<(&'static str, &'static str)>,
    delete: Vec<&'static str>,
    code: ErrorCode,
    message: &'static str,
) -> BadAlter {
    BadAlter {
        name,
        resource,
        set,
        delete,
        code,
        message,
    }
}

#[test]
fn bad_config_changes_are_refused_whole_with_a_clear_error_and_lose_nothing() -> anyhow::Result<()>
{
    init_logging();
    let data = tempfile::tempdir()?;
    let etc = tempfile::tempdir()?;
    let config = write_server_config(etc.path())?;
    let config = config.to_str().context("utf-8 path")?;
    let server = Server::start_with(data.path(), &["--config", config])?;
    let brokers = server.grpc_address.clone();
    let topic = || ConfigResource::Topic("orders".into());

    tracing::info!("phase: a topic with its own settings and acknowledged records");
    let out = run_cli(
        &brokers,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
            "--config",
            "max.compaction.lag.ms=60000",
        ],
        None,
    )?;
    assert_ok(&out);
    produce_batches(&brokers, "orders", 2)?;
    let before = describe::topic(&brokers, "orders")?;

    tracing::info!("phase: each bad change gets its stable code and a message naming the config");
    let cases = [
        bad(
            "an unknown config",
            topic(),
            vec![("retention.hours", "1")],
            vec![],
            ErrorCode::InvalidConfig,
            "unknown topic config 'retention.hours'; known configs are retention.ms",
        ),
        bad(
            "a bad value",
            topic(),
            vec![("retention.ms", "soon")],
            vec![],
            ErrorCode::InvalidConfig,
            "invalid value 'soon' for topic config 'retention.ms': milliseconds >= 0, or -1",
        ),
        bad(
            "a valid change beside a bad one",
            topic(),
            vec![("retention.ms", "1"), ("segment.bytes", "10")],
            vec![],
            ErrorCode::InvalidConfig,
            "'segment.bytes': bytes between 1024 and 2147483647",
        ),
        bad(
            "deleting an unknown config",
            topic(),
            vec![],
            vec!["retention.hours"],
            ErrorCode::InvalidConfig,
            "unknown topic config 'retention.hours'",
        ),
        bad(
            "setting and deleting one config",
            topic(),
            vec![("retention.ms", "1")],
            vec!["retention.ms"],
            ErrorCode::InvalidConfig,
            "'retention.ms' is both set and deleted",
        ),
        bad(
            "a result that contradicts the topic's own settings",
            topic(),
            vec![("min.compaction.lag.ms", "120000")],
            vec![],
            ErrorCode::InvalidConfig,
            "min.compaction.lag.ms (120000) must not exceed max.compaction.lag.ms (60000)",
        ),
        bad(
            "an unknown topic",
            ConfigResource::Topic("nope".into()),
            vec![("retention.ms", "1")],
            vec![],
            ErrorCode::UnknownTopic,
            "unknown topic 'nope'",
        ),
        bad(
            "a bad cluster default",
            ConfigResource::Cluster,
            vec![("cleanup.policy", "compacted")],
            vec![],
            ErrorCode::InvalidConfig,
            "'cleanup.policy': 'delete', 'compact' or 'compact,delete'",
        ),
        bad(
            "a cluster default that contradicts a topic",
            ConfigResource::Cluster,
            vec![("min.compaction.lag.ms", "120000")],
            vec![],
            ErrorCode::InvalidConfig,
            "of topic 'orders'",
        ),
    ];
    for BadAlter {
        name,
        resource,
        set,
        delete,
        code,
        message,
    } in &cases
    {
        let refused = alter(&brokers, resource, set, delete)?
            .err()
            .with_context(|| format!("{name}: accepted"))?;
        assert_eq!(refused.code(), Some(*code), "{name}: {refused}");
        assert!(
            refused.to_string().contains(message),
            "{name}: {refused} lacks {message:?}"
        );
    }

    tracing::info!("phase: the CLI shows the same errors and exits non-zero");
    for (args, needle) in [
        (
            vec![
                "topic",
                "alter-config",
                "orders",
                "--set",
                "retention.hours=1",
            ],
            "INVALID_CONFIG: unknown topic config 'retention.hours'",
        ),
        (
            vec![
                "topic",
                "alter-config",
                "orders",
                "--set",
                "retention.ms=soon",
            ],
            "invalid value 'soon' for topic config 'retention.ms'",
        ),
        (
            vec!["topic", "alter-config", "nope", "--set", "retention.ms=1"],
            "UNKNOWN_TOPIC: unknown topic 'nope'",
        ),
        (
            vec!["cluster", "alter-config", "--set", "segment.bytes=1"],
            "'segment.bytes': bytes between 1024",
        ),
        (vec!["topic", "alter-config", "orders"], "--set"),
        (
            vec!["topic", "alter-config", "orders", "--set", "retention.ms"],
            "expected KEY=VALUE",
        ),
    ] {
        let out = run_cli(&brokers, &args, None)?;
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            stdout(&out)
        );
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }

    tracing::info!("phase: nothing changed: configs, sources and records are as before");
    let after = describe::topic(&brokers, "orders")?;
    assert_eq!(after.config_entries, before.config_entries);
    let p = describe::partition(&after, 0)?;
    assert_eq!((p.log_start_offset, p.log_end_offset), (0, 40), "{p:?}");
    let cluster = with_admin(&brokers, async |admin| {
        admin.describe_configs(&ConfigResource::Cluster).await
    })??;
    assert!(
        cluster.iter().all(|e| e.source() == ConfigSource::Default),
        "{cluster:?}"
    );
    let out = run_cli(
        &brokers,
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--timeout-ms",
            "1000",
        ],
        None,
    )?;
    assert_ok(&out);
    assert_eq!(stdout(&out).lines().count(), 40, "every record reads back");
    Ok(())
}

#[test]
fn config_changes_reach_every_replica_survive_restarts_and_fall_back_when_deleted()
-> anyhow::Result<()> {
    init_logging();
    let etc = tempfile::tempdir()?;
    let config = write_server_config(etc.path())?;
    let config = config.to_str().context("utf-8 path")?;
    // Snapshots every few entries, so the restarted nodes read config changes from a
    // snapshot as well as from the log.
    let mut cluster = Cluster::start(3, &["--config", config, "--metadata-snapshot-entries", "5"])?;
    let nodes = cluster.ids();
    cluster.wait_for_leader(APPLY_DEADLINE)?;

    tracing::info!("phase: two topics on every node, each config from the static default");
    cluster.create_topic(1, "events", 1, 3)?;
    cluster.create_topic(1, "plain", 1, 3)?;
    for topic in ["events", "plain"] {
        wait_everywhere(
            &cluster,
            &nodes,
            topic,
            "retention.ms",
            STATIC_RETENTION_MS,
            ConfigSource::Default,
        )?;
    }

    tracing::info!("phase: a cluster default reaches every topic without its own setting");
    let out = cluster.cli(
        2,
        &["cluster", "alter-config", "--set", "retention.ms=7200000"],
        None,
    )?;
    assert_ok(&out);
    for topic in ["events", "plain"] {
        wait_everywhere(
            &cluster,
            &nodes,
            topic,
            "retention.ms",
            "7200000",
            ConfigSource::Cluster,
        )?;
    }

    tracing::info!("phase: a topic setting overrides it on every node, for that topic only");
    let out = cluster.cli(
        3,
        &[
            "topic",
            "alter-config",
            "events",
            "--set",
            "retention.ms=600000",
            "--set",
            "segment.bytes=1024",
        ],
        None,
    )?;
    assert_ok(&out);
    wait_everywhere(
        &cluster,
        &nodes,
        "events",
        "retention.ms",
        "600000",
        ConfigSource::Topic,
    )?;
    wait_everywhere(
        &cluster,
        &nodes,
        "events",
        "segment.bytes",
        "1024",
        ConfigSource::Topic,
    )?;
    wait_everywhere(
        &cluster,
        &nodes,
        "plain",
        "retention.ms",
        "7200000",
        ConfigSource::Cluster,
    )?;

    tracing::info!("phase: every replica applies a retention change to its own log");
    produce_batches(&cluster.brokers_csv(), "events", 5)?;
    let out = cluster.cli(
        1,
        &["topic", "alter-config", "events", "--set", "retention.ms=1"],
        None,
    )?;
    assert_ok(&out);
    for &id in &nodes {
        // Each node describes the offsets of its own replica.
        let mut last = String::new();
        wait_until(
            &format!("node {id}'s replica to drop old segments"),
            APPLY_DEADLINE,
            || {
                let d = cluster.describe(id, "events").ok()?;
                let p = describe::partition(&d, 0).ok()?;
                last = format!("{p:?}");
                (p.log_start_offset > 0 && p.log_end_offset == 100).then_some(())
            },
        )
        .with_context(|| format!("last: {last}"))?;
    }

    tracing::info!("phase: every node restarts and keeps every setting and its source");
    for &id in &nodes {
        cluster.kill(id)?;
    }
    cluster.start_nodes(&nodes)?;
    cluster.wait_for_leader(APPLY_DEADLINE)?;
    wait_everywhere(
        &cluster,
        &nodes,
        "events",
        "retention.ms",
        "1",
        ConfigSource::Topic,
    )?;
    wait_everywhere(
        &cluster,
        &nodes,
        "events",
        "segment.bytes",
        "1024",
        ConfigSource::Topic,
    )?;
    wait_everywhere(
        &cluster,
        &nodes,
        "plain",
        "retention.ms",
        "7200000",
        ConfigSource::Cluster,
    )?;
    let out = cluster.cli(1, &["cluster", "describe-config", "--json"], None)?;
    assert_ok(&out);
    let described: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    assert_eq!(
        described["configs"]["retention.ms"],
        serde_json::json!({ "value": "7200000", "source": "cluster" })
    );

    tracing::info!("phase: deleting the topic's setting falls back to the cluster default");
    let out = cluster.cli(
        2,
        &[
            "topic",
            "alter-config",
            "events",
            "--delete",
            "retention.ms",
        ],
        None,
    )?;
    assert_ok(&out);
    wait_everywhere(
        &cluster,
        &nodes,
        "events",
        "retention.ms",
        "7200000",
        ConfigSource::Cluster,
    )?;

    tracing::info!("phase: deleting the cluster default falls back to the static default");
    let out = cluster.cli(
        3,
        &["cluster", "alter-config", "--delete", "retention.ms"],
        None,
    )?;
    assert_ok(&out);
    for topic in ["events", "plain"] {
        wait_everywhere(
            &cluster,
            &nodes,
            topic,
            "retention.ms",
            STATIC_RETENTION_MS,
            ConfigSource::Default,
        )?;
    }
    let out = cluster.cli(1, &["topic", "describe", "events"], None)?;
    assert_ok(&out);
    let table = stdout(&out);
    assert!(
        table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["segment.bytes", "1024", "topic"]),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["retention.ms", STATIC_RETENTION_MS, "default"]),
        "{table}"
    );
    Ok(())
}
