//! The optional Prometheus endpoint (`[metrics] listen = "ADDR:PORT"`):
//! `GET /metrics` answers with every counter of `-s`, per peer and per
//! link figures, the kernel table's use and the commit duration histogram.
//!
//! The parts: `server` (HTTP, with hyper, on a thread and runtime of its
//! own: a slow or hostile scraper never stalls the daemon's loop; a scrape
//! asks the daemon's owner task for a `StatsSnapshot`, the same value
//! `-s --json` renders), `render` (the metric families over a snapshot), `rows` (the plain
//! counters' names and help),
//! `exposition` (the text format) and `table` (the kernel table's use,
//! which `-s --json` shows too).
//!
//! Must not: count anything (the counters live where their events happen)
//! or touch the sync core.

pub mod exposition;
pub mod render;
pub mod rows;
pub mod server;
pub mod table;
