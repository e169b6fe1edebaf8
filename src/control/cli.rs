//! The command line: conntrackd's client flags with their quirks, plus
//! readable subcommands and `--json`.
//!
//! Owns: turning argv into an [`Invocation`]: which config, and whether to
//! run the daemon (foreground or `-d`) or send one request. Must not: read
//! the config, touch the socket, print, or exit; `main.rs` does that.
//!
//! conntrackd quirks kept (reference §1.11): an option is recognised by its
//! second character (`-cx` is `-c`); an optional argument is taken when it
//! does not start with `-` and is a prefix of a keyword (`-s c` = cache,
//! `-c exp` = expect); for the table options (`-c -i -e -F -R`) a word that
//! is no keyword prefix is left for the next round; the last client option
//! wins; `-d` with a client option is an error. Changed on purpose: an
//! unknown option is an error (conntrackd exits 0). `-c` with no table
//! commits flows then expectations, `-c ct` flows only, `-c expect`
//! expectations only, as conntrackd.

use super::request::{CacheSel, Request, StatsSection};
use crate::config::DEFAULT_CONFIG_PATH;
use std::ffi::OsString;
use std::path::PathBuf;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// No client option: run the daemon in this process.
    Foreground,
    /// `-d`: start the daemon in the background and return once it answers.
    Background,
    /// Send one request to the running daemon and print the reply.
    Request(Request),
    /// `status`: is the daemon running, and a one-screen summary.
    Status,
    /// `-v`
    Version,
    /// `-h`
    Help,
    /// `genkey [ID]`: print a new key file (one key, id `ID`, default 1).
    GenKey { id: u8 },
    /// `doctor [--upstream-idle-timeout S]`: check the machine and the daemon.
    Doctor {
        upstream_idle_timeout_s: Option<u32>,
    },
    /// `convert FILE`: print a conntrackd.conf as ctsync TOML.
    Convert { file: PathBuf },
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// `-C FILE`, or [`DEFAULT_CONFIG_PATH`].
    pub config: PathBuf,
    /// `--json`: dumps and stats as JSON.
    pub json: bool,
    pub action: Action,
}

/// A command line that can't be run, with a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

/// True when `word` is a non-empty prefix of `keyword` (conntrackd's strncmp test).
fn is_prefix(word: &str, keyword: &str) -> bool {
    keyword.starts_with(word)
}

/// `ct`/`expect` argument of `-c -i -e -F -R`.
enum Table {
    Default,
    Ct,
    Expect,
}

/// Where a parse is: nothing chosen yet, the daemon, or a client request.
#[derive(PartialEq)]
enum Mode {
    Unset,
    Daemon,
    Client,
}

/// The arguments as text, for [`parse`]. An argument that is not UTF-8
/// (Linux allows any bytes) is refused with a one-line reason: every
/// option and keyword is ASCII, and `std::env::args` would panic on it.
pub fn args_from_os<I: IntoIterator<Item = OsString>>(args: I) -> Result<Vec<String>, CliError> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|a| {
                CliError(format!(
                    "argument {} is not valid UTF-8: '{}'",
                    i + 1,
                    a.to_string_lossy()
                ))
            })
        })
        .collect()
}

