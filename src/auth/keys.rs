//! The sync keys: the key file's format, its checks, and the key ring a
//! node seals and opens with.
//!
//! Owns: parsing and validating key files (`<id> <base64 of 32 bytes>
//! [send]` per line, `#` comments), the file's ownership and mode checks,
//! the key ring (every key accepted, one used to send), key check values,
//! and new key lines for `ctsyncd genkey`. Must not: seal or open datagrams
//! (`seal` does), or print key bytes anywhere (errors name the file, the
//! line and the rule broken; keys are shown by id and check value only).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use thiserror::Error;
use zeroize::Zeroizing;

/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// Longest key file read (a few hundred keys' worth).
pub const MAX_KEY_FILE: u64 = 64 * 1024;

/// Why a key file was refused. The text never contains key material.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyFileError {
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("key file line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("key file holds no key")]
    Empty,
    #[error("key file marks more than one key `send` (lines {first} and {second})")]
    TwoSendKeys { first: usize, second: usize },
}

/// One key: its id on the wire and the cipher made from it.
#[derive(Clone)]
pub struct Key {
    pub id: u8,
    pub(super) cipher: XChaCha20Poly1305,
    check: u32,
}

impl Key {
    /// A key from its 32 bytes.
    pub fn new(id: u8, bytes: &[u8; KEY_LEN]) -> Key {
        let cipher = XChaCha20Poly1305::new(&(*bytes).into());
        let check = check_value(&cipher);
        Key { id, cipher, check }
    }

    /// A short value that tells keys apart without revealing them: the
    /// first 4 bytes of 16 zero bytes sealed under a nonce no datagram uses
    /// (a "key check value"). Equal on two nodes exactly when their keys are.
    pub fn check_value(&self) -> u32 {
        self.check
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key {{ id: {}, check: {:08x} }}", self.id, self.check)
    }
}

fn check_value(cipher: &XChaCha20Poly1305) -> u32 {
    let mut block = [0u8; 16];
    // Sealing's nonces end in four zero bytes: this one never does.
    let nonce = XNonce::from([0xff; 24]);
    // Sealing 16 bytes cannot fail (the limits are gigabytes).
    let _ = cipher.encrypt_inout_detached(&nonce, b"ctsync key check", (&mut block[..]).into());
    u32::from_be_bytes([block[0], block[1], block[2], block[3]])
}

/// The keys a node holds: every one is accepted, `send` seals.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: BTreeMap<u8, Key>,
    send: u8,
}

impl KeyRing {
    /// A ring of `keys` sending with `send` (which must be among them).
    pub fn new(keys: Vec<Key>, send: u8) -> Result<KeyRing, KeyFileError> {
        let keys: BTreeMap<u8, Key> = keys.into_iter().map(|k| (k.id, k)).collect();
        if keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        if !keys.contains_key(&send) {
            return Err(KeyFileError::Line {
                line: 0,
                reason: format!("send key {send} is not in the file"),
            });
        }
        Ok(KeyRing { keys, send })
    }

    /// A ring of one key (tests, the simulation).
    pub fn single(id: u8, bytes: &[u8; KEY_LEN]) -> KeyRing {
        let key = Key::new(id, bytes);
        KeyRing {
            keys: BTreeMap::from([(id, key)]),
            send: id,
        }
    }

    pub fn get(&self, id: u8) -> Option<&Key> {
        self.keys.get(&id)
    }

    pub fn send_key(&self) -> &Key {
        // `send` is checked to be among the keys whenever a ring is made.
        self.keys
            .get(&self.send)
            .or_else(|| self.keys.values().next())
            .expect("a key ring is never empty")
    }

    /// (id, check value) of every key, lowest id first.
    pub fn summary(&self) -> Vec<(u8, u32)> {
        self.keys.values().map(|k| (k.id, k.check)).collect()
    }
}

/// Parse a key file's text. The send key is the one marked `send`, else
/// the lowest id.
pub fn parse_key_file(text: &str) -> Result<KeyRing, KeyFileError> {
    let mut keys = Vec::new();
    let mut seen: BTreeMap<u8, usize> = BTreeMap::new();
    let mut send: Option<(u8, usize)> = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let bad = |reason: String| KeyFileError::Line { line, reason };
        let mut words = content.split_whitespace();
        let (Some(id), Some(b64)) = (words.next(), words.next()) else {
            return Err(bad("expected `<id> <base64 key> [send]`".into()));
        };
        // Errors never echo a word of the line: it may be (part of) a key.
        let marked = match words.next() {
            None => false,
            Some("send") => true,
            Some(_) => return Err(bad("the third word may only be `send`".into())),
        };
        if words.next().is_some() {
            return Err(bad("too many words".into()));
        }
        let id: u8 = match id.parse() {
            Ok(n) if n >= 1 => n,
            _ => return Err(bad("the first word is not a key id 1..255".into())),
        };
        if let Some(first) = seen.insert(id, line) {
            return Err(bad(format!("key id {id} repeats line {first}")));
        }
        let bytes = Zeroizing::new(
            BASE64
                .decode(b64)
                .map_err(|_| bad(format!("key {id} is not base64")))?,
        );
        let Ok(bytes) = <&[u8; KEY_LEN]>::try_from(bytes.as_slice()) else {
            return Err(bad(format!(
                "key {id} has {} bytes, not {KEY_LEN}",
                bytes.len()
            )));
        };
        keys.push(Key::new(id, bytes));
        if marked {
            if let Some((_, first)) = send {
                return Err(KeyFileError::TwoSendKeys {
                    first,
                    second: line,
                });
            }
            send = Some((id, line));
        }
    }
    let send = match send {
        Some((id, _)) => id,
        None => keys.iter().map(|k| k.id).min().ok_or(KeyFileError::Empty)?,
    };
    KeyRing::new(keys, send)
}

