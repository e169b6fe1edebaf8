//! Batched writes of expectations through the [`Writer`]: create, delete,
//! flush.
//!
//! Owns: the expectation requests of a batch and their fallbacks, and the
//! report of what failed, expectation by expectation.
//! Must not: decide which expectations to write or their timeouts (callers
//! do), or write flows (that is `write`; a master flow must be in the table
//! before its expectation is created, or the create fails with ENOENT).
//!
//! A create is sent as the create itself followed by a change of its
//! timeout (the kernel ignores the timeout of a create and starts the
//! helper's own). On EEXIST (an expectation with that expected tuple is
//! there already) the existing one is deleted and the create sent once
//! more, as for flows, so the kernel ends up with exactly what was asked
//! (conntrackd counts EEXIST as done and keeps whatever was there). A
//! delete of an expectation that is not there (ENOENT) is success: it
//! expired or its connection arrived.

use super::expect_codec::{
    encode_expect_create, encode_expect_delete, encode_expect_flush, encode_expect_timeout,
};
use super::{errno_name, KernelError, Writer};
use crate::expect::{ExpectKey, Expectation};
use crate::flow::proto_name;

/// How many error lines a report keeps.
const MAX_ERRORS: usize = 10;

/// One change to apply to the kernel's expectations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectOp {
    Create(Expectation),
    /// Delete the expectation with this expected tuple in this zone.
    Delete(ExpectKey),
}

impl ExpectOp {
    /// The expectation this operation is about.
    pub fn key(&self) -> ExpectKey {
        match self {
            ExpectOp::Create(e) => e.key(),
            ExpectOp::Delete(k) => *k,
        }
    }
}

/// What a batch of expectation writes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectWriteReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, each naming the expectation and the errno.
    pub first_errors: Vec<String>,
    /// Every expectation whose write failed, with its errno.
    pub failed_keys: Vec<(ExpectKey, i32)>,
}

impl ExpectWriteReport {
    fn fail(&mut self, what: &str, key: &ExpectKey, errno: i32) {
        self.failed += 1;
        self.failed_keys.push((*key, errno));
        if self.first_errors.len() < MAX_ERRORS {
            self.first_errors.push(format!(
                "{what} expectation {} {} of master {} zone {}: {}",
                proto_name(key.tuple.proto),
                key.tuple,
                key.master,
                key.zone,
                errno_name(errno)
            ));
        }
    }
}

/// One request on the wire.
#[derive(Clone, Copy)]
enum Req<'a> {
    Create(&'a Expectation),
    Timeout(&'a Expectation),
    Delete(ExpectKey),
}

impl Writer {
    /// Apply expectation changes (see the module doc for the fallbacks).
    /// Creates whose master is missing fail with ENOENT, named in the
    /// report.
    pub fn apply_expectations(&mut self, ops: &[ExpectOp]) -> ExpectWriteReport {
        let mut rep = ExpectWriteReport::default();
        let mut retry: Vec<&Expectation> = Vec::new();
        let errs = match self.send_expect_reqs(&first_pass(ops)) {
            Ok(e) => e,
            Err(e) => return all_failed(ops.iter().map(ExpectOp::key), &e),
        };
        let mut errs = errs.into_iter();
        for op in ops {
            match op {
                ExpectOp::Create(e) => {
                    let created = errs.next().unwrap_or(0);
                    let timed = errs.next().unwrap_or(0);
                    match created {
                        libc::EEXIST => retry.push(e),
                        0 if timed == 0 => rep.ok += 1,
                        0 => rep.fail("set the timeout of", &e.key(), timed),
                        err => rep.fail("create", &e.key(), err),
                    }
                }
                ExpectOp::Delete(k) => match errs.next().unwrap_or(0) {
                    0 | libc::ENOENT => rep.ok += 1,
                    err => rep.fail("delete", k, err),
                },
            }
        }
        if retry.is_empty() {
            return rep;
        }
        let reqs: Vec<Req> = retry
            .iter()
            .flat_map(|e| [Req::Delete(e.key()), Req::Create(e), Req::Timeout(e)])
            .collect();
        let errs = match self.send_expect_reqs(&reqs) {
            Ok(e) => e,
            Err(err) => {
                let failed = all_failed(retry.iter().map(|e| e.key()), &err);
                rep.ok += failed.ok;
                rep.failed += failed.failed;
                rep.failed_keys.extend(failed.failed_keys);
                rep.first_errors.extend(failed.first_errors);
                rep.first_errors.truncate(MAX_ERRORS);
                return rep;
            }
        };
        for (e, chunk) in retry.iter().zip(errs.chunks(3)) {
            match *chunk {
                [d, _, _] if d != 0 && d != libc::ENOENT => rep.fail("delete", &e.key(), d),
                [_, 0, 0] => rep.ok += 1,
                [_, 0, t] => rep.fail("set the timeout of", &e.key(), t),
                [_, c, _] => rep.fail("create", &e.key(), c),
                _ => rep.fail("create", &e.key(), libc::EIO),
            }
        }
        rep
    }

    /// Delete every expectation of the namespace.
    pub fn flush_expectations(&mut self) -> Result<(), KernelError> {
        let errs = self.exec_encoded(1, |buf, _, seq| encode_expect_flush(buf, seq))?;
        match errs.first().copied().unwrap_or(0) {
            0 => Ok(()),
            errno => Err(KernelError::Refused {
                what: "expectation flush",
                errno,
            }),
        }
    }

    fn send_expect_reqs(&mut self, reqs: &[Req]) -> Result<Vec<i32>, KernelError> {
        self.exec_encoded(reqs.len(), |buf, i, seq| match reqs.get(i) {
            Some(Req::Create(e)) => encode_expect_create(buf, e, seq),
            Some(Req::Timeout(e)) => encode_expect_timeout(buf, e, seq),
            Some(Req::Delete(k)) => encode_expect_delete(buf, k, seq),
            None => {}
        })
    }
}

/// The first pass: a create is the create and its timeout change.
fn first_pass(ops: &[ExpectOp]) -> Vec<Req<'_>> {
    let mut reqs = Vec::with_capacity(ops.len() * 2);
    for op in ops {
        match op {
            ExpectOp::Create(e) => {
                reqs.push(Req::Create(e));
                reqs.push(Req::Timeout(e));
            }
            ExpectOp::Delete(k) => reqs.push(Req::Delete(*k)),
        }
    }
    reqs
}

fn all_failed(keys: impl Iterator<Item = ExpectKey>, err: &KernelError) -> ExpectWriteReport {
    let errno = err.errno().unwrap_or(libc::EIO);
    let mut rep = ExpectWriteReport::default();
    for k in keys {
        rep.failed += 1;
        rep.failed_keys.push((k, errno));
    }
    rep.first_errors.push(format!(
        "{} expectation requests not done: {err}",
        rep.failed
    ));
    rep
}
