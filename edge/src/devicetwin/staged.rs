//! A device's writes in flight: the values of its reports and desired values that are queued
//! for the database and not yet settled, each with the write that carries it.
//!
//! A device's writes are put in order when they are queued, not when they commit. Under the
//! device's write guard a write is made on top of what is committed (`Entry::properties`) and
//! of what the writes queued before it carry (here: its versions follow theirs), then queued;
//! the guard is let go before the commit, so the device's next report is made and queued at
//! once and shares the commit instead of waiting for it. Each write's settle hook runs on the
//! database's writer thread in queue order: it applies the write's values to memory if it was
//! stored and takes its slots out of here either way (unless a later write of the same slot
//! has replaced them), so memory ends as the disk does.
//!
//! A device's state is staged the same way: the state write in flight, if one is, is what the
//! next state change is compared with (an unchanged state is not written again).
//!
//! A write refused alone (its statements failed) leaves the writes queued after it standing:
//! each stores only the side of the properties it sets, never a whole row made from what is in
//! flight, so none of them carries the refused value to the disk. A later write's version may
//! skip the refused one's number; it never repeats one.

use std::collections::BTreeMap;

use wedge_core::twin::{DeviceState, StampedValue, TwinSide};

/// The values in flight of one device, by side and property.
#[derive(Debug, Clone, Default)]
pub(super) struct Staged {
    reported: BTreeMap<String, (u64, StampedValue)>,
    desired: BTreeMap<String, (u64, StampedValue)>,
    /// The last state write in flight: its write, the state and when last online.
    state: Option<(u64, DeviceState, Option<String>)>,
}

impl Staged {
    fn side(&self, side: TwinSide) -> &BTreeMap<String, (u64, StampedValue)> {
        match side {
            TwinSide::Reported => &self.reported,
            TwinSide::Desired => &self.desired,
        }
    }

    fn side_mut(&mut self, side: TwinSide) -> &mut BTreeMap<String, (u64, StampedValue)> {
        match side {
            TwinSide::Reported => &mut self.reported,
            TwinSide::Desired => &mut self.desired,
        }
    }

    /// The value the last write in flight sets on `property`'s `side`, if one does.
    pub(super) fn get(&self, side: TwinSide, property: &str) -> Option<&StampedValue> {
        self.side(side).get(property).map(|(_, value)| value)
    }

    /// Notes that `write` sets `property`'s `side` to `value`.
    pub(super) fn stage(
        &mut self,
        side: TwinSide,
        property: &str,
        write: u64,
        value: StampedValue,
    ) {
        self.side_mut(side)
            .insert(property.to_owned(), (write, value));
    }

    /// `write` has settled: its value of `property`'s `side` leaves, unless a later write's
    /// replaced it.
    pub(super) fn unstage(&mut self, side: TwinSide, property: &str, write: u64) {
        let slots = self.side_mut(side);
        if slots.get(property).is_some_and(|(w, _)| *w == write) {
            slots.remove(property);
        }
    }

    /// The state (and when last online) the last state write in flight sets, if one does.
    pub(super) fn state(&self) -> Option<(DeviceState, Option<&String>)> {
        self.state
            .as_ref()
            .map(|(_, state, last)| (*state, last.as_ref()))
    }

    /// Notes that `write` sets the device's state.
    pub(super) fn stage_state(&mut self, write: u64, state: DeviceState, last: Option<String>) {
        self.state = Some((write, state, last));
    }

    /// State `write` has settled: its state leaves, unless a later write's replaced it.
    pub(super) fn unstage_state(&mut self, write: u64) {
        if self.state.as_ref().is_some_and(|(w, _, _)| *w == write) {
            self.state = None;
        }
    }

    /// Whether no write of the device is in flight.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.reported.is_empty() && self.desired.is_empty() && self.state.is_none()
    }
}

#[cfg(test)]
mod tests {
    use wedge_core::twin::TwinValue;

    use super::*;

    fn value(v: i64, version: u64) -> StampedValue {
        StampedValue {
            value: TwinValue::Integer(v),
            timestamp_ms: 0,
            version,
        }
    }

    #[test]
    fn a_settled_write_leaves_only_the_slots_no_later_write_replaced() {
        let mut staged = Staged::default();
        staged.stage(TwinSide::Reported, "t", 1, value(1, 1));
        staged.stage(TwinSide::Desired, "t", 1, value(5, 1));
        staged.stage(TwinSide::Reported, "t", 2, value(2, 2));
        staged.unstage(TwinSide::Reported, "t", 1);
        staged.unstage(TwinSide::Desired, "t", 1);
        assert_eq!(
            staged.get(TwinSide::Reported, "t"),
            Some(&value(2, 2)),
            "the later write's"
        );
        assert_eq!(staged.get(TwinSide::Desired, "t"), None);
        staged.unstage(TwinSide::Reported, "t", 2);
        assert!(staged.is_empty());
    }
}