/// Read and check the key file at `path`: a regular file (symlinks are not
/// followed), owned by root or by us, with no permission for group or
/// others, at most `MAX_KEY_FILE` bytes. The checks are made on the opened
/// file, so the file checked is the file read.
pub fn load_key_file(path: &Path) -> Result<KeyRing, KeyFileError> {
    let refuse = |reason: String| KeyFileError::File {
        path: path.display().to_string(),
        reason,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refuse("is a symbolic link (not followed)".into())
            } else {
                refuse(e.to_string())
            }
        })?;
    let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(refuse(format!(
            "is owned by uid {}: must be root's or the daemon's (uid {euid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "mode {:04o} lets group or others read it: chmod 600",
            meta.mode() & 0o7777
        )));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(refuse(format!("larger than {MAX_KEY_FILE} bytes")));
    }
    let mut text = Zeroizing::new(String::new());
    (&mut file)
        .take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| refuse(e.to_string()))?;
    parse_key_file(&text).map_err(|e| match e {
        KeyFileError::File { .. } => e,
        other => refuse(other.to_string()),
    })
}

/// A new key line (`<id> <base64>`) from the kernel's random pool.
pub fn new_key_line(id: u8) -> std::io::Result<String> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    fill_random(&mut bytes[..])?;
    Ok(format!("{id} {}", BASE64.encode(&bytes[..])))
}

/// Fill `buf` from getrandom(2) (blocks until the pool is seeded).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(got) {
            Ok(n) => done += n,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn line(id: u8, byte: u8) -> String {
        format!("{id} {}", BASE64.encode([byte; KEY_LEN]))
    }

    #[test]
    fn keys_parse_with_comments_and_the_send_mark() {
        let text = format!("# sync keys\n{}\n\n{} send # new\n", line(1, 7), line(2, 9));
        let ring = parse_key_file(&text).expect("valid");
        assert_eq!(ring.send_key().id, 2);
        assert_eq!(ring.summary().len(), 2);
        let unmarked = parse_key_file(&format!("{}\n{}\n", line(5, 1), line(3, 2))).expect("ok");
        assert_eq!(unmarked.send_key().id, 3, "lowest id sends by default");
    }

    #[test]
    fn check_values_tell_keys_apart_and_match_across_nodes() {
        let a = Key::new(1, &[7; KEY_LEN]);
        let b = Key::new(1, &[7; KEY_LEN]);
        let c = Key::new(1, &[8; KEY_LEN]);
        assert_eq!(a.check_value(), b.check_value());
        assert_ne!(a.check_value(), c.check_value());
        assert!(
            !format!("{a:?}").contains("7, 7"),
            "Debug shows no key bytes"
        );
    }

    #[test]
    fn bad_key_files_are_refused_with_the_rule_broken() {
        let short = format!("1 {}", BASE64.encode([1u8; 16]));
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no key"),
            ("# only a comment\n".into(), "no key"),
            (
                format!("0 {}", BASE64.encode([1u8; 32])),
                "not a key id 1..255",
            ),
            (
                format!("256 {}", BASE64.encode([1u8; 32])),
                "not a key id 1..255",
            ),
            (format!("{} send", BASE64.encode([1u8; 32])), "not a key id"),
            (
                format!(
                    "1 {} {}",
                    BASE64.encode([1u8; 16]),
                    BASE64.encode([1u8; 16])
                ),
                "may only be `send`",
            ),
            (short, "16 bytes"),
            ("1 not-base64!!".into(), "not base64"),
            (format!("{}\n{}", line(1, 1), line(1, 2)), "repeats line 1"),
            (format!("{} sned", line(1, 1)), "may only be `send`"),
            ("1\n".into(), "expected"),
            (
                format!("{} send\n{} send", line(1, 1), line(2, 2)),
                "more than one key",
            ),
        ];
        for (text, want) in cases {
            let err = parse_key_file(&text).expect_err(&text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(&BASE64.encode([1u8; 32])), "no key in {err}");
            assert!(!err.contains(&BASE64.encode([1u8; 16])), "no key in {err}");
        }
    }

    #[test]
    fn the_file_must_be_private_regular_and_not_a_symlink() {
        let dir = std::env::temp_dir().join(format!("ctsync-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sync.keys");
        let mut f = std::fs::File::create(&path).expect("create");
        writeln!(f, "{}", line(1, 3)).expect("write");
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_key_file(&path).expect_err("0644").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(load_key_file(&path).expect("0600").send_key().id, 1);
        let link = dir.join("link.keys");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let err = load_key_file(&link).expect_err("symlink").to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let err = load_key_file(&dir).expect_err("dir").to_string();
        assert!(err.contains("regular file"), "{err}");
        let err = load_key_file(&dir.join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn new_key_lines_parse_and_differ() {
        let a = new_key_line(4).expect("random");
        let b = new_key_line(4).expect("random");
        assert_ne!(a, b);
        let ring = parse_key_file(&a).expect("valid");
        assert_eq!(ring.send_key().id, 4);
    }
}
