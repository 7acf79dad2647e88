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

/// Runs README.md's tour as written (its code blocks marked `sh tour`, read from the file)
/// against a real server, and checks that what each command printed is what the tour did.
#[test]
fn the_readme_tour_works_end_to_end() -> anyhow::Result<()> {
    use ferrolog_tests::readme::{self, TourRun};
    use serde_json::{Value, json};

    init_logging();
    let data = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let server = Server::start(data.path())?;

    tracing::info!("every command of README.md's tour succeeds against a real server");
    let tour = readme::read_tour()?;
    let ran = readme::run_tour(
        &tour,
        &server.grpc_address,
        &server.http_address,
        work.path(),
        ferrolog_tests::CLI_DEADLINE,
    )?;
    let flag = |run: &TourRun, name: &str| -> anyhow::Result<String> {
        run.command
            .flag(name)
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("README.md line {}: no {name}", run.command.line))
    };

    tracing::info!("a topic is created and then listed and described");
    let create = readme::find(&ran, &["topic", "create"], |_| true)?;
    let topic = create.command.args.get(2).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "README.md line {}: `topic create` names no topic",
            create.command.line
        )
    })?;
    let partitions: usize = flag(create, "--partitions")?.parse()?;
    let configs: Vec<(&str, &str)> = create
        .command
        .flags("--config")
        .into_iter()
        .filter_map(|c| c.split_once('='))
        .collect();
    let list = readme::find(&ran, &["topic", "list"], |_| true)?;
    assert_eq!(
        stdout(&list.output).lines().collect::<Vec<_>>(),
        vec![topic.as_str()]
    );

    tracing::info!("records produced from standard input are acknowledged");
    let mut produced: Vec<(Option<String>, String, Option<u64>)> = Vec::new();
    for run in ran
        .iter()
        .filter(|r| r.command.starts_with(&["produce", &topic]))
    {
        let records = readme::records_fed(&run.command);
        let acknowledged = format!("produced {} record(s) to {topic}", records.len());
        assert!(
            stderr(&run.output).contains(&acknowledged),
            "README.md line {}: stderr lacks {acknowledged:?}:\n{}",
            run.command.line,
            stderr(&run.output)
        );
        let partition = run
            .command
            .flag("--partition")
            .map(str::parse)
            .transpose()?;
        produced.extend(records.into_iter().map(|(k, v)| (k, v, partition)));
    }
    assert!(
        !produced.is_empty(),
        "the tour produces no records to {topic}"
    );

    tracing::info!("describe --json shows the partition layout and the offsets");
    let describe = readme::find(&ran, &["topic", "describe", &topic], |c| {
        c.has_flag("--json")
    })?;
    let json: Value = serde_json::from_str(&stdout(&describe.output))?;
    let layout = json["partitions"].as_array().expect("partitions array");
    assert_eq!(layout.len(), partitions);
    for (index, partition) in layout.iter().enumerate() {
        assert_eq!(partition["partition"], json!(index));
        assert_eq!(partition["leader"], 1);
        assert_eq!(partition["replicas"], json!([1]));
        assert_eq!(partition["isr"], json!([1]));
    }
    let end_offsets: i64 = layout
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(end_offsets, produced.len() as i64);
    for (name, value) in &configs {
        assert_eq!(json["configs"][name], *value, "config {name}");
    }

    tracing::info!("consume reads back exactly what was produced, where the tour put it");
    let as_json = readme::find(&ran, &["consume", &topic], |c| {
        c.flag("--format") == Some("json")
    })?;
    let records: Vec<Value> = stdout(&as_json.output)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let key_value = |r: &Value| {
        (
            r["key"].as_str().map(str::to_owned),
            r["value"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let mut read: Vec<_> = records.iter().map(key_value).collect();
    let mut sent: Vec<_> = produced
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    read.sort();
    sent.sort();
    assert_eq!(
        read, sent,
        "consume --format json reads back what was produced"
    );
    for (key, value, partition) in &produced {
        let record = records
            .iter()
            .find(|r| key_value(r) == (key.clone(), value.clone()))
            .expect("every produced record was read");
        let expected = match (partition, key) {
            (Some(p), _) => Some(*p),
            (None, Some(k)) => Some(u64::from(ferrolog_client::partition_for_key(
                k.as_bytes(),
                partitions as u32,
            ))),
            (None, None) => None,
        };
        if let Some(expected) = expected {
            assert_eq!(
                record["partition"], expected,
                "{key:?}:{value} lands on its partition"
            );
        }
    }
    for partition in 0..partitions {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|r| r["partition"] == json!(partition))
            .filter_map(|r| r["offset"].as_i64())
            .collect();
        let count = offsets.len() as i64;
        assert_eq!(
            offsets,
            (0..count).collect::<Vec<_>>(),
            "partition {partition} in order"
        );
    }

    let plain = readme::find(&ran, &["consume", &topic], |c| !c.has_flag("--format"))?;
    let mut values: Vec<String> = stdout(&plain.output).lines().map(str::to_owned).collect();
    let mut sent_values: Vec<String> = produced.iter().map(|(_, v, _)| v.clone()).collect();
    values.sort();
    sent_values.sort();
    assert_eq!(values, sent_values, "consume prints one value per line");

    let templated = readme::find(&ran, &["consume", &topic], |c| {
        c.has_flag("--offset") && c.flag("--format").is_some_and(|f| f.contains('{'))
    })?;
    let template = flag(templated, "--format")?;
    let (partition, offset): (i64, i64) = (
        flag(templated, "--partition")?.parse()?,
        flag(templated, "--offset")?.parse()?,
    );
    let limit: usize = templated
        .command
        .flag("--max-messages")
        .map_or(Ok(usize::MAX), str::parse)?;
    let expected: String = records
        .iter()
        .filter(|r| r["partition"] == json!(partition))
        .filter(|r| r["offset"].as_i64().is_some_and(|o| o >= offset))
        .take(limit)
        .map(|r| {
            let (key, value) = key_value(r);
            template
                .replace("{topic}", &topic)
                .replace("{partition}", &partition.to_string())
                .replace("{offset}", &r["offset"].to_string())
                .replace("{key}", &key.unwrap_or_default())
                .replace("{value}", &value)
                + "\n"
        })
        .collect();
    assert!(!expected.is_empty(), "the templated consume reads a record");
    assert_eq!(stdout(&templated.output), expected);

    tracing::info!("the benchmarks report what they measured");
    let bench = readme::find(&ran, &["bench", "produce"], |_| true)?;
    let records_benched = flag(bench, "--records")?;
    let bench_topic = flag(bench, "--topic")?;
    assert!(
        stdout(&bench.output).contains(&format!("produce: {records_benched} records")),
        "{}",
        stdout(&bench.output)
    );
    let bench_consume = readme::find(&ran, &["bench", "consume"], |c| {
        c.flag("--topic") == Some(bench_topic.as_str())
    })?;
    assert!(
        stdout(&bench_consume.output).contains(&format!("consume: {records_benched} records")),
        "{}",
        stdout(&bench_consume.output)
    );
    let fsync = readme::find(&ran, &["bench", "fsync"], |_| true)?;
    assert!(
        stdout(&fsync.output).contains("writers: 1 "),
        "{}",
        stdout(&fsync.output)
    );

    tracing::info!("a deleted topic is gone");
    readme::find(&ran, &["topic", "delete", &topic], |_| true)?;
    let after = server.cli(&["topic", "list"], None)?;
    assert_ok(&after);
    assert!(
        !stdout(&after).lines().any(|t| t == topic),
        "{}",
        stdout(&after)
    );
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
    let sources: std::collections::BTreeMap<_, _> = topic
        .config_entries
        .iter()
        .map(|e| {
            let source = e.source().as_str_name();
            let source = source.strip_prefix("CONFIG_SOURCE_").unwrap_or(source);
            (e.name.as_str(), source.to_ascii_lowercase())
        })
        .collect();
    let expected = json!({
        "name": topic.name,
        "partitions": partitions,
        "configs": configs,
        "config_sources": sources,
    });
    assert_eq!(printed, expected);
    assert_eq!(
        printed["config_sources"]["retention.ms"], "topic",
        "{printed}"
    );
    assert_eq!(
        printed["config_sources"]["segment.ms"], "default",
        "{printed}"
    );
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
