//! End-to-end tests of the `ferrolog` CLI against a real single-node server: the five-minute
//! tour of the README, and every kind of bad input a user can type, each of which must get
//! a clear error, a non-zero exit, and lose nothing.

use std::process::Output;

use ferrolog_tests::{Server, assert_ok, init_logging, run_cli, stderr, stdout};

#[track_caller]
fn assert_fails_with(o: &Output, needles: &[&str]) {
    assert!(
        !o.status.success(),
        "expected failure\nstdout: {}",
        stdout(o)
    );
    let err = stderr(o);
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
}

#[test]
fn the_readme_tour_works_end_to_end() -> anyhow::Result<()> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;

    tracing::info!("a topic is created and then listed and described");
    assert_ok(&server.cli(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
        None,
    )?);
    let list = server.cli(&["topic", "list"], None)?;
    assert_ok(&list);
    assert_eq!(stdout(&list).lines().collect::<Vec<_>>(), vec!["orders"]);

    tracing::info!("records produced from standard input are acknowledged");
    let produced = server.cli(
        &["produce", "orders", "--partition", "1"],
        Some("first\nsecond\nthird\n"),
    )?;
    assert_ok(&produced);
    let keyed = server.cli(
        &["produce", "orders", "--key-separator", ":"],
        Some("k1:v1\nk2:v2\n"),
    )?;
    assert_ok(&keyed);

    tracing::info!("describe --json shows the partition layout and the offsets");
    let describe = server.cli(&["topic", "describe", "orders", "--json"], None)?;
    assert_ok(&describe);
    let json: serde_json::Value = serde_json::from_str(&stdout(&describe))?;
    let partitions = json["partitions"].as_array().expect("partitions array");
    assert_eq!(partitions.len(), 3);
    assert_eq!(partitions[1]["partition"], 1);
    assert_eq!(partitions[1]["leader"], 1);
    assert_eq!(partitions[1]["replicas"], serde_json::json!([1]));
    assert_eq!(partitions[1]["isr"], serde_json::json!([1]));
    let end_offsets: i64 = partitions
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(end_offsets, 5);
    assert_eq!(json["configs"]["retention.ms"], "3600000");

    tracing::info!("consume reads back exactly what was produced, in order, and exits");
    let consumed = server.cli(
        &[
            "consume",
            "orders",
            "--partition",
            "1",
            "--from-beginning",
            "--max-messages",
            "3",
            "--timeout-ms",
            "10000",
        ],
        None,
    )?;
    assert_ok(&consumed);
    assert_eq!(stdout(&consumed), "first\nsecond\nthird\n");

    let from_offset = server.cli(
        &[
            "consume",
            "orders",
            "--partition",
            "1",
            "--offset",
            "1",
            "--timeout-ms",
            "1000",
            "--format",
            "{offset}:{value}",
        ],
        None,
    )?;
    assert_ok(&from_offset);
    assert_eq!(stdout(&from_offset), "1:second\n2:third\n");

    let all = server.cli(
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--timeout-ms",
            "1000",
            "--format",
            "json",
        ],
        None,
    )?;
    assert_ok(&all);
    let lines: Vec<serde_json::Value> = stdout(&all)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().any(|r| r["key"] == "k2" && r["value"] == "v2"));

    tracing::info!("a deleted topic is gone");
    assert_ok(&server.cli(&["topic", "delete", "orders"], None)?);
    assert_eq!(stdout(&server.cli(&["topic", "list"], None)?), "");
    Ok(())
}