/// Parse the arguments after the program name.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Invocation, CliError> {
    let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut json = false;
    let mut mode = Mode::Unset;
    let mut action: Option<Result<Action, CliError>> = None;
    let set_mode = |mode: &mut Mode, want: Mode| -> Result<(), CliError> {
        if *mode != Mode::Unset && *mode != want {
            return err("invalid parameters: -d can't be mixed with a client option");
        }
        *mode = want;
        Ok(())
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args.get(i).copied().unwrap_or("");
        match arg {
            "--json" => {
                json = true;
                i += 1;
                continue;
            }
            "--help" => {
                return Ok(Invocation {
                    config,
                    json,
                    action: Action::Help,
                })
            }
            "--version" => {
                return Ok(Invocation {
                    config,
                    json,
                    action: Action::Version,
                })
            }
            _ => {}
        }
        if !arg.starts_with('-') {
            if mode == Mode::Unset {
                let rest: Vec<&str> = args.get(i + 1..).unwrap_or_default().to_vec();
                let (act, more_json, more_config) = subcommand(arg, &rest)?;
                return Ok(Invocation {
                    config: more_config.unwrap_or(config),
                    json: json || more_json,
                    action: act,
                });
            }
            return err(format!("unexpected argument '{arg}'"));
        }
        let next = args.get(i + 1).copied().filter(|n| !n.starts_with('-'));
        // Options are told apart by their second character only.
        let opt = arg.chars().nth(1).unwrap_or('\0');
        let table = |consumed: &mut usize| -> Table {
            match next {
                Some(n) if is_prefix(n, "ct") => {
                    *consumed = 1;
                    Table::Ct
                }
                Some(n) if is_prefix(n, "expect") => {
                    *consumed = 1;
                    Table::Expect
                }
                _ => Table::Default,
            }
        };
        let mut consumed = 0usize;
        match opt {
            'd' => {
                set_mode(&mut mode, Mode::Daemon)?;
                action = Some(Ok(Action::Background));
            }
            'C' => {
                let Some(file) = args.get(i + 1) else {
                    return err("missing config filename after -C");
                };
                config = PathBuf::from(file);
                consumed = 1;
            }
            'c' | 'i' | 'e' | 'F' | 'R' => {
                set_mode(&mut mode, Mode::Client)?;
                let t = table(&mut consumed);
                let req = match (opt, t) {
                    ('c', Table::Default) => Request::Commit,
                    ('c', Table::Ct) => Request::CommitCt,
                    ('c', Table::Expect) => Request::CommitExpect,
                    ('i', Table::Expect) => Request::DumpInternalExpect,
                    ('i', _) => Request::DumpInternal,
                    ('e', Table::Expect) => Request::DumpExternalExpect,
                    ('e', _) => Request::DumpExternal,
                    ('F', Table::Expect) => Request::FlushKernelExpect,
                    ('F', _) => Request::FlushKernel,
                    (_, Table::Expect) => Request::ResyncFromKernelExpect,
                    _ => Request::ResyncFromKernel,
                };
                action = Some(Ok(Action::Request(req)));
            }
            'f' => {
                set_mode(&mut mode, Mode::Client)?;
                let sel = match next {
                    None => CacheSel::All,
                    Some(n) if is_prefix(n, "internal") => CacheSel::Internal,
                    Some(n) if is_prefix(n, "external") => CacheSel::External,
                    Some(n) => return err(format!("unknown parameter '{n}' for option '-f'")),
                };
                if next.is_some() {
                    consumed = 1;
                }
                action = Some(Ok(Action::Request(Request::FlushCaches(sel))));
            }
            's' => {
                set_mode(&mut mode, Mode::Client)?;
                let section = match next {
                    None => Ok(StatsSection::General),
                    Some(n) => {
                        consumed = 1;
                        stats_keyword(n).ok_or_else(|| {
                            CliError(format!("unknown parameter '{n}' for option '-s'"))
                        })?
                    }
                };
                action = Some(section.map(|s| Action::Request(Request::Stats(s))));
            }
            'k' | 'B' | 'n' | 't' => {
                set_mode(&mut mode, Mode::Client)?;
                let req = match opt {
                    'k' => Request::Kill,
                    'B' => Request::SendBulk,
                    'n' => Request::RequestResync,
                    _ => Request::ResetTimers,
                };
                action = Some(Ok(Action::Request(req)));
            }
            'x' => return err("-x (XML output) is not supported; use --json"),
            'v' => {
                return Ok(Invocation {
                    config,
                    json,
                    action: Action::Version,
                })
            }
            'h' => {
                return Ok(Invocation {
                    config,
                    json,
                    action: Action::Help,
                })
            }
            _ => return err(format!("unknown option '{arg}' (try -h)")),
        }
        i += 1 + consumed;
    }
    let action = match action {
        None => Action::Foreground,
        Some(a) => a?,
    };
    Ok(Invocation {
        config,
        json,
        action,
    })
}

