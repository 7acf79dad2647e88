//! The README's tour as the tests read it: the `ferrolog` commands of README.md's code blocks
//! whose info string is `sh tour`, each with the standard input a `printf` or `echo` pipes
//! into it.
//!
//! `tests/tests/cli.rs` runs these commands as written, so the tour cannot drift from what
//! the binary does. A tour line is blank, a `#` comment, or
//! `[printf 'FORMAT' | echo 'TEXT' |] ferrolog ARGS... [# comment]`, with words quoted as a
//! POSIX shell quotes them and `\` at the end of a line continuing it. Anything else
//! (redirections, variables, `&&`, a command other than `ferrolog`) is an error naming the
//! line, so no line of the tour is ever skipped silently.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::ferrolog_bin;

/// The info string that marks a README code block as part of the tour.
pub const TOUR_INFO_STRING: &str = "sh tour";

/// The client address the tour's commands assume: `ferrolog server`'s default `--listen`,
/// and the client's default `--brokers`.
pub const DEFAULT_CLIENT_ADDRESS: &str = "127.0.0.1:9290";

/// The HTTP address the tour's commands assume: `ferrolog server`'s default
/// `--http-listen`.
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:9280";

/// Path of the repository's README.md.
pub fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("README.md")
}

/// One command of the tour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TourCommand {
    /// The README line the command starts on (1-based).
    pub line: usize,
    /// The command as the README writes it, continuation lines joined.
    pub text: String,
    /// The arguments after `ferrolog`.
    pub args: Vec<String>,
    /// What the command reads from standard input, when a `printf` or `echo` feeds it.
    pub stdin: Option<String>,
}

impl TourCommand {
    /// Whether the arguments begin with `words` (e.g. `["topic", "create"]`).
    pub fn starts_with(&self, words: &[&str]) -> bool {
        self.args.len() >= words.len() && self.args.iter().zip(words).all(|(a, w)| a == w)
    }

    /// Whether `--name` is among the arguments.
    pub fn has_flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }

    /// The value after the first `--name` (or of `--name=value`).
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags(name).into_iter().next()
    }

    /// The values of every `--name` (or `--name=value`), in order.
    pub fn flags(&self, name: &str) -> Vec<&str> {
        let mut values = Vec::new();
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            if arg == name {
                if let Some(value) = args.next() {
                    values.push(value.as_str());
                }
            } else if let Some(value) = arg
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
            {
                values.push(value);
            }
        }
        values
    }

    /// The command with the tour's default addresses replaced by a test server's, wherever
    /// an argument names them.
    pub fn with_addresses(&self, client_address: &str, http_address: &str) -> Self {
        let args = self
            .args
            .iter()
            .map(|a| {
                a.replace(DEFAULT_CLIENT_ADDRESS, client_address)
                    .replace(DEFAULT_HTTP_ADDRESS, http_address)
            })
            .collect();
        Self {
            args,
            ..self.clone()
        }
    }

    /// Runs the command as a user following the tour would: in `dir` (where relative paths
    /// such as `--dir ./data` land), with `FERROLOG_BROKERS` set to `brokers` (the tour
    /// relies on the default), and its standard input fed. It is SIGKILLed and an error
    /// returned when it runs longer than `limit`.
    pub fn run(&self, brokers: &str, dir: &Path, limit: Duration) -> anyhow::Result<Output> {
        let mut child = Command::new(ferrolog_bin())
            .args(&self.args)
            .current_dir(dir)
            .env("FERROLOG_BROKERS", brokers)
            .env("RUST_LOG", "warn")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn `{}`", self.text))?;
        if let Some(input) = &self.stdin {
            let mut pipe = child.stdin.take().context("the command's stdin")?;
            let input = input.clone();
            std::thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        crate::wait_bounded(
            child,
            limit,
            &format!("README.md line {}: `{}`", self.line, self.text),
        )
    }
}

/// A tour command that ran, and what it printed.
#[derive(Debug)]
pub struct TourRun {
    pub command: TourCommand,
    pub output: Output,
}

/// Runs `commands` in order against the server at `client_address` (whose HTTP port is
/// `http_address`), each in `dir` and bounded by `limit`, and fails at the first that does
/// not succeed, naming its README line and showing what it printed.
pub fn run_tour(
    commands: &[TourCommand],
    client_address: &str,
    http_address: &str,
    dir: &Path,
    limit: Duration,
) -> anyhow::Result<Vec<TourRun>> {
    let mut runs = Vec::with_capacity(commands.len());
    for command in commands {
        let command = command.with_addresses(client_address, http_address);
        tracing::info!(line = command.line, "README.md: {}", command.text);
        let output = command.run(client_address, dir, limit)?;
        ensure!(
            output.status.success(),
            "README.md line {}: `{}` failed ({})\nstdout: {}\nstderr: {}",
            command.line,
            command.text,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        runs.push(TourRun { command, output });
    }
    Ok(runs)
}

/// The first run whose arguments begin with `words` and that `also` accepts. Fails, saying
/// which output check needs it, when the tour has no such command.
pub fn find<'a>(
    runs: &'a [TourRun],
    words: &[&str],
    also: impl Fn(&TourCommand) -> bool,
) -> anyhow::Result<&'a TourRun> {
    runs.iter()
        .find(|r| r.command.starts_with(words) && also(&r.command))
        .with_context(|| {
            format!(
                "README.md's tour runs no `ferrolog {} ...` of the kind the tour test checks the \
                 output of; update the test with the tour",
                words.join(" ")
            )
        })
}