#[test]
fn bad_input_gets_a_clear_error_and_loses_nothing() -> anyhow::Result<()> {
    init_logging();
    tracing::info!("phase: a single-node server with one good record in topic t");
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    assert_ok(&server.cli(
        &[
            "topic",
            "create",
            "t",
            "--partitions",
            "2",
            "--config",
            "max.message.bytes=1024",
        ],
        None,
    )?);
    assert_ok(&server.cli(&["produce", "t", "--partition", "0"], Some("kept\n"))?);

    tracing::info!("phase: invalid topic names follow Kafka's rules");
    let long = "x".repeat(250);
    for name in ["bad name", "..", ".", "slash/es", long.as_str()] {
        let out = server.cli(&["topic", "create", name, "--partitions", "1"], None)?;
        assert_fails_with(&out, &["invalid topic name"]);
    }
    tracing::info!(
        "phase: duplicate topics, bad partition counts and malformed configs are refused"
    );
    assert_fails_with(
        &server.cli(&["topic", "create", "t", "--partitions", "1"], None)?,
        &["'t' already exists"],
    );
    assert_fails_with(
        &server.cli(&["topic", "create", "z", "--partitions", "0"], None)?,
        &["invalid partition count 0"],
    );
    assert_fails_with(
        &server.cli(&["topic", "create", "z", "--partitions", "-3"], None)?,
        &["invalid partition count -3"],
    );
    assert_fails_with(
        &server.cli(
            &[
                "topic",
                "create",
                "z",
                "--partitions",
                "1",
                "--config",
                "retention.ms=soon",
            ],
            None,
        )?,
        &["retention.ms", "soon"],
    );
    assert_fails_with(
        &server.cli(
            &[
                "topic",
                "create",
                "z",
                "--partitions",
                "1",
                "--config",
                "no.such.config=1",
            ],
            None,
        )?,
        &["unknown topic config 'no.such.config'"],
    );
    assert_fails_with(
        &server.cli(
            &[
                "topic",
                "create",
                "z",
                "--partitions",
                "1",
                "--replication-factor",
                "3",
            ],
            None,
        )?,
        &["replication factor 3"],
    );

    tracing::info!("phase: unknown topics and partitions are named in the error");
    assert_fails_with(&server.cli(&["produce", "nope"], Some("x\n"))?, &["nope"]);
    assert_fails_with(
        &server.cli(&["consume", "nope", "--timeout-ms", "500"], None)?,
        &["unknown topic 'nope'"],
    );
    assert_fails_with(
        &server.cli(&["topic", "describe", "nope"], None)?,
        &["unknown topic 'nope'"],
    );
    assert_fails_with(
        &server.cli(&["topic", "delete", "nope"], None)?,
        &["unknown topic 'nope'"],
    );
    assert_fails_with(
        &server.cli(&["produce", "t", "--partition", "7"], Some("x\n"))?,
        &["partition 7"],
    );
    assert_fails_with(
        &server.cli(
            &["consume", "t", "--partition", "7", "--timeout-ms", "500"],
            None,
        )?,
        &["partition 7"],
    );

    tracing::info!("phase: a record over max.message.bytes is refused");
    let big = format!("{}\n", "y".repeat(4096));
    assert_fails_with(
        &server.cli(&["produce", "t", "--partition", "0"], Some(&big))?,
        &["exceeds the maximum of 1024 bytes"],
    );

    tracing::info!("phase: an offset out of range names the valid range");
    assert_fails_with(
        &server.cli(
            &[
                "consume",
                "t",
                "--partition",
                "0",
                "--offset",
                "1000",
                "--timeout-ms",
                "500",
            ],
            None,
        )?,
        &["offset 1000 is out of range", "0..1"],
    );

    tracing::info!("phase: a port that is not a Ferrolog server gives a clear error");
    let not_ferrolog = run_cli(&server.http_address, &["topic", "list"], None)?;
    assert_fails_with(&not_ferrolog, &["could not reach a Ferrolog server at"]);
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")?;
    let closed_port = nothing.local_addr()?.to_string();
    drop(nothing);
    assert_fails_with(
        &run_cli(&closed_port, &["topic", "list"], None)?,
        &["could not reach a Ferrolog server at"],
    );

    tracing::info!(
        "phase: after all of that the one good record is still there and the server is up"
    );
    let consumed = server.cli(
        &[
            "consume",
            "t",
            "--partition",
            "0",
            "--from-beginning",
            "--timeout-ms",
            "1000",
        ],
        None,
    )?;
    assert_ok(&consumed);
    assert_eq!(stdout(&consumed), "kept\n");
    Ok(())
}

