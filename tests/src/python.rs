//! The Python side of the cross-check tests: kafka-python, an implementation of Kafka's
//! RecordBatch v2 independent of Ferrolog's, builds and reads batches in
//! `tests/python/kafka_batches.py`.
//!
//! [`interpreter`] runs `scripts/python-env.sh`, which makes (once, under an flock, again when
//! `tests/python/requirements.txt` changes) a virtualenv under the cargo target directory
//! with the pinned packages, so the tests need nothing installed by hand beyond `python3`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, ensure};

/// How long making the virtualenv may take: a cold `pip install` of the pinned wheels.
const PYTHON_ENV_DEADLINE: Duration = Duration::from_secs(600);
/// How long one run of `kafka_batches.py` may take (building the 100 MiB bombs included).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

/// The repository's root: the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in a directory of the repository")
        .to_path_buf()
}

/// The virtualenv's interpreter, made by `scripts/python-env.sh` on the first call of this
/// process (the script itself is quick when the venv is current).
pub fn interpreter() -> anyhow::Result<PathBuf> {
    static INTERPRETER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INTERPRETER
        .get_or_init(|| make_env().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn make_env() -> anyhow::Result<PathBuf> {
    let script = repo_root().join("scripts/python-env.sh");
    let mut command = Command::new("bash");
    command.arg(&script);
    let out = crate::run_bounded(&mut command, PYTHON_ENV_DEADLINE, "scripts/python-env.sh")?;
    ensure!(
        out.status.success(),
        "scripts/python-env.sh failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .context("scripts/python-env.sh printed no interpreter path")?;
    ensure!(path.is_file(), "{} is not a file", path.display());
    Ok(path)
}

/// Runs `kafka_batches.py ARGS` with the venv's interpreter and parses the JSON it prints.
pub fn kafka_batches(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut command = Command::new(interpreter()?);
    command
        .arg(repo_root().join("tests/python/kafka_batches.py"))
        .args(args);
    let what = format!("kafka_batches.py {}", args.join(" "));
    let out = crate::run_bounded(&mut command, SCRIPT_DEADLINE, &what)?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON"))
}

/// Bytes from the lowercase or uppercase hex the script prints.
pub fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(
        text.len().is_multiple_of(2),
        "hex of odd length {}",
        text.len()
    );
    text.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .with_context(|| format!("bad hex at {}: {pair:?}", 2 * i))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_both_cases_and_refuses_odd_lengths_and_non_hex() {
        assert_eq!(unhex("00ffA0").expect("valid hex"), vec![0, 255, 160]);
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
        assert!(unhex("é0").is_err());
    }
}