/// The records a `ferrolog produce` command of the tour sends: one per line of its
/// standard input, as (key, value): the key is `--key`, or the part of the line before
/// `--key-separator`.
pub fn records_fed(command: &TourCommand) -> Vec<(Option<String>, String)> {
    let key = command.flag("--key");
    let separator = command.flag("--key-separator");
    command
        .stdin
        .as_deref()
        .unwrap_or_default()
        .lines()
        .map(|line| match separator.and_then(|s| line.split_once(s)) {
            Some((key, value)) => (Some(key.to_owned()), value.to_owned()),
            None => (key.map(str::to_owned), line.to_owned()),
        })
        .collect()
}

/// Reads README.md and returns its tour's commands, in order. Fails when the README has no
/// tour block, or a tour line is not a command the test can run.
pub fn read_tour() -> anyhow::Result<Vec<TourCommand>> {
    let path = readme_path();
    let markdown =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let commands = tour_commands(&markdown)?;
    ensure!(
        !commands.is_empty(),
        "{} has no code block marked ```{TOUR_INFO_STRING} with a command in it",
        path.display()
    );
    Ok(commands)
}

/// The commands of every code block of `markdown` whose info string is
/// [`TOUR_INFO_STRING`], in order.
pub fn tour_commands(markdown: &str) -> anyhow::Result<Vec<TourCommand>> {
    let mut commands = Vec::new();
    // The open fence (its backtick count) and whether it is a tour block.
    let mut open: Option<(usize, bool)> = None;
    // A command continued with a trailing backslash: its first line and its text so far.
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in markdown.lines().enumerate() {
        let line_number = index + 1;
        let trimmed = raw.trim_start();
        let fence = trimmed.chars().take_while(|c| *c == '`').count();
        match open {
            None if fence >= 3 => {
                let info = trimmed[fence..].trim();
                open = Some((fence, info == TOUR_INFO_STRING));
            }
            None => {}
            Some((opened, _)) if fence >= opened && trimmed[fence..].trim().is_empty() => {
                if let Some((line, text)) = pending.take() {
                    bail!("README.md line {line}: `{text}` continues past the end of its block");
                }
                open = None;
            }
            Some((_, false)) => {}
            Some((_, true)) => {
                let (line, mut text) = pending
                    .take()
                    .unwrap_or_else(|| (line_number, String::new()));
                if let Some(continued) = raw.strip_suffix('\\') {
                    text.push_str(continued);
                    pending = Some((line, text));
                    continue;
                }
                text.push_str(raw);
                if let Some(command) = parse_command(line, &text)? {
                    commands.push(command);
                }
            }
        }
    }
    ensure!(open.is_none(), "README.md ends inside a code block");
    Ok(commands)
}

/// A shell word, or the pipe between two commands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Pipe,
}

/// Parses one tour line: `None` for a blank or comment line.
fn parse_command(line: usize, text: &str) -> anyhow::Result<Option<TourCommand>> {
    let context = || format!("README.md line {line}: `{}`", text.trim());
    let tokens = split_words(text).with_context(context)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut stages = tokens.split(|t| *t == Token::Pipe);
    let first: Vec<&str> = words(stages.next().unwrap_or_default()).with_context(context)?;
    let second = stages.next();
    ensure!(
        stages.next().is_none(),
        "{}: at most one `|` is supported",
        context()
    );
    let (stdin, command) = match second {
        None => (None, first),
        Some(command) => {
            let command = words(command).with_context(context)?;
            let input = match first.as_slice() {
                ["printf", format] => printf(format).with_context(context)?,
                ["echo", rest @ ..] if !rest.is_empty() && !rest[0].starts_with('-') => {
                    format!("{}\n", rest.join(" "))
                }
                _ => bail!(
                    "{}: only `printf 'FORMAT'` or `echo TEXT` may feed a command",
                    context()
                ),
            };
            (Some(input), command)
        }
    };
    match command.split_first() {
        Some((&"ferrolog", args)) if !args.is_empty() => Ok(Some(TourCommand {
            line,
            text: text.trim().to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            stdin,
        })),
        _ => bail!(
            "{}: a tour command runs `ferrolog` (the test runs nothing else)",
            context()
        ),
    }
}

/// The words of a pipeline stage, which must not be empty.
fn words(tokens: &[Token]) -> anyhow::Result<Vec<&str>> {
    ensure!(!tokens.is_empty(), "an empty command around `|`");
    Ok(tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.as_str()),
            Token::Pipe => None,
        })
        .collect())
}

