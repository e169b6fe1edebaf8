//! Log lines for the events a failover turns on, found by comparing what
//! the sync core reports (peers, counters, the active link) with the last
//! look: a peer lost or back, a peer restarted, resyncs asked and
//! answered, bulks sent and received, the active sync link changing.
//!
//! Owns: remembering the last look and turning differences into notices
//! (a pure step, `Observer::look`), and their log lines (info, with counts
//! and durations as fields). Must not: log per flow, or change anything
//! in the core.

use super::{logging, Daemon};
use crate::sync::PeerStatus;
use std::collections::BTreeMap;

impl Daemon {
    /// Look at the core and log what changed since the last look (every
    /// link check, 250 ms).
    pub(super) fn log_failover_events(&mut self) {
        let stats = self.node.stats();
        let counters = Counters {
            resyncs_requested_sent: stats.resyncs_requested_sent,
            resyncs_requested_received: stats.resyncs_requested_received,
            bulks_sent: stats.bulks_sent,
            bulks_received: stats.bulks_received,
            bulk_swept: stats.bulk_swept,
            bulk_unproven: stats.bulk_unproven,
        };
        let peers = self.node.peers();
        let look = Look {
            now_ms: self.now_ms(),
            peers: &peers,
            counters,
            active_link: self.node.active_link(),
            internal_flows: self.node.internal().len(),
            send_queue: self.node.backlog().0,
        };
        for notice in self.observer.look(&look) {
            log(&notice);
        }
        let now_ms = self.now_ms();
        if let Some((count, total)) = self.observer.dropped_news(logging::dropped_lines(), now_ms) {
            // (This line may itself be dropped: hence at most once a minute.)
            tracing::warn!(
                dropped = count,
                total,
                "log lines dropped: the syslog socket was full or absent, or the log file's queue full"
            );
        }
    }
}

/// The core's counters the notices follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub resyncs_requested_sent: u64,
    pub resyncs_requested_received: u64,
    pub bulks_sent: u64,
    pub bulks_received: u64,
    pub bulk_swept: u64,
    pub bulk_unproven: u64,
}

/// What the daemon sees at one look.
#[derive(Debug)]
pub(super) struct Look<'a> {
    pub now_ms: u64,
    pub peers: &'a [PeerStatus],
    pub counters: Counters,
    pub active_link: Option<usize>,
    /// Flows in the internal cache (what a bulk we send carries).
    pub internal_flows: usize,
    /// Keys waiting in the send queue (a bulk we send is out when empty).
    pub send_queue: usize,
}

/// One event worth a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Notice {
    PeerNew {
        node: u32,
        link: Option<usize>,
    },
    PeerLost {
        node: u32,
        silent_ms: u64,
        flows: usize,
        link: Option<usize>,
    },
    PeerBack {
        node: u32,
        down_ms: u64,
        flows: usize,
        link: Option<usize>,
    },
    PeerRestarted {
        node: u32,
        flows: usize,
    },
    ResyncRequested {
        count: u64,
    },
    ResyncAsked {
        count: u64,
    },
    BulkSendStarted {
        flows: usize,
    },
    BulkSendDone {
        flows: usize,
        duration_ms: u64,
    },
    BulkReceived {
        count: u64,
        peer_flows: usize,
        swept: u64,
        unproven: u64,
    },
    LinkChanged {
        from: Option<usize>,
        to: Option<usize>,
    },
}

#[derive(Clone, Copy, Debug)]
struct PeerSeen {
    alive: bool,
    epoch: u64,
    /// When it was last seen going silent.
    lost_at_ms: u64,
}

/// The last look.
#[derive(Debug, Default)]
pub(super) struct Observer {
    looked: bool,
    peers: BTreeMap<u32, PeerSeen>,
    counters: Counters,
    active_link: Option<usize>,
    /// A bulk we send: when it started and the flows it carries.
    bulk_out: Option<(u64, usize)>,
    /// Log lines dropped, as last said, and when.
    dropped_lines: u64,
    dropped_said_ms: Option<u64>,
}

/// How often at most dropped log lines are reported.
const DROPPED_EVERY_MS: u64 = 60_000;

