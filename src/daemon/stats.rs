//! The `-s` snapshot: every area's counters, gathered from where they are
//! kept at one instant.
//!
//! Owns: assembling `counters::StatsSnapshot` from the core's, the
//! daemon's, warm standby's and the control server's structs. Must not:
//! count (each area counts where its events happen) or render.

use super::Daemon;
use crate::cache::FlowCache;
use crate::counters::{
    AuthBlock, CacheBlock, Digests, KeyBlock, LinkBlock, PeerBlock, QueueLengths, StatsSnapshot,
};
use crate::transport::LinkKind;
use std::sync::atomic::Ordering;

impl Daemon {
    /// Everything `-s` prints, gathered now.
    pub(super) fn snapshot(&self) -> StatsSnapshot {
        let sync = self.node.stats().clone();
        let mut external = CacheBlock::default();
        for cache in self.node.external().values() {
            add_cache(&mut external, cache);
        }
        let mut internal = CacheBlock::default();
        add_cache(&mut internal, self.node.internal());
        let active_link = self.node.active_link();
        let links = self
            .links
            .iter()
            .enumerate()
            .map(|(i, link)| {
                let counters = sync.links.get(i).cloned().unwrap_or_default();
                LinkBlock {
                    transport: match link.spec.kind {
                        LinkKind::Udp { .. } => "UDP".into(),
                        LinkKind::Multicast { .. } => "multicast".into(),
                    },
                    device: link.spec.interface.clone().unwrap_or_default(),
                    active: active_link == Some(i),
                    up: counters.up,
                    bytes_sent: counters.sent_bytes,
                    bytes_recv: counters.recv_bytes,
                    packets_sent: counters.sent_packets,
                    packets_recv: counters.recv_packets,
                    errors_send: counters.send_errors,
                    errors_recv: counters.errors,
                }
            })
            .collect();
        let now_ms = self.now_ms();
        let statuses = self.node.peers();
        let reorder = statuses.iter().map(|p| p.reordered as u64).sum();
        let peers = statuses
            .into_iter()
            .map(|p| PeerBlock {
                node_id: p.node_id,
                epoch: p.epoch,
                alive: p.alive,
                flows: p.flows as u64,
                expected_seq: p.expected_seq,
                last_heard_ms_ago: now_ms.saturating_sub(p.last_heard_ms),
                reordered: p.reordered as u64,
                rx_lag: u64::from(p.rx_lag),
                unacked: u64::from(p.unacked),
                counts: p.counts,
            })
            .collect();
        let (send_queue, resend_window) = self.node.backlog();
        let mut commit = self.commit_counters;
        if commit.running {
            commit.done = self.commit_progress.load(Ordering::Relaxed);
        }
        let expect_block = |c: &crate::expect_cache::ExpectCache| {
            let s = c.stats();
            CacheBlock {
                active: c.len() as u64,
                counts: crate::cache::CacheStats {
                    created: s.created,
                    updated: s.updated,
                    destroyed: s.destroyed,
                    ..Default::default()
                },
            }
        };
        let mut expect_external = CacheBlock::default();
        for (_, cache) in self.node.external_expectations() {
            let b = expect_block(cache);
            expect_external.active += b.active;
            expect_external.counts.add(&b.counts);
        }
        let expectations = crate::counters::ExpectBlock {
            enabled: !self.config.sync.expectations.is_off(),
            internal: expect_block(self.node.internal_expectations()),
            external: expect_external,
            committed: self.commit_counters.expectations_ok,
            commit_failed: self.commit_counters.expectations_failed,
            refused_full: self.node.expectations_refused(),
        };
        StatsSnapshot {
            conntrackd_link: self.cd.as_ref().map(|cd| cd.block(now_ms)),
            expectations,
            uptime_s: self.started.elapsed().as_secs(),
            internal,
            external,
            links,
            peers,
            network: self.network_counters,
            kernel: self.kernel_counters,
            commit,
            warm: self.warm.as_ref().map(|w| w.counters()),
            queues: QueueLengths {
                send_queue: send_queue as u64,
                resend_window: resend_window as u64,
                window: self.node.config().window as u64,
                reorder,
            },
            digests: Digests {
                internal: self.node.internal().digest(),
                external: self
                    .node
                    .external()
                    .values()
                    .fold(0, |acc, cache| acc ^ cache.digest()),
                paused: self.node.digests_paused(),
            },
            control: self.control_counters.read(),
            auth: self.auth_block(),
            table: crate::metrics::table::read_use(),
            sync,
        }
    }
}

impl Daemon {
    fn auth_block(&self) -> AuthBlock {
        let keys = self.node.keys();
        AuthBlock {
            enabled: keys.is_some(),
            keys: keys
                .map(|k| k.summary())
                .unwrap_or_default()
                .into_iter()
                .map(|(id, check)| KeyBlock {
                    id,
                    check: format!("{check:08x}"),
                })
                .collect(),
            send_key: keys.map(|k| k.send_key().id),
            counts: self.node.auth_stats().clone(),
        }
    }
}

fn add_cache(block: &mut CacheBlock, cache: &FlowCache) {
    block.active += cache.len() as u64;
    block.counts.add(cache.stats());
}
