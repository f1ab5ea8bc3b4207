//! Bursts inside one round: asking the I/O layer to write mid-round, and knowing which sockets are full.
//!
//! One read of a publisher can route thousands of messages to one subscriber before the round's writes go out.
//! Its queue would then overflow (QoS 0 dropped, QoS 1/2 publishers paused) although its socket takes data. So
//! when `pump` stops at a full output buffer with messages still queued, and the socket is not known to be full,
//! the shard asks for a flush: `process` stops before the next packet (`ReadOutcome::Yield`, the rest kept in
//! the connection), the I/O layer writes the dirty connections and feeds the kept bytes again (or, when its
//! per-round budget is spent, stops reading so the backlog stays in the kernel, where TCP pushes back on the
//! publisher). A queue fills only behind a socket that does not take data: `send` returned EAGAIN and no write
//! emptied the output since. QoS 0 dropped otherwise is counted apart (`Stats::dropped_qos0_writable`).

use super::*;

/// One bit per connection slot: the socket refused bytes (EAGAIN) and has not been drained since.
#[derive(Debug, Default)]
pub(super) struct SendBlocked {
    bits: Vec<u64>,
}

impl SendBlocked {
    pub(super) fn set(&mut self, idx: u32, on: bool) {
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        if word >= self.bits.len() {
            if !on {
                return;
            }
            self.bits.resize(word + 1, 0);
        }
        if on {
            self.bits[word] |= 1 << bit;
        } else {
            self.bits[word] &= !(1 << bit);
        }
    }

    pub(super) fn get(&self, idx: u32) -> bool {
        self.bits
            .get((idx / 64) as usize)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }
}

impl Shard {
    /// The I/O layer: this connection's socket did not take all its writable output (EAGAIN). Until a write
    /// empties the output (`flushed`), its queue may fill and QoS 0 overflow counts as a full socket.
    pub fn send_blocked(&mut self, key: ConnKey) {
        if self.conns.get(key).is_some() {
            self.send_full.set(key.idx, true);
        }
    }

    /// Whether some connection's output is full while its queue still holds messages its socket could take:
    /// the I/O layer should write the dirty connections before reading more. Cleared by `take_dirty`.
    pub fn flush_wanted(&self) -> bool {
        self.flush_wanted
    }

    pub(super) fn is_send_blocked(&self, key: ConnKey) -> bool {
        self.send_full.get(key.idx)
    }

    /// `pump` stopped at the output bound with messages left: ask for a mid-round write unless the socket is
    /// full (then waiting for it is all anyone can do) or the output is held for the log (writing frees nothing).
    pub(super) fn want_flush(&mut self, key: ConnKey) {
        if self.flush_wanted || self.is_send_blocked(key) {
            return;
        }
        let Some(c) = self.conns.get(key) else {
            return;
        };
        if self.dur.writable(key, c.out_len()) > 0 {
            self.flush_wanted = true;
        }
    }
}