impl Observer {
    /// Log lines dropped since the last report, and in all, if there are
    /// new ones and the last report is a minute old.
    pub fn dropped_news(&mut self, total: u64, now_ms: u64) -> Option<(u64, u64)> {
        let quiet = self
            .dropped_said_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= DROPPED_EVERY_MS);
        if total <= self.dropped_lines || !quiet {
            return None;
        }
        let count = total - self.dropped_lines;
        self.dropped_lines = total;
        self.dropped_said_ms = Some(now_ms);
        Some((count, total))
    }

    /// Compare `look` with the last one; the first look only remembers.
    pub fn look(&mut self, look: &Look<'_>) -> Vec<Notice> {
        let mut out = Vec::new();
        let first = !self.looked;
        self.looked = true;
        let peer_flows: usize = look.peers.iter().map(|p| p.flows).sum();
        for p in look.peers {
            let prev = self.peers.get(&p.node_id).copied();
            let mut seen = prev.unwrap_or(PeerSeen {
                alive: false,
                epoch: p.epoch,
                lost_at_ms: look.now_ms,
            });
            match prev {
                None if p.alive && !first => out.push(Notice::PeerNew {
                    node: p.node_id,
                    link: look.active_link,
                }),
                Some(prev) if prev.alive && !p.alive => {
                    seen.lost_at_ms = look.now_ms;
                    out.push(Notice::PeerLost {
                        node: p.node_id,
                        silent_ms: look.now_ms.saturating_sub(p.last_heard_ms),
                        flows: p.flows,
                        link: self.active_link,
                    });
                }
                Some(prev) if !prev.alive && p.alive => out.push(Notice::PeerBack {
                    node: p.node_id,
                    down_ms: look.now_ms.saturating_sub(prev.lost_at_ms),
                    flows: p.flows,
                    link: look.active_link,
                }),
                _ => {}
            }
            if prev.is_some_and(|prev| prev.epoch != p.epoch) {
                out.push(Notice::PeerRestarted {
                    node: p.node_id,
                    flows: p.flows,
                });
            }
            seen.alive = p.alive;
            seen.epoch = p.epoch;
            self.peers.insert(p.node_id, seen);
        }
        self.peers
            .retain(|id, _| look.peers.iter().any(|p| p.node_id == *id));

        let (was, now) = (self.counters, look.counters);
        if !first {
            if now.resyncs_requested_sent > was.resyncs_requested_sent {
                out.push(Notice::ResyncRequested {
                    count: now.resyncs_requested_sent - was.resyncs_requested_sent,
                });
            }
            if now.resyncs_requested_received > was.resyncs_requested_received {
                out.push(Notice::ResyncAsked {
                    count: now.resyncs_requested_received - was.resyncs_requested_received,
                });
            }
            if now.bulks_sent > was.bulks_sent {
                self.bulk_out = Some((look.now_ms, look.internal_flows));
                out.push(Notice::BulkSendStarted {
                    flows: look.internal_flows,
                });
            }
            if now.bulks_received > was.bulks_received {
                out.push(Notice::BulkReceived {
                    count: now.bulks_received - was.bulks_received,
                    peer_flows,
                    swept: now.bulk_swept.saturating_sub(was.bulk_swept),
                    unproven: now.bulk_unproven.saturating_sub(was.bulk_unproven),
                });
            }
            if look.active_link != self.active_link {
                out.push(Notice::LinkChanged {
                    from: self.active_link,
                    to: look.active_link,
                });
            }
        }
        if let Some((since, flows)) = self.bulk_out {
            if look.send_queue == 0 {
                self.bulk_out = None;
                out.push(Notice::BulkSendDone {
                    flows,
                    duration_ms: look.now_ms.saturating_sub(since),
                });
            }
        }
        self.counters = now;
        self.active_link = look.active_link;
        out
    }
}

/// `Some(n)` as `n`, `None` as -1 (no usable link).
fn link_field(link: Option<usize>) -> i64 {
    link.and_then(|l| i64::try_from(l).ok()).unwrap_or(-1)
}