/// Splits a line into words as a POSIX shell does for the subset the tour uses: single
/// quotes, double quotes without expansions, backslash escapes outside quotes, `|`, and a
/// `#` comment at the start of a word. Other shell syntax is refused.
fn split_words(text: &str) -> anyhow::Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    tokens.push(Token::Word(w));
                }
            }
            '#' if word.is_none() => break,
            '|' => {
                if let Some(w) = word.take() {
                    tokens.push(Token::Word(w));
                }
                tokens.push(Token::Pipe);
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => bail!("unterminated single quote"),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('$' | '`') => bail!("expansions in double quotes are not supported"),
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => bail!("unterminated double quote"),
                        },
                        Some(c) => w.push(c),
                        None => bail!("unterminated double quote"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => bail!("a backslash at the end of the line"),
            },
            '<' | '>' | '&' | ';' | '$' | '`' | '(' | ')' | '*' | '?' | '[' | '~' => {
                bail!("shell syntax `{c}` is not supported in a tour command")
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        tokens.push(Token::Word(w));
    }
    Ok(tokens)
}

/// What `printf FORMAT` writes, for a format without conversions: the escapes `\n`, `\t`,
/// `\\` and `%%`.
fn printf(format: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('\\') => out.push('\\'),
                other => bail!(
                    "printf escape `\\{}` is not supported",
                    other.unwrap_or(' ')
                ),
            },
            '%' => match chars.next() {
                Some('%') => out.push('%'),
                other => bail!(
                    "printf conversion `%{}` is not supported",
                    other.unwrap_or(' ')
                ),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &TourCommand) -> Vec<&str> {
        command.args.iter().map(String::as_str).collect()
    }

    #[test]
    fn only_tour_blocks_count_and_comments_and_blank_lines_are_skipped() {
        let markdown = "\
Text.

```sh
ferrolog server
```

```sh tour
# A comment.
ferrolog topic create orders --partitions 3   # trailing comment

ferrolog topic list
```
";
        let commands = tour_commands(markdown).expect("parses");
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].line, 9);
        assert_eq!(
            args(&commands[0]),
            ["topic", "create", "orders", "--partitions", "3"]
        );
        assert_eq!(commands[0].flag("--partitions"), Some("3"));
        assert!(commands[1].starts_with(&["topic", "list"]));
    }

    #[test]
    fn quotes_pipes_and_continuations_are_read_as_a_shell_would() {
        let markdown = "\
```sh tour
printf 'a:1\\nb:2\\n' | ferrolog produce orders --key-separator :
echo 'to partition 0' | ferrolog produce orders --partition=0
ferrolog consume orders \\
  --format '{offset} {key}' --config \"a=b c\"
```
";
        let commands = tour_commands(markdown).expect("parses");
        assert_eq!(commands[0].stdin.as_deref(), Some("a:1\nb:2\n"));
        assert_eq!(commands[0].flag("--key-separator"), Some(":"));
        assert_eq!(commands[1].stdin.as_deref(), Some("to partition 0\n"));
        assert_eq!(commands[1].flag("--partition"), Some("0"));
        assert_eq!(commands[2].line, 4);
        assert_eq!(
            args(&commands[2]),
            [
                "consume",
                "orders",
                "--format",
                "{offset} {key}",
                "--config",
                "a=b c"
            ]
        );
    }

    #[test]
    fn lines_the_test_cannot_run_are_errors_not_skipped() {
        for line in [
            "ferrolog produce orders < events.txt",
            "ferrolog server &",
            "export FERROLOG_BROKERS=127.0.0.1:9191",
            "ferrolog topic create $TOPIC",
            "cat file | ferrolog produce orders",
            "seq 1 10 | ferrolog produce orders",
            "printf '%s\\n' a | ferrolog produce orders",
            "ferrolog topic list | ferrolog topic list | ferrolog topic list",
            "ferrolog topic create 'orders",
        ] {
            let markdown = format!("```sh tour\n{line}\n```\n");
            let error = tour_commands(&markdown).expect_err(line);
            assert!(
                format!("{error:#}").contains("README.md line 2"),
                "{line}: {error:#}"
            );
        }
        assert!(tour_commands("```sh tour\nferrolog topic list\n").is_err());
    }

    #[test]
    fn default_addresses_are_replaced_by_the_test_servers() {
        let markdown = "```sh tour\nferrolog topic list --brokers 127.0.0.1:9290\n```\n";
        let command = tour_commands(markdown).expect("parses")[0]
            .with_addresses("127.0.0.1:41000", "127.0.0.1:41001");
        assert_eq!(command.flag("--brokers"), Some("127.0.0.1:41000"));
    }

    #[test]
    fn the_readme_has_a_tour_the_test_can_run() {
        let commands = read_tour().expect("README.md's tour parses");
        assert!(commands.iter().any(|c| c.starts_with(&["topic", "create"])));
    }
}