/// The `-s` keywords in conntrackd's order; `Err` for the ones ctsync refuses.
fn stats_keyword(word: &str) -> Option<Result<StatsSection, CliError>> {
    let table: [(&str, StatsSection); 10] = [
        ("network", StatsSection::Network),
        ("cache", StatsSection::Cache),
        ("runtime", StatsSection::Runtime),
        ("multicast", StatsSection::Link),
        ("link", StatsSection::Link),
        ("rsqueue", StatsSection::Rsqueue),
        ("process", StatsSection::Process),
        ("queue", StatsSection::Queue),
        ("ct", StatsSection::General),
        ("expect", StatsSection::Expect),
    ];
    table
        .into_iter()
        .find(|(k, _)| is_prefix(word, k))
        .map(|(_, section)| Ok(section))
}

/// Every readable subcommand, for the man page, the shell completions and
/// their tests (tests/docs.rs checks each is documented and parses).
pub const COMMANDS: &[&str] = &[
    "status",
    "commit",
    "dump",
    "stats",
    "resync",
    "bulk",
    "flush",
    "flush-kernel",
    "kill",
    "reload-kernel",
    "reload",
    "reload-keys",
    "genkey",
    "doctor",
    "convert",
];

/// A readable subcommand and its words; `--json` and `-C FILE` may follow.
fn subcommand(name: &str, rest: &[&str]) -> Result<(Action, bool, Option<PathBuf>), CliError> {
    let mut json = false;
    let mut config = None;
    let mut words = Vec::new();
    let mut upstream = None;
    let mut it = rest.iter();
    while let Some(&w) = it.next() {
        match w {
            "--json" => json = true,
            "--upstream-idle-timeout" if name == "doctor" => match it.next().map(|n| n.parse()) {
                Some(Ok(s @ 1..=604_800)) => upstream = Some(s),
                _ => return err("--upstream-idle-timeout: expected seconds (1..=604800)"),
            },
            "-C" => match it.next() {
                Some(f) => config = Some(PathBuf::from(f)),
                None => return err("missing config filename after -C"),
            },
            w if w.starts_with('-') => return err(format!("unknown option '{w}' for '{name}'")),
            w => words.push(w),
        }
    }
    let one = |words: &[&str]| -> Result<Option<String>, CliError> {
        match words {
            [] => Ok(None),
            [w] => Ok(Some((*w).to_string())),
            _ => err(format!("too many arguments for '{name}'")),
        }
    };
    let none = |words: &[&str]| -> Result<(), CliError> {
        if words.is_empty() {
            Ok(())
        } else {
            err(format!("'{name}' takes no arguments"))
        }
    };
    let req = |r: Request| Action::Request(r);
    let action = match name {
        "status" => none(&words).map(|_| Action::Status)?,
        "commit" => match one(&words)?.map(|w| w.parse::<u32>()) {
            None => req(Request::Commit),
            Some(Ok(node_id)) if node_id > 0 => req(Request::CommitPeer { node_id }),
            _ => return err("commit: expected a peer's node id (1..=4294967295) or nothing"),
        },
        "resync" => none(&words).map(|_| req(Request::RequestResync))?,
        "bulk" => none(&words).map(|_| req(Request::SendBulk))?,
        "flush-kernel" => none(&words).map(|_| req(Request::FlushKernel))?,
        "kill" => none(&words).map(|_| req(Request::Kill))?,
        "reload-kernel" => none(&words).map(|_| req(Request::ResyncFromKernel))?,
        "reload-keys" => none(&words).map(|_| req(Request::ReloadKeys))?,
        "doctor" => none(&words).map(|_| Action::Doctor {
            upstream_idle_timeout_s: upstream,
        })?,
        "reload" => none(&words).map(|_| req(Request::Reload))?,
        "genkey" => match one(&words)?.map(|w| w.parse::<u8>()) {
            None => Action::GenKey { id: 1 },
            Some(Ok(id)) if id > 0 => Action::GenKey { id },
            _ => return err("genkey: expected a key id (1..=255) or nothing"),
        },
        "convert" => match one(&words)? {
            Some(file) => Action::Convert {
                file: PathBuf::from(file),
            },
            None => return err("convert: expected a conntrackd.conf file"),
        },
        "dump" => match one(&words)?.as_deref() {
            None | Some("internal") => req(Request::DumpInternal),
            Some("external") => req(Request::DumpExternal),
            Some(w) => {
                return err(format!(
                    "dump: expected 'internal' or 'external', not '{w}'"
                ))
            }
        },
        "flush" => match one(&words)?.as_deref() {
            None | Some("all") => req(Request::FlushCaches(CacheSel::All)),
            Some("internal") => req(Request::FlushCaches(CacheSel::Internal)),
            Some("external") => req(Request::FlushCaches(CacheSel::External)),
            Some(w) => {
                return err(format!(
                    "flush: expected 'internal' or 'external', not '{w}'"
                ))
            }
        },
        "stats" => match one(&words)?.as_deref() {
            None | Some("general") => req(Request::Stats(StatsSection::General)),
            Some(w) => match stats_keyword(w) {
                Some(Ok(s)) => req(Request::Stats(s)),
                Some(Err(e)) => return Err(e),
                None => return err(format!("stats: unknown section '{w}'")),
            },
        },
        // Test seam: remove N flows from the external caches behind the
        // protocol's back (only in builds with the `test-seams` feature).
        #[cfg(feature = "test-seams")]
        "debug-drop-external" => match one(&words)?.map(|w| w.parse::<usize>()) {
            Some(Ok(count)) => req(Request::DebugDropExternal { count }),
            _ => return err("debug-drop-external: expected a count"),
        },
        // Test seam: block the daemon's main loop for MS milliseconds.
        #[cfg(feature = "test-seams")]
        "debug-stall" => match one(&words)?.map(|w| w.parse::<u64>()) {
            Some(Ok(ms)) => req(Request::DebugStall { ms }),
            _ => return err("debug-stall: expected milliseconds"),
        },
        other => return err(format!("unknown command '{other}' (try -h)")),
    };
    Ok((action, json, config))
}

