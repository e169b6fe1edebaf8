//! conntrackd.conf read as is: a conntrackd (conntrack-tools 1.4.7)
//! configuration file turned into ctsync's TOML and from there into the same
//! validated [`Config`] a TOML file gives.
//!
//! Owns: recognising the format by content, the pipeline lexer -> parser ->
//! mapping -> `Config::parse`, and pointing every error back at the
//! conntrackd.conf file and ITS line (`conntrackd.conf:12: ...`). Must not:
//! validate what `config.rs` validates (the generated TOML goes through it),
//! open sockets or touch the kernel.

pub mod lexer;
pub mod mapping;
pub mod parser;

use crate::config::{Config, ConfigError};
pub use mapping::{node_id_for, Note};

/// The sections a conntrackd.conf is made of.
const SECTIONS: [&str; 4] = ["General", "Sync", "Stats", "Helper"];

/// True when `text` is a conntrackd configuration: its first token is a
/// section name followed by `{` (`General {`, `Sync {`), which no TOML
/// document can start with.
pub fn is_conntrackd(text: &str) -> bool {
    let t = lexer::tokens(text);
    matches!(
        (t.first().map(|t| &t.kind), t.get(1).map(|t| &t.kind)),
        (Some(lexer::Kind::Word(w)), Some(lexer::Kind::Open)) if SECTIONS.contains(&w.as_str())
    )
}

/// A converted file: the TOML text, and the settings it accepted without
/// an effect in ctsync (each also a comment in the TOML).
#[derive(Clone, Debug)]
pub struct Converted {
    pub toml: String,
    pub notes: Vec<Note>,
    /// The validated configuration (what `Config::parse` makes of `toml`).
    pub config: Config,
}

/// Convert conntrackd.conf text; `origin` (the file name) is named in
/// errors and in the TOML's header. Fails with `origin:line: reason` for a
/// refused option or malformed syntax.
pub fn convert(text: &str, origin: &str) -> Result<Converted, ConfigError> {
    let refused = |r: parser::Refusal| ConfigError::Syntax {
        origin: origin.to_string(),
        line: r.line,
        key: None,
        message: r.message,
    };
    let tokens = lexer::tokens(text);
    let settings = parser::parse(&tokens).map_err(refused)?;
    let doc = mapping::to_toml(&settings, origin).map_err(refused)?;
    let mut toml = String::new();
    for (line, _) in &doc.lines {
        toml.push_str(line);
        toml.push('\n');
    }
    let config = Config::parse(&toml, origin).map_err(|e| point_back(e, &doc, origin))?;
    Ok(Converted {
        toml,
        notes: doc.notes,
        config,
    })
}

/// An error about the generated TOML, re-aimed at the conntrackd.conf line
/// the offending key came from, naming the conntrackd keyword (and ctsync's
/// key, for someone reading the converted output).
fn point_back(e: ConfigError, doc: &mapping::Doc, origin: &str) -> ConfigError {
    let at = e.line().max(1);
    let found = doc
        .lines
        .iter()
        .take(at)
        .rev()
        .find_map(|(_, o)| o.as_ref());
    let (line, keyword) = match found {
        Some(o) => (o.line, o.keyword.clone()),
        None => (1, String::new()),
    };
    let (key, message) = match &e {
        ConfigError::Invalid { key, message, .. } => (Some(key.clone()), message.clone()),
        ConfigError::Syntax { key, message, .. } => (key.clone(), message.clone()),
        ConfigError::Read { .. } => return e,
    };
    let mut text = if keyword.is_empty() {
        message
    } else {
        format!("{keyword}: {message}")
    };
    if let Some(k) = key {
        text.push_str(&format!(" (ctsync's {k})"));
    }
    ConfigError::Syntax {
        origin: origin.to_string(),
        line,
        key: None,
        message: text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const MINIMAL: &str = "General {\n\tUNIX {\n\t\tPath /run/ct.ctl\n\t}\n}\nSync {\n\tMode FTFW { }\n\tUDP Default {\n\t\tIPv4_address 198.18.0.1\n\t\tIPv4_Destination_Address 198.18.0.2\n\t\tPort 3780\n\t\tInterface sync0\n\t}\n}\n";

    #[test]
    fn recognises_conntrackd_files_by_content() {
        assert!(is_conntrackd(MINIMAL));
        assert!(is_conntrackd("# comment\nSync{ }"));
        assert!(!is_conntrackd("node_id = 1\n[sync]\n"));
        assert!(!is_conntrackd(""));
        assert!(!is_conntrackd("General = 1\n"));
    }

    #[test]
    fn minimal_file_maps_onto_ctsync_keys() {
        let c = convert(MINIMAL, "t.conf").expect("converts");
        let cfg = &c.config;
        assert_eq!(cfg.node_id, node_id_for("198.18.0.1".parse().unwrap()));
        assert_eq!(cfg.socket, std::path::PathBuf::from("/run/ct.ctl"));
        assert_eq!(cfg.links.len(), 1);
        assert_eq!(cfg.links[0].peer, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(cfg.links[0].port, 3780);
        assert_eq!(
            cfg.daemon.lock.as_deref(),
            Some(std::path::Path::new(mapping::DEFAULT_LOCK))
        );
        assert_eq!(Config::parse(&c.toml, "t.toml").unwrap(), *cfg);
    }

    #[test]
    fn node_ids_follow_the_sync_address() {
        let a: IpAddr = "198.18.100.100".parse().unwrap();
        assert_eq!(node_id_for(a), u32::from_be_bytes([198, 18, 100, 100]));
        assert_ne!(
            node_id_for("2001:db8::1".parse().unwrap()),
            node_id_for("2001:db8::2".parse().unwrap())
        );
        assert_eq!(node_id_for("0.0.0.0".parse().unwrap()), 1);
    }

    #[test]
    fn an_address_that_is_not_the_nodes_own_is_refused_for_the_node_id() {
        for own in ["0.0.0.0", "127.0.0.1"] {
            let text = format!(
                "Sync {{\n Mode FTFW {{ }}\n UDP Default {{\n  IPv4_address {own}\n  IPv4_Destination_Address 198.18.0.2\n  Port 3780\n  Interface eth2\n }}\n}}\nGeneral {{\n UNIX {{ Path /run/x.ctl }}\n}}\n"
            );
            let e = convert(&text, "c.conf").err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(
                e.contains("c.conf:4:") && e.contains("same id"),
                "{own}: {e}"
            );
        }
    }

    #[test]
    fn a_value_ctsync_refuses_names_the_conntrackd_line() {
        let text = MINIMAL.replace(
            "Mode FTFW { }",
            "Mode ALARM {\n RefreshTime 60\n CacheTimeout 30\n }",
        );
        let e = convert(&text, "t.conf").unwrap_err().to_string();
        // CacheTimeout is on line 9 of the modified text.
        assert!(e.starts_with("t.conf:9: CacheTimeout 30:"), "{e}");
        assert!(e.contains("sync.alarm_timeout_s"), "{e}");
    }
}
