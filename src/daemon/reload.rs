//! Reload without restart (SIGHUP, `ctsyncd reload`): the config file is
//! read again; `[filter]` and the sync keys take effect, the log file is
//! reopened (for logrotate, even when the file does not load); any other
//! changed setting is reported as needing a restart and left as it was. A
//! file that does not load (or a key file that does not) changes nothing
//! else, and the reply says why. SIGUSR1 (logrotate's) reopens the log
//! file and does nothing else: a filter edit not yet meant to go live
//! stays unapplied.
//!
//! Owns: deciding what a new config changes (`changes`, pure) and applying
//! the reloadable part. Must not: apply a setting that only a start can
//! (sockets, links, the core's settings), or walk the caches here: flows
//! the new filter refuses are found by a re-read of the kernel table on the
//! worker, whose comparison deletes them here and on the peers (as a flow
//! leaving the filter does, see `routing`).

use super::{logging, setup, sync_auth, Daemon};
use crate::auth::load_key_file;
use crate::config::Config;
use crate::filter::Filter;
use std::time::Instant;

/// What a new config changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub filter: bool,
    /// Settings that changed but take a restart, by config name.
    pub need_restart: Vec<&'static str>,
}

/// Compare the running config with a new one.
pub(super) fn changes(old: &Config, new: &Config) -> Changes {
    let d = (&old.daemon, &new.daemon);
    let checks: [(&'static str, bool); 17] = [
        ("node_id", old.node_id != new.node_id),
        ("socket", old.socket != new.socket),
        ("socket_group", old.socket_group != new.socket_group),
        ("[sync]", old.sync != new.sync),
        ("[[link]]", old.links != new.links),
        ("[kernel]", old.kernel != new.kernel),
        ("[daemon] pid_file", d.0.pid_file != d.1.pid_file),
        ("[daemon] lock", d.0.lock != d.1.lock),
        ("[daemon] log_level", d.0.log_level != d.1.log_level),
        ("[daemon] log_file", d.0.log_file != d.1.log_file),
        ("[daemon] syslog", d.0.syslog != d.1.syslog),
        ("[daemon] nice", d.0.nice != d.1.nice),
        ("[daemon] scheduler", d.0.scheduler != d.1.scheduler),
        ("[auth] key_file", old.auth.key_file != new.auth.key_file),
        ("[auth] cluster", old.auth.cluster != new.auth.cluster),
        ("[metrics]", old.metrics != new.metrics),
        // The daemon never reads [doctor] or [compat].
        ("", false),
    ];
    let mut need_restart: Vec<&'static str> = checks
        .iter()
        .filter(|(name, changed)| *changed && !name.is_empty())
        .map(|(name, _)| *name)
        .collect();
    // Whatever else a later version adds to the config: the whole config
    // but the reloadable and unused parts must match what was listed.
    let mut probe = new.clone();
    probe.filter = old.filter.clone();
    probe.doctor = old.doctor.clone();
    probe.compat = old.compat.clone();
    if need_restart.is_empty() && probe != *old {
        need_restart.push("other settings");
    }
    Changes {
        filter: old.filter != new.filter,
        need_restart,
    }
}

impl Daemon {
    /// Reload the config file (see the module doc). Ok: what was done, one
    /// line each; Err: why nothing was.
    pub(super) fn reload(&mut self) -> Result<String, String> {
        let path = self.config_path.clone();
        let new = match Config::load(&path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "config not reloaded; everything stays as it was");
                // Rotation must not wait for the config to be fixed.
                let _ = reopen_log_file();
                return Err(format!("{e} (nothing reloaded)"));
            }
        };
        // The keys of the running [auth] key_file: a bad key file also
        // changes nothing.
        let ring = match &self.config.auth.key_file {
            Some(file) => match load_key_file(file) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    tracing::error!(error = %e, "config not reloaded: the key file does not load; everything stays as it was");
                    let _ = reopen_log_file();
                    return Err(format!("{e} (nothing reloaded)"));
                }
            },
            None => None,
        };
        let changes = changes(&self.config, &new);
        let mut said = Vec::new();
        if changes.filter {
            let specs = setup::link_specs(&self.config);
            self.filter =
                Filter::from_config(&new.filter, specs.iter().flat_map(|s| s.addresses()));
            self.config.filter = new.filter.clone();
            // Re-read the table under the new filter: what it now refuses
            // leaves the internal cache and the peers', what it now
            // accepts is sent.
            self.timers.heal_at = Some(Instant::now());
            tracing::info!("filter reloaded: applies from now on; the kernel table is re-read");
            said.push("filter: reloaded (the kernel table is re-read under it)".to_string());
        } else {
            said.push("filter: unchanged".to_string());
        }
        if let Some(ring) = ring {
            let keys = sync_auth::describe(&ring);
            self.node.set_keys(ring);
            tracing::info!(keys = %keys, "sync keys reloaded");
            said.push(format!("sync keys: reloaded: {keys}"));
        }
        said.extend(reopen_log_file());
        if !changes.need_restart.is_empty() {
            let names = changes.need_restart.join(", ");
            tracing::warn!(settings = %names, "changed settings need a restart; not applied");
            said.push(format!("needs a restart (not applied): {names}"));
        }
        tracing::info!(config = %path.display(), "config reloaded");
        Ok(said.into_iter().map(|l| l + "\n").collect())
    }
}

/// SIGUSR1: reopen the log file, nothing else (the config is not read).
pub(super) fn reopen_log_file_only() {
    match reopen_log_file() {
        Some(said) => tracing::info!("{said} (SIGUSR1; the config was not read)"),
        None => tracing::info!("SIGUSR1: no log file to reopen"),
    }
}

/// Reopen the log file (logrotate moved it): done on every reload, even
/// one whose config does not load. The line for the reply, if any.
fn reopen_log_file() -> Option<String> {
    match logging::reopen_file() {
        Ok(Some(file)) => Some(format!("log file: reopened {}", file.display())),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "log file not reopened; writing to the old one");
            Some(format!("log file: not reopened ({e}); the old one stays"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "node_id = 1\n[[link]]\ntransport = \"udp\"\ninterface = \"sync0\"\nlocal = \"198.18.0.1\"\nport = 3780\npeer = \"198.18.0.2\"\n";

    fn config(extra: &str) -> Config {
        Config::parse(&format!("{BASE}\n{extra}"), "test").expect("valid config")
    }

    #[test]
    fn the_filter_reloads_and_other_changes_need_a_restart() {
        let old = config("");
        assert_eq!(changes(&old, &old), Changes::default());
        let filtered = config("[filter]\nprotocol = { policy = \"ignore\", list = [\"udp\"] }\n");
        assert_eq!(
            changes(&old, &filtered),
            Changes {
                filter: true,
                need_restart: vec![]
            }
        );
        let other = config("[sync]\nmode = \"notrack\"\n[daemon]\nnice = -5\n");
        assert_eq!(
            changes(&old, &other),
            Changes {
                filter: false,
                need_restart: vec!["[sync]", "[daemon] nice"]
            }
        );
        let doctor = config("[doctor]\nupstream_idle_timeout_s = 350\n");
        assert_eq!(changes(&old, &doctor), Changes::default());
    }
}
