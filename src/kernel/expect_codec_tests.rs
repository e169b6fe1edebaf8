//! Golden-byte and decoding tests of the expectation codec (little-endian
//! netlink headers).
#![cfg(target_endian = "little")]
