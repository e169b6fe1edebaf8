//! Fuzz target `ctnetlink_expect`: the bytes go to `ctsync::fuzz_entry::ctnetlink_expect`, which the
//! stable test `tests/fuzz_corpus.rs` also runs on every corpus file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ctsync::fuzz_entry::ctnetlink_expect(data));