/// The CLI's `--json` outputs say what the admin API says, field by field: scripts parse
/// them, while the whole-cluster tests read the same facts through the typed describe
/// (`ferrolog_tests::describe`), so this is where the JSON itself is checked.
#[test]
fn topic_describe_and_cluster_status_json_match_the_admin_api() -> anyhow::Result<()> {
    use serde_json::json;

    init_logging();
    tracing::info!("phase: a single-node server with a two-partition topic holding records");
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    assert_ok(&server.cli(
        &[
            "topic",
            "create",
            "layout",
            "--partitions",
            "2",
            "--config",
            "retention.ms=3600000",
        ],
        None,
    )?);
    assert_ok(&server.cli(
        &["produce", "layout", "--partition", "1"],
        Some("first\nsecond\n"),
    )?);

    tracing::info!("phase: `topic describe --json` is the DescribeTopic answer");
    let out = server.cli(&["topic", "describe", "layout", "--json"], None)?;
    assert_ok(&out);
    let printed: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    let topic = ferrolog_tests::describe::topic(&server.grpc_address, "layout")?;
    let partitions: Vec<serde_json::Value> = topic
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "replicas": p.replicas,
                "isr": p.isr,
                "log_start_offset": p.log_start_offset,
                "log_end_offset": p.log_end_offset,
                "high_watermark": p.high_watermark,
                "size_bytes": p.size_bytes,
                "adding_replicas": p.adding_replicas,
                "removing_replicas": p.removing_replicas,
            })
        })
        .collect();
    let configs: std::collections::BTreeMap<_, _> = topic.configs.iter().collect();
    let expected = json!({ "name": topic.name, "partitions": partitions, "configs": configs });
    assert_eq!(printed, expected);
    assert_eq!(printed["partitions"][1]["log_end_offset"], 2, "{printed}");
    assert_eq!(printed["configs"]["retention.ms"], "3600000", "{printed}");

    tracing::info!("phase: `cluster status --json` is the ClusterStatus answer");
    let out = server.cli(&["cluster", "status", "--json"], None)?;
    assert_ok(&out);
    let printed: serde_json::Value = serde_json::from_str(&stdout(&out))?;
    let status = ferrolog_tests::describe::cluster_status(&server.grpc_address)?;
    assert_eq!(printed["cluster_id"], json!(status.cluster_id));
    assert_eq!(
        printed["controller_leader"],
        json!(status.controller_leader)
    );
    assert_eq!(printed["term"], json!(status.term));
    // The indexes may move between the two answers; their presence and type are the format.
    for index in [
        "commit_index",
        "applied_index",
        "snapshot_index",
        "purged_index",
    ] {
        assert!(printed[index].is_u64(), "{index} in {printed}");
    }
    let controllers: Vec<serde_json::Value> = printed["controllers"]
        .as_array()
        .expect("a controllers array")
        .iter()
        .map(|c| json!([c["node_id"], c["address"], c["voter"], c["leader"]]))
        .collect();
    let expected: Vec<serde_json::Value> = status
        .controllers
        .iter()
        .map(|c| {
            json!([
                c.node_id,
                c.address,
                c.voter,
                c.node_id == status.controller_leader
            ])
        })
        .collect();
    assert_eq!(controllers, expected, "{printed}");
    let brokers: Vec<serde_json::Value> = status
        .brokers
        .iter()
        .map(|b| json!({ "broker_id": b.broker_id, "address": b.address, "state": b.state }))
        .collect();
    assert_eq!(printed["brokers"], json!(brokers));
    assert_eq!(printed["offline_partitions"], json!([]));
    Ok(())
}
