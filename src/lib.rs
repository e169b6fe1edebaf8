//! ctsync: keeps the conntrack tables of paired or clustered Linux firewalls
//! in sync. The library holds every layer; `src/main.rs` is the thin binary.
//!
//! Layers (see DESIGN.md): `flow` and `expect` (model), `kernel` (ctnetlink), `cache`,
//! `filter`, `wire` (sync-protocol bytes), `sync` (sans-IO replication),
//! `transport` (sockets), `control` (UNIX socket and CLI), `config`,
//! `daemon` (the tokio wiring), `doctor` (checks of the machine and the
//! daemon), `metrics` (the Prometheus endpoint). `fuzz_entry` feeds outside bytes to the
//! decoders for the fuzz targets and their corpus test.

pub mod auth;
pub mod cache;
pub mod config;
pub mod conntrackd_conf;
pub mod conntrackd_wire;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod doctor;
pub mod expect;
pub mod expect_cache;
pub mod filter;
pub mod flow;
pub mod fuzz_entry;
pub mod kernel;
pub mod metrics;
pub mod process;
pub mod sharded_table;
pub mod sim;
pub mod sync;
pub mod transport;
pub mod wire;
