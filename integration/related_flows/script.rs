//! One scripted endpoint of a related-flow session: a Python script (next
//! to this file) run in a lab namespace and driven over a line protocol:
//! it prints `KEY name=value ...` lines on stdout and reads `GO` on stdin.
//!
//! Owns: the child process (killed and reaped on Drop, also when a test
//! panics), the thread that reads its stdout, and its stderr log file.
//! Must not: judge a session (the tests do) or wait without a bound.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Debian's interpreter (python3-pyftpdlib installs for it), not whatever
/// `python3` the PATH finds first.
pub const PYTHON: &str = "/usr/bin/python3";

/// One line of a script's output: its first word and its `name=value` words.
#[derive(Clone, Debug)]
pub struct Line {
    pub key: String,
    pub fields: BTreeMap<String, String>,
    pub text: String,
}

impl Line {
    pub fn parse(text: &str) -> Line {
        let mut words = text.split_whitespace();
        let key = words.next().unwrap_or("").to_string();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Line {
            key,
            fields,
            text: text.to_string(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// A numeric field; panics (naming the line) when it is missing.
    pub fn num(&self, name: &str) -> u64 {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {name}= in {:?}", self.text))
    }
}

/// A running script.
pub struct Script {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
    log: PathBuf,
}

/// Where the scripts are.
pub fn script_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration/related_flows")
        .join(file)
}

impl Script {
    /// Start `file` with `args` in namespace `ns`; its stderr goes to
    /// `<dir>/<name>.log`.
    pub fn spawn(name: &str, ns: &str, file: &str, args: &[&str], dir: &Path) -> Script {
        let log = dir.join(format!("{name}.log"));
        let err = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, PYTHON, "-u"])
            .arg(script_path(file))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({file}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
            log,
        }
    }

    /// The next line whose first word is `key` (or `ERROR`, or the end of
    /// the output, or the timeout: each an `Err` naming what was seen).
    pub fn wait(&mut self, key: &str, within: Duration) -> Result<Line, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(text) => {
                    self.seen.push(text.clone());
                    let line = Line::parse(&text);
                    if line.key == key {
                        return Ok(line);
                    }
                    if line.key == "ERROR" {
                        return Err(format!("{}: {text}", self.name));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no {key} line within {within:?} (seen {:?})",
                        self.name, self.seen
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{}: ended without a {key} line (seen {:?}){}",
                        self.name,
                        self.seen,
                        self.stderr_tail()
                    ))
                }
            }
        }
    }

    /// Like `wait`, but a missing line fails the test.
    pub fn expect(&mut self, key: &str, within: Duration) -> Line {
        self.wait(key, within).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Write one line to the script's stdin.
    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// The last lines of the script's stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(15);
        format!(
            "\n--- {} stderr ---\n{}",
            self.name,
            lines[start..].join("\n")
        )
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.stdin.take();
        // `ip netns exec` execs the interpreter: the child's pid is the script's.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
