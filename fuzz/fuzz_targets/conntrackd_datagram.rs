//! Fuzz target `conntrackd_datagram`: the bytes go to
//! `ctsync::fuzz_entry::conntrackd_datagram`, which the stable test
//! `tests/fuzz_corpus.rs` also runs on every corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ctsync::fuzz_entry::conntrackd_datagram(data));