/// The log line of a notice.
pub(super) fn log(notice: &Notice) {
    match *notice {
        Notice::PeerNew { node, link } => {
            tracing::info!(peer = node, link = link_field(link), "peer heard")
        }
        Notice::PeerLost {
            node,
            silent_ms,
            flows,
            link,
        } => tracing::info!(
            peer = node,
            silent_ms,
            flows,
            link = link_field(link),
            "peer lost"
        ),
        Notice::PeerBack {
            node,
            down_ms,
            flows,
            link,
        } => tracing::info!(
            peer = node,
            down_ms,
            flows,
            link = link_field(link),
            "peer back"
        ),
        Notice::PeerRestarted { node, flows } => {
            tracing::info!(peer = node, flows, "peer restarted (new epoch)")
        }
        Notice::ResyncRequested { count } => {
            tracing::info!(count, "resync requested from the peers")
        }
        Notice::ResyncAsked { count } => {
            tracing::info!(count, "resync request received: sending a bulk")
        }
        Notice::BulkSendStarted { flows } => tracing::info!(flows, "bulk send started"),
        Notice::BulkSendDone { flows, duration_ms } => {
            tracing::info!(flows, duration_ms, "bulk send queued out")
        }
        Notice::BulkReceived {
            count,
            peer_flows,
            swept,
            unproven,
        } => tracing::info!(
            count,
            peer_flows,
            swept,
            unproven,
            "bulk received from a peer"
        ),
        Notice::LinkChanged { from, to } => match (from, to) {
            (Some(from), Some(to)) => tracing::info!(from, to, "sync link failover"),
            (None, Some(to)) => tracing::info!(link = to, "sync link active"),
            (Some(from), None) => {
                tracing::info!(from, "no sync link usable (nothing heard on any)")
            }
            (None, None) => {}
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node_id: u32, alive: bool, last_heard_ms: u64, epoch: u64) -> PeerStatus {
        PeerStatus {
            node_id,
            epoch,
            alive,
            last_heard_ms,
            expected_seq: 0,
            acked_seq: 0,
            flows: 10,
            reordered: 0,
            rx_lag: 0,
            unacked: 0,
            counts: Default::default(),
        }
    }

    fn look(
        now_ms: u64,
        peers: &[PeerStatus],
        counters: Counters,
        link: Option<usize>,
    ) -> Look<'_> {
        Look {
            now_ms,
            peers,
            counters,
            active_link: link,
            internal_flows: 500,
            send_queue: 0,
        }
    }

    #[test]
    fn a_peer_lost_and_back_is_said_once_each_with_durations() {
        let mut o = Observer::default();
        let c = Counters::default();
        assert_eq!(o.look(&look(0, &[peer(2, true, 0, 1)], c, Some(0))), vec![]);
        assert_eq!(
            o.look(&look(250, &[peer(2, true, 200, 1)], c, Some(0))),
            vec![]
        );
        let lost = o.look(&look(3_000, &[peer(2, false, 200, 1)], c, None));
        assert_eq!(
            lost,
            vec![
                Notice::PeerLost {
                    node: 2,
                    silent_ms: 2_800,
                    flows: 10,
                    link: Some(0)
                },
                Notice::LinkChanged {
                    from: Some(0),
                    to: None
                }
            ]
        );
        assert_eq!(
            o.look(&look(3_250, &[peer(2, false, 200, 1)], c, None)),
            vec![]
        );
        let back = o.look(&look(10_000, &[peer(2, true, 9_990, 1)], c, Some(1)));
        assert_eq!(
            back,
            vec![
                Notice::PeerBack {
                    node: 2,
                    down_ms: 7_000,
                    flows: 10,
                    link: Some(1)
                },
                Notice::LinkChanged {
                    from: None,
                    to: Some(1)
                }
            ]
        );
    }

    #[test]
    fn new_peers_restarts_and_link_failover() {
        let mut o = Observer::default();
        let c = Counters::default();
        o.look(&look(0, &[], c, None));
        assert_eq!(
            o.look(&look(250, &[peer(3, true, 240, 7)], c, Some(0))),
            vec![
                Notice::PeerNew {
                    node: 3,
                    link: Some(0)
                },
                Notice::LinkChanged {
                    from: None,
                    to: Some(0)
                }
            ]
        );
        assert_eq!(
            o.look(&look(500, &[peer(3, true, 490, 8)], c, Some(1))),
            vec![
                Notice::PeerRestarted { node: 3, flows: 10 },
                Notice::LinkChanged {
                    from: Some(0),
                    to: Some(1)
                }
            ]
        );
    }

    #[test]
    fn resyncs_and_bulks_are_counted_from_the_core() {
        let mut o = Observer::default();
        let peers = [peer(2, true, 0, 1)];
        let mut c = Counters::default();
        o.look(&look(0, &peers, c, Some(0)));
        c.resyncs_requested_sent = 1;
        c.resyncs_requested_received = 2;
        c.bulks_sent = 1;
        c.bulks_received = 1;
        c.bulk_swept = 1;
        let mut l = look(250, &peers, c, Some(0));
        l.send_queue = 400;
        assert_eq!(
            o.look(&l),
            vec![
                Notice::ResyncRequested { count: 1 },
                Notice::ResyncAsked { count: 2 },
                Notice::BulkSendStarted { flows: 500 },
                Notice::BulkReceived {
                    count: 1,
                    peer_flows: 10,
                    swept: 1,
                    unproven: 0
                },
            ]
        );
        // The queue drains: the bulk is out.
        assert_eq!(
            o.look(&look(1_250, &peers, c, Some(0))),
            vec![Notice::BulkSendDone {
                flows: 500,
                duration_ms: 1_000
            }]
        );
        assert_eq!(o.look(&look(1_500, &peers, c, Some(0))), vec![]);
    }

    #[test]
    fn dropped_log_lines_are_reported_at_most_once_a_minute() {
        let mut o = Observer::default();
        assert_eq!(o.dropped_news(0, 0), None);
        assert_eq!(o.dropped_news(3, 250), Some((3, 3)));
        // The report itself may be dropped: no report of it for a minute.
        assert_eq!(o.dropped_news(4, 500), None);
        assert_eq!(o.dropped_news(9, 30_000), None);
        assert_eq!(o.dropped_news(9, 60_250), Some((6, 9)));
        assert_eq!(o.dropped_news(9, 200_000), None);
    }

    #[test]
    fn the_first_look_only_remembers() {
        let mut o = Observer::default();
        let c = Counters {
            bulks_sent: 5,
            ..Counters::default()
        };
        assert_eq!(o.look(&look(0, &[peer(2, true, 0, 1)], c, Some(0))), vec![]);
    }
}
