//! The peer side of the bookkeeping: numbering messages sent to each peer, what each peer confirmed, and
//! what this shard owes the peers it received numbered messages from.

use std::collections::VecDeque;

use super::{Durability, PeerNeed};
use crate::store::Lsn;

/// What this shard knows about the messages it numbered for one peer.
#[derive(Default)]
pub(super) struct SentTo {
    /// Last sequence number given out.
    pub(super) sent: u64,
    /// The peer handled every message up to this one.
    pub(super) handled: u64,
    /// The peer's records for every message up to this one are durable.
    pub(super) durable: u64,
    /// Ranges (inclusive, ascending, disjoint) of handled messages that wrote records the peer has not yet
    /// reported durable.
    pub(super) unsynced: VecDeque<(u64, u64)>,
}

impl SentTo {
    /// Every message of `lo..=hi` was handled and wrote nothing, or wrote records that are durable.
    pub(super) fn covers(&self, lo: u64, hi: u64) -> bool {
        if self.handled < hi {
            return false;
        }
        let first = self.unsynced.partition_point(|&(_, h)| h < lo);
        self.unsynced.get(first).map_or(true, |&(l, _)| l > hi)
    }
}

/// What this shard owes one peer for the messages it received from it.
#[derive(Default)]
pub(super) struct ReceivedFrom {
    /// Highest sequence number handled in the current round (0 = none).
    pub(super) seq: u64,
    /// A message of the current round wrote nothing: the round is answered with `Handled`, which releases it.
    pub(super) clean_in_round: bool,
    /// A message of the current round wrote records: the round owes a `Durable`.
    pub(super) wrote_in_round: bool,
    /// Ranges of sequence numbers whose messages appended records to our log, not yet sent in a `Handled` nor
    /// covered by a `Durable`. A round whose messages all wrote sends no `Handled` (its `Durable` will say it
    /// all); its ranges go with the next `Handled`.
    pub(super) written: Vec<(u64, u64)>,
    /// `Durable { seq }` to send once the LSN is durable, in order.
    pub(super) owed: VecDeque<(u64, Lsn)>,
}

impl Durability {
    /// Sequence number for a QoS>0 message forwarded to `peer`.
    pub fn next_seq(&mut self, peer: u16) -> u64 {
        self.work += 1;
        let s = &mut self.sent_to[peer as usize].sent;
        *s += 1;
        let seq = *s;
        match self.pending.iter_mut().find(|n| n.peer == peer) {
            Some(n) => n.hi = seq,
            None => self.pending.push(PeerNeed {
                peer,
                lo: seq,
                hi: seq,
            }),
        }
        seq
    }

    /// `peer` handled the message we numbered `seq` for it and, if it wrote records, they are durable.
    pub fn peer_covers(&self, peer: u16, seq: u64) -> bool {
        self.sent_to
            .get(peer as usize)
            .is_some_and(|s| s.covers(seq, seq))
    }

    /// A numbered message from `from` was handled; `appended` says whether it wrote any record to our log.
    pub fn on_peer_msg(&mut self, from: u16, seq: u64, appended: bool) {
        let r = &mut self.received_from[from as usize];
        r.seq = r.seq.max(seq);
        if appended {
            r.wrote_in_round = true;
            match r.written.last_mut() {
                Some(last) if last.1 + 1 == seq => last.1 = seq,
                _ => r.written.push((seq, seq)),
            }
        } else {
            r.clean_in_round = true;
        }
    }

    /// A peer handled everything we numbered for it up to `upto`; the messages in `written` wrote records to its
    /// log that are not durable yet.
    pub fn on_peer_handled(&mut self, from: u16, upto: u64, written: &[(u64, u64)]) {
        let s = &mut self.sent_to[from as usize];
        s.handled = s.handled.max(upto);
        for &(lo, hi) in written {
            // Never wait again for what a `Durable` already covered (the peer prunes these too).
            let lo = lo.max(s.durable + 1);
            if lo > hi {
                continue;
            }
            match s.unsynced.back_mut() {
                Some(last) if last.1 + 1 == lo => last.1 = hi,
                _ => s.unsynced.push_back((lo, hi)),
            }
        }
        self.peers_moved = true;
    }

    /// The peer handled every message we numbered for it up to `seq`, and their records are durable.
    pub fn on_peer_durable(&mut self, from: u16, seq: u64) {
        let s = &mut self.sent_to[from as usize];
        s.handled = s.handled.max(seq);
        s.durable = s.durable.max(seq);
        let u = &mut s.unsynced;
        while u.front().is_some_and(|&(_, hi)| hi <= seq) {
            u.pop_front();
        }
        if let Some(first) = u.front_mut() {
            first.0 = first.0.max(seq + 1);
        }
        self.peers_moved = true;
    }

    /// End of a round whose records were committed up to `committed`: each peer we received numbered messages
    /// from is told at once which it handled and which wrote records (`handled(peer, upto, written)`), unless
    /// all of them wrote records: then the `Durable` that follows the sync says everything.
    pub fn end_round(
        &mut self,
        committed: Lsn,
        mut handled: impl FnMut(u16, u64, Box<[(u64, u64)]>),
    ) {
        for (peer, r) in self.received_from.iter_mut().enumerate() {
            let upto = std::mem::take(&mut r.seq);
            if upto == 0 {
                continue;
            }
            if std::mem::take(&mut r.wrote_in_round) {
                let last = r.written.last().map_or(upto, |&(_, hi)| hi);
                r.owed.push_back((last, committed));
            }
            if std::mem::take(&mut r.clean_in_round) {
                let written = std::mem::take(&mut r.written).into_boxed_slice();
                handled(peer as u16, upto, written);
            }
        }
        if std::mem::take(&mut self.local_hold_this_round) {
            self.lsn_barriers.push_back((self.round, committed));
        }
        self.round += 1;
    }
}