/// The `-h` text.
pub const USAGE: &str = "\
Usage: ctsyncd [-C FILE] [options]
Daemon:
  (no option)          run the daemon in the foreground
  -d                   run the daemon in the background
Client (conntrackd-compatible):
  -c [ct|expect]       commit the external cache to the kernel (both: flows first)
  -f [internal|external]  flush the caches
  -F [ct|expect]       flush the kernel conntrack table (or its expectations)
  -i [ct|expect]       dump the internal cache
  -e [ct|expect]       dump the external cache
  -k                   kill the daemon
  -s [network|cache|runtime|link|rsqueue|queue|process|expect]  show counters
  -R [ct|expect]       resync the internal cache with the kernel table
  -n                   request a resync from the peers
  -B                   send a bulk update to the peers
  -t                   flush the kernel table and internal cache after purge_timeout_s
  -C FILE              config file (default /etc/ctsyncd/ctsyncd.toml)
  -v                   version
  -h                   this help
Commands:
  status | commit [NODE_ID] | dump [internal|external] | stats [section] | resync | bulk
  flush [internal|external] | flush-kernel | kill | reload-kernel
  reload-keys          re-read [auth] key_file (a bad file keeps the old keys)
  reload               re-read the config: [filter] and keys apply, the log file is
                       reopened; other changes need a restart (as SIGHUP)
  genkey [ID]          print a new sync key file (key id ID, default 1)
  doctor [--upstream-idle-timeout S]  check this namespace's conntrack settings
                       and the daemon; findings with fixes; exit 0 ok/info,
                       1 warning, 2 critical (S: an upstream balancer's UDP
                       idle timeout, seconds)
  convert FILE         print a conntrackd.conf as ctsyncd TOML (-C also reads it as is)
  --json               dumps and stats as JSON
XML output (-x) is not supported: use --json.
";
