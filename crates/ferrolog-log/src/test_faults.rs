//! A TEST-ONLY hook that injects disk faults, for the whole-cluster disk-fault tests
//! (`tests/tests/disk_faults.rs`).
//!
//! Why it exists: a real fsync failure or a read EIO cannot be provoked on demand on a
//! healthy disk, yet what the broker does after one (stop acknowledging, step down, report
//! rather than serve) is exactly what must be proven on real processes. The hook is always
//! compiled in, so the tests exercise the very binary that ships, but it is inert unless the
//! environment variable [`TEST_FAULTS_ENV`] is set when the process starts: then, and only
//! then, every segment fsync and segment read first looks at the fault file that variable
//! names. Production never sets it; with it unset the cost is one atomic load per check.
//!
//! The fault file is read at every check (a test rewrites it while the server runs). Each
//! line is one rule, `KIND SUBSTRING`, applying to segment files whose path contains
//! SUBSTRING; `#` starts a comment:
//!
//! - `fsync-once SUBSTRING`: the next fsync of a matching file fails with EIO, and later
//!   ones succeed. This is what Linux does after writeback failed (the fsyncgate lesson):
//!   the error is reported once, the dirty pages may already be gone, and a retried fsync
//!   "succeeds" without the data ever reaching the disk. A log that retried and then
//!   acknowledged would pass this hook's second call: the test would catch it.
//! - `read SUBSTRING`: every read of a matching segment file fails with EIO while the line
//!   is present.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Names the fault file; unset (the only production setting) makes the hook inert.
pub const TEST_FAULTS_ENV: &str = "FERROLOG_TEST_FAULTS";

/// Linux's EIO, the error a failing disk gives both fsync and read.
const EIO: i32 = 5;

/// What an injected fault fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    FsyncOnce,
    Read,
}

/// One rule of the fault file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    kind: Kind,
    substring: String,
}

/// Parses the fault file; lines it does not understand are ignored, so a half-written file
/// injects nothing rather than something unintended.
fn parse(text: &str) -> Vec<Rule> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let (kind, substring) = line.split_once(char::is_whitespace)?;
            let kind = match kind {
                "fsync-once" => Kind::FsyncOnce,
                "read" => Kind::Read,
                _ => return None,
            };
            let substring = substring.trim();
            (!substring.is_empty()).then(|| Rule {
                kind,
                substring: substring.to_owned(),
            })
        })
        .collect()
}

/// The fault file, if the hook is armed; read from the environment once per process.
fn fault_file() -> Option<&'static Path> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| {
        let file = std::env::var_os(TEST_FAULTS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(file) = &file {
            tracing::warn!(fault_file = %file.display(),
                "TEST HOOK ARMED: disk faults may be injected ({TEST_FAULTS_ENV} is set)");
        }
        file
    })
    .as_deref()
}

/// `fsync-once` rules that already fired in this process: each fails one fsync only.
fn spent() -> &'static Mutex<HashSet<String>> {
    static SPENT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SPENT.get_or_init(Mutex::default)
}

/// Whether an fsync of `path` fails under `rules`, spending the rule that makes it fail.
fn fsync_fails(rules: &[Rule], path: &str, spent: &mut HashSet<String>) -> bool {
    rules
        .iter()
        .filter(|r| r.kind == Kind::FsyncOnce && path.contains(&r.substring))
        .any(|r| spent.insert(r.substring.clone()))
}

/// Whether a read of `path` fails under `rules`.
fn read_fails(rules: &[Rule], path: &str) -> bool {
    rules
        .iter()
        .any(|r| r.kind == Kind::Read && path.contains(&r.substring))
}

/// The rules in force, or none when the hook is not armed or the file is absent.
fn current_rules() -> Option<Vec<Rule>> {
    let file = fault_file()?;
    let text = std::fs::read_to_string(file).ok()?;
    Some(parse(&text))
}

fn injected(what: &str, path: &Path) -> io::Error {
    tracing::error!(file = %path.display(), "TEST HOOK: injecting EIO into {what}");
    io::Error::from_raw_os_error(EIO)
}

/// Called before every segment fsync: an injected EIO, or `Ok` (always, unless armed).
pub(crate) fn before_fsync(path: &Path) -> io::Result<()> {
    let Some(rules) = current_rules() else {
        return Ok(());
    };
    let mut spent = spent().lock().unwrap_or_else(|p| p.into_inner());
    if fsync_fails(&rules, &path.to_string_lossy(), &mut spent) {
        return Err(injected("fsync", path));
    }
    Ok(())
}

/// Called before every segment read: an injected EIO, or `Ok` (always, unless armed).
pub(crate) fn before_read(path: &Path) -> io::Result<()> {
    match current_rules() {
        Some(rules) if read_fails(&rules, &path.to_string_lossy()) => Err(injected("read", path)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_unknown_lines_are_ignored() {
        let rules = parse(
            "# a comment\nfsync-once node-1/events-0 # trailing\nread  victim-0\n\
             fsync-all x\nread\n\n",
        );
        assert_eq!(
            rules,
            vec![
                Rule {
                    kind: Kind::FsyncOnce,
                    substring: "node-1/events-0".to_owned()
                },
                Rule {
                    kind: Kind::Read,
                    substring: "victim-0".to_owned()
                },
            ]
        );
    }

    #[test]
    fn an_fsync_rule_fails_one_fsync_then_lets_the_next_succeed() {
        let rules = parse("fsync-once events-0");
        let mut spent = HashSet::new();
        assert!(!fsync_fails(&rules, "/d/other-0/0.log", &mut spent));
        assert!(fsync_fails(&rules, "/d/events-0/0.log", &mut spent));
        // The retry "succeeds", as after a real writeback error: the data may be gone.
        assert!(!fsync_fails(&rules, "/d/events-0/0.log", &mut spent));
    }

    #[test]
    fn a_read_rule_fails_every_matching_read() {
        let rules = parse("read events-0");
        assert!(read_fails(&rules, "/d/events-0/0.log"));
        assert!(read_fails(&rules, "/d/events-0/0.log"));
        assert!(!read_fails(&rules, "/d/events-1/0.log"));
        assert!(!read_fails(
            &parse("fsync-once events-0"),
            "/d/events-0/0.log"
        ));
    }

    #[test]
    fn the_hook_is_inert_without_its_environment_variable() {
        // The unit tests never set the variable: every check passes.
        if std::env::var_os(TEST_FAULTS_ENV).is_none() {
            assert!(before_fsync(Path::new("/any/path.log")).is_ok());
            assert!(before_read(Path::new("/any/path.log")).is_ok());
        }
    }
}
