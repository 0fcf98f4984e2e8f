//! The ordering rule: on one connection, each sender's frame ids strictly increase.
//!
//! A frame whose id is not above the last one accepted is a replay or a reordering (a buggy or
//! hostile peer, or a proxy gone wrong). It is refused and not applied; the session goes on, and
//! whatever the refused frame carried arrives again through the acknowledgement and resync rules.

/// The last frame id accepted from the peer.
#[derive(Debug, Default, Clone, Copy)]
pub struct InboundOrder {
    last: u64,
}

/// A frame arrived out of order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("frame {id} arrived after frame {last}: ids must increase")]
pub struct OutOfOrder {
    /// The frame's id.
    pub id: u64,
    /// The last id accepted.
    pub last: u64,
}

impl InboundOrder {
    /// Accepts `id` if it is above every id accepted so far.
    pub fn accept(&mut self, id: u64) -> Result<(), OutOfOrder> {
        if id <= self.last {
            return Err(OutOfOrder {
                id,
                last: self.last,
            });
        }
        self.last = id;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_increase_and_gaps_are_fine() {
        let mut order = InboundOrder::default();
        assert!(order.accept(1).is_ok());
        assert!(order.accept(5).is_ok());
        assert_eq!(order.accept(5), Err(OutOfOrder { id: 5, last: 5 }));
        assert_eq!(order.accept(2), Err(OutOfOrder { id: 2, last: 5 }));
        assert!(
            order.accept(6).is_ok(),
            "a refused frame does not stop the next"
        );
    }
}
