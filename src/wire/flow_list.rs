//! A list of flows kept in their wire encoding, one after the other in one
//! buffer: about 40-60 bytes a flow where a `Vec<Flow>` takes over 150. A
//! table read of a million flows travels from the kernel worker to the
//! owner this way, so the read does not triple the daemon's memory.
//!
//! Owns: the buffer and its order. Must not: filter or judge flows (the
//! dump keeps what the caller accepts).

use super::compact::{put_flow, Reader};
use super::message::WireFlow;
use crate::flow::Flow;

/// Flows in their wire encoding, in the order pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowList {
    bytes: Vec<u8>,
    len: usize,
}

impl FlowList {
    pub fn push(&mut self, flow: &Flow) {
        put_flow(&mut self.bytes, &WireFlow::from(flow));
        self.len += 1;
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the encodings take.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes.len()
    }
}

impl FromIterator<Flow> for FlowList {
    fn from_iter<I: IntoIterator<Item = Flow>>(iter: I) -> FlowList {
        let mut list = FlowList::default();
        for flow in iter {
            list.push(&flow);
        }
        list
    }
}

/// The flows of a [`FlowList`], decoded one at a time.
pub struct FlowListIter {
    list: FlowList,
    at: usize,
    left: usize,
}

impl IntoIterator for FlowList {
    type Item = Flow;
    type IntoIter = FlowListIter;

    fn into_iter(self) -> FlowListIter {
        let left = self.len;
        FlowListIter {
            list: self,
            at: 0,
            left,
        }
    }
}

impl Iterator for FlowListIter {
    type Item = Flow;

    fn next(&mut self) -> Option<Flow> {
        let rest = self.list.bytes.get(self.at..)?;
        if self.left == 0 {
            return None;
        }
        let mut reader = Reader::new(rest);
        // The list wrote these bytes itself: an error means nothing more
        // can be read.
        match reader.flow() {
            Ok(wire) => {
                self.at += reader.position();
                self.left -= 1;
                Some(wire.into_flow())
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for FlowListIter {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::arb_flow;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn flows_come_back_as_pushed(flows in proptest::collection::vec(arb_flow(), 0..40)) {
            let list: FlowList = flows.iter().cloned().collect();
            prop_assert_eq!(list.len(), flows.len());
            let mut it = list.into_iter();
            prop_assert_eq!(it.len(), flows.len());
            let first = it.next();
            prop_assert_eq!(first.as_ref(), flows.first());
            prop_assert_eq!(it.len(), flows.len().saturating_sub(1));
            let rest: Vec<Flow> = it.collect();
            prop_assert_eq!(&rest[..], flows.get(1..).unwrap_or_default());
        }
    }

    #[test]
    fn a_cleared_list_is_empty_and_smaller_than_the_flows() {
        let flows: Vec<Flow> = (0..1000)
            .map(|i| crate::flow::test_flows::udp(i as u16))
            .collect();
        let mut list: FlowList = flows.iter().cloned().collect();
        assert!(list.encoded_bytes() * 3 < flows.len() * std::mem::size_of::<Flow>());
        list.clear();
        assert!(list.is_empty());
        assert_eq!(list.into_iter().count(), 0);
    }
}
