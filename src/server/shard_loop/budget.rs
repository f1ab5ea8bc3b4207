//! How much one round may read before its writes go out: the mid-round flushes the core asks for when a
//! destination's output fills (`ReadOutcome::Yield`, see `broker::shard::burst`).
//!
//! Each yield writes the dirty connections and goes on with the kept bytes. A round may do `FLUSHES_PER_ROUND`
//! of them; then it stops reading (sockets and the mesh), so what the destinations could not take this round
//! stays in the kernel, where TCP pushes back on the publishers, instead of overflowing a queue.

use std::cell::{Cell, RefMut};

use bytes::BytesMut;

use super::{ShardIo, F_YIELDED};
use crate::broker::message::ConnKey;
use crate::broker::shard::{ReadOutcome, Shard};

/// Mid-round flushes per round. A yield comes only after a full output buffer (`max_out_buffer`, 64 KiB by
/// default), so this bounds a round's output to about 4 MiB beyond its own end-of-round flush.
pub(super) const FLUSHES_PER_ROUND: u32 = 64;

#[derive(Debug)]
pub(super) struct RoundBudget {
    flushes_left: Cell<u32>,
}

impl RoundBudget {
    pub(super) fn new() -> Self {
        RoundBudget {
            flushes_left: Cell::new(FLUSHES_PER_ROUND),
        }
    }

    pub(super) fn start_round(&self) {
        self.flushes_left.set(FLUSHES_PER_ROUND);
    }

    /// One mid-round flush, if the round has any left.
    pub(super) fn take_flush(&self) -> bool {
        let left = self.flushes_left.get();
        self.flushes_left.set(left.saturating_sub(1));
        left > 0
    }

    /// No flush left: stop reading until the round's writes are out.
    pub(super) fn spent(&self) -> bool {
        self.flushes_left.get() == 0
    }
}

impl ShardIo {
    /// Write the dirty connections now, in the middle of a round, if the budget allows. False = stop reading.
    pub(super) fn flush_mid_round(&self) -> bool {
        if !self.budget.take_flush() {
            return false;
        }
        let mut keys = std::mem::take(&mut *self.mid_keys.borrow_mut());
        self.flush(&mut keys);
        *self.mid_keys.borrow_mut() = keys;
        true
    }

    /// `on_bytes`, and while the core yields for a full destination, a mid-round flush and on with the kept
    /// bytes. A yield left standing (budget spent) marks the connection `F_YIELDED`: its kept bytes are fed
    /// before it is read again.
    pub(super) fn feed<'a>(
        &'a self,
        mut core: RefMut<'a, Shard>,
        key: ConnKey,
        data: &mut BytesMut,
    ) -> (RefMut<'a, Shard>, ReadOutcome) {
        let mut outcome = core.on_bytes(key, data);
        while outcome == ReadOutcome::Yield {
            drop(core);
            let go_on = self.flush_mid_round();
            core = self.core.borrow_mut();
            if !go_on {
                self.set_flags(key, |f| *f |= F_YIELDED);
                break;
            }
            data.clear();
            outcome = core.on_bytes(key, data);
        }
        (core, outcome)
    }
}
