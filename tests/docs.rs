//! The man pages and shell completions against the code: every command the
//! parser takes and every config key the example documents is in them, the
//! man pages render without warnings, and bash completion completes.

use ctsync::control::cli::{self, COMMANDS};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn every_listed_command_parses_and_an_unknown_one_does_not() {
    for cmd in COMMANDS {
        let words: Vec<&str> = match *cmd {
            // convert needs its file argument.
            "convert" => vec![cmd, "/etc/conntrackd/conntrackd.conf"],
            _ => vec![cmd],
        };
        assert!(
            cli::parse(&words).is_ok(),
            "{cmd}: {:?}",
            cli::parse(&words)
        );
    }
    let e = cli::parse(&["no-such-command"]).unwrap_err();
    assert!(e.to_string().contains("unknown command"), "{e}");
}

/// Man page text with roff escapes for hyphens removed.
fn man(rel: &str) -> String {
    read(rel).replace("\\-", "-")
}

#[test]
fn the_man_page_and_completions_name_every_command() {
    let page = man("man/ctsyncd.8");
    let commands = page
        .split(".SH COMMANDS")
        .nth(1)
        .and_then(|s| s.split(".SH ").next())
        .expect("ctsyncd.8 has a COMMANDS section");
    for file in [
        "completions/ctsyncd.bash",
        "completions/_ctsyncd",
        "completions/ctsyncd.fish",
    ] {
        let text = read(file);
        for cmd in COMMANDS {
            let word = |t: &str| {
                t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .any(|w| w == *cmd)
            };
            assert!(word(commands), "ctsyncd.8 COMMANDS lacks '{cmd}'");
            assert!(word(&text), "{file} lacks '{cmd}'");
        }
    }
}

#[test]
fn the_config_man_page_names_every_key_of_the_example() {
    let page = man("man/ctsyncd.toml.5");
    let example = read("conf/ctsyncd.toml");
    let mut keys = Vec::new();
    for line in example.lines() {
        // `key = value` and `#key = value` (a commented default), not prose.
        let t = line.strip_prefix('#').unwrap_or(line);
        if t.starts_with(' ') || t.starts_with('[') {
            continue;
        }
        if let Some((k, _)) = t.split_once(" = ") {
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.push(k.to_string());
            }
        }
    }
    assert!(keys.len() > 40, "found only {} keys: {keys:?}", keys.len());
    for k in &keys {
        assert!(
            page.contains(&format!(".B {k}\n")),
            "ctsyncd.toml.5 does not document '{k}'"
        );
    }
}

#[test]
fn man_pages_render_without_warnings() {
    for page in ["man/ctsyncd.8", "man/ctsyncd.toml.5"] {
        let out = Command::new("man")
            .args(["--warnings", "-l", "-P", "cat"])
            .arg(repo(page))
            .env("MANWIDTH", "80")
            .output()
            .expect("man (man-db) is installed by integration/install-deps");
        assert!(out.status.success(), "{page}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "{page} warns: {stderr}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SEE ALSO"), "{page} rendered: {text}");
    }
}

/// What bash completion offers for the command line `words` (the last one
/// being completed).
fn complete(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; _ctsyncd; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        repo("completions/ctsyncd.bash").display(),
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &script])
        .output()
        .expect("bash");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_completes_commands_flags_and_sections() {
    assert_eq!(complete(&["ctsyncd", "genk"]), ["genkey"]);
    assert_eq!(complete(&["ctsyncd", "flush-"]), ["flush-kernel"]);
    let mut sections = complete(&["ctsyncd", "-s", ""]);
    sections.sort();
    assert_eq!(
        sections,
        ["cache", "expect", "link", "network", "process", "queue", "rsqueue", "runtime"]
    );
    assert_eq!(complete(&["ctsyncd", "--js"]), ["--json"]);
    assert_eq!(complete(&["ctsyncd", "dump", "ext"]), ["external"]);
    // A command in second place is not offered again.
    assert!(complete(&["ctsyncd", "status", "st"]).is_empty());
}
