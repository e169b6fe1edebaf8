//! The sync links as the node sees them: which ones datagrams arrived on
//! lately, which ones the daemon reports down, and so which one data goes
//! out on (keepalives go out on all).
//!
//! Owns: per link, when a datagram last arrived and whether its interface
//! is down. Must not: send or count traffic (the Node does), or read the
//! clock (times are arguments).

#[derive(Clone, Copy, Debug, Default)]
struct Link {
    last_recv_ms: Option<u64>,
    /// True while the daemon reports the link's interface down.
    carrier_lost: bool,
}

impl Link {
    /// Usable for data: its interface is up and datagrams arrived lately.
    fn usable(&self, now: u64, timeout_ms: u64) -> bool {
        !self.carrier_lost
            && self
                .last_recv_ms
                .is_some_and(|t| now.saturating_sub(t) < timeout_ms)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Links {
    links: Vec<Link>,
}

impl Links {
    pub fn new(n: usize) -> Links {
        Links {
            links: vec![Link::default(); n],
        }
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// A datagram arrived on `link`.
    pub fn heard(&mut self, link: usize, now: u64) {
        if let Some(l) = self.links.get_mut(link) {
            l.last_recv_ms = Some(now);
        }
    }

    /// The daemon's view of a link's interface: one that went down carries
    /// no data until it is up again and datagrams arrive on it.
    pub fn set_carrier(&mut self, link: usize, up: bool) {
        if let Some(l) = self.links.get_mut(link) {
            if !up {
                l.last_recv_ms = None;
            }
            l.carrier_lost = !up;
        }
    }

    pub fn usable(&self, link: usize, now: u64, timeout_ms: u64) -> bool {
        self.links
            .get(link)
            .is_some_and(|l| l.usable(now, timeout_ms))
    }

    /// The link data goes out on now, if one is usable: the lowest.
    pub fn active(&self, now: u64, timeout_ms: u64) -> Option<usize> {
        self.links.iter().position(|l| l.usable(now, timeout_ms))
    }

    /// Links data goes out on: the lowest one that is usable, or else every
    /// link whose interface is up (or every link, if none is).
    pub fn data_links(&self, now: u64, timeout_ms: u64) -> Vec<usize> {
        if let Some(i) = self.active(now, timeout_ms) {
            return vec![i];
        }
        let with_carrier: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links.get(i).is_some_and(|l| !l.carrier_lost))
            .collect();
        if with_carrier.is_empty() {
            (0..self.links.len()).collect()
        } else {
            with_carrier
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_takes_the_lowest_usable_link_else_every_one_with_carrier() {
        let mut l = Links::new(3);
        assert_eq!(l.active(0, 5_000), None);
        assert_eq!(l.data_links(0, 5_000), vec![0, 1, 2], "nothing heard yet");
        l.heard(2, 100);
        l.heard(1, 200);
        assert_eq!(l.data_links(300, 5_000), vec![1]);
        // Link 1 falls silent: link 2 is still heard from.
        l.heard(2, 5_100);
        assert_eq!(l.active(5_200, 5_000), Some(2));
        // Interfaces down: no data there, even if heard.
        l.set_carrier(2, false);
        assert!(!l.usable(2, 5_200, 5_000));
        assert_eq!(l.data_links(5_200, 5_000), vec![0, 1]);
        l.set_carrier(0, false);
        l.set_carrier(1, false);
        assert_eq!(
            l.data_links(5_200, 5_000),
            vec![0, 1, 2],
            "all down: try all"
        );
        // Up again, it waits to be heard from.
        l.set_carrier(2, true);
        assert_eq!(l.active(5_300, 5_000), None);
        l.heard(2, 5_400);
        assert_eq!(l.active(5_400, 5_000), Some(2));
    }
}
