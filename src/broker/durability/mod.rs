//! Write-ahead acknowledgements: which bytes of a connection's output must wait until what they acknowledge is
//! durable, here and on the other shards.
//!
//! A PUBACK/PUBREC/PUBCOMP (or a first QoS 2 PUBLISH to a persistent subscriber) may only leave once every log
//! record it vouches for is on disk. Those records can be in this shard's log (the publisher's session, local
//! subscribers) or in a peer's (subscribers on other shards). Per round the shard core:
//! - marks a *hold* at the current end of a connection's output before writing such a packet; the I/O layer
//!   writes only the bytes before the first unreleased hold (packet order on the wire is kept). The hold
//!   remembers the sequence numbers of the messages its publish forwarded to each peer (`next_seq`);
//! - as a receiver, answers each round's numbered messages at once with `Handled { upto, written }` (every
//!   sequence number up to `upto` was handled; those in `written` appended records to its log) and, once those
//!   records are durable, with `Durable { seq }` (every record written for sequence numbers up to `seq` is on
//!   disk; it also implies `Handled` up to `seq`, so a round whose messages all wrote sends only that). A
//!   message that wrote nothing there (no persistent subscriber) so waits for no sync, even behind one that
//!   did: clean-session traffic between shards pays only the mesh round trip;
//! - ends the round (`end_round`) with the LSN of its commit. A hold is released when every peer message it
//!   vouches for was handled and, if it wrote there, is durable there, and, for a hold that vouches for records
//!   in this shard's log (`local`), when its round's LSN is durable (`poll`). Holds of one connection are
//!   released in order.
//!
//! Pure bookkeeping, no I/O. Each shard-to-shard channel is FIFO: a `Handled` arrives before the `Durable` that
//! covers it, and a `LogRefused` before both.

use std::collections::{HashMap, VecDeque};

use crate::broker::message::ConnKey;
use crate::store::Lsn;

/// Sequence numbers a hold needs confirmed by one peer: its messages to that peer are numbered within
/// `lo..=hi` (exactly those for a single publish; a conservative span when one round's holds are merged).
#[derive(Clone, Copy, Debug, PartialEq)]
struct PeerNeed {
    peer: u16,
    lo: u64,
    hi: u64,
}

/// One unreleased hold in a connection's output.
struct Hold {
    /// Offset in the output buffer: bytes from here on wait.
    offset: usize,
    round: u64,
    /// What it vouches for includes records in this shard's log (else only peers').
    local: bool,
    /// Peer messages it vouches for; empty for most holds, one entry per peer reached otherwise.
    peers: Vec<PeerNeed>,
    /// PUBACKs/PUBCOMPs written behind this hold (before the next one): publishes the client still counts
    /// against our Receive Maximum.
    acks: u32,
}

/// A connection's unreleased holds, oldest first, and the sum of their `acks` (kept here so counting a held
/// acknowledgement costs no second lookup on the hot path).
#[derive(Default)]
struct Marks {
    holds: VecDeque<Hold>,
    acks: u32,
}

mod peers;

use peers::{ReceivedFrom, SentTo};

pub struct Durability {
    round: u64,
    /// ... a hold of the current round vouches for local records, so the round needs an LSN barrier.
    local_hold_this_round: bool,
    /// (round, commit LSN) of rounds with local holds, waiting for our log.
    lsn_barriers: VecDeque<(u64, Lsn)>,
    /// Round of the last satisfied LSN barrier: local records of rounds up to it are durable. Only grows.
    lsn_round: u64,
    /// A peer's `Handled` or `Durable` arrived since holds were last walked.
    peers_moved: bool,
    sent_to: Vec<SentTo>,
    received_from: Vec<ReceivedFrom>,
    /// Peer messages numbered since the last `hold`/`start_publish`: what the next hold vouches for.
    pending: Vec<PeerNeed>,
    /// Connection -> its unreleased holds. Only connections with a hold have an entry, so idle connections cost
    /// nothing here.
    held: HashMap<ConnKey, Marks>,
    /// Records appended plus sequence numbers sent: a publish that changed neither needs no hold.
    work: u64,
    /// Records appended: a publish that appended none needs no local durability, only its peers'.
    appends: u64,
    /// The durable LSN seen by the last `poll`.
    polled: Lsn,
}

impl Durability {
    pub fn new(shards: u16) -> Self {
        let n = shards.max(1) as usize;
        Durability {
            round: 1,
            local_hold_this_round: false,
            lsn_barriers: VecDeque::new(),
            lsn_round: 0,
            peers_moved: false,
            sent_to: (0..n).map(|_| SentTo::default()).collect(),
            received_from: (0..n).map(|_| ReceivedFrom::default()).collect(),
            pending: Vec::new(),
            held: HashMap::new(),
            work: 0,
            appends: 0,
            polled: Lsn(0),
        }
    }

    /// Entries waiting for a disk, ours or a peer's: LSN barriers, confirmations owed to peers and peers'
    /// unsynced ranges. Each grows by at most one per round (per peer); the shard stops reading its sockets when
    /// the sum passes `Shard`'s bound, so a stalled disk cannot grow it without limit.
    pub fn backlog(&self) -> usize {
        self.lsn_barriers.len()
            + self
                .received_from
                .iter()
                .map(|r| r.owed.len())
                .sum::<usize>()
            + self.sent_to.iter().map(|s| s.unsynced.len()).sum::<usize>()
    }

    /// Counter that moves whenever something was appended or numbered for a peer.
    pub fn work(&self) -> u64 {
        self.work
    }

    /// Counter that moves whenever a record was appended to this shard's log.
    pub fn appends(&self) -> u64 {
        self.appends
    }

    pub fn note_append(&mut self) {
        self.work += 1;
        self.appends += 1;
    }

    /// A client's publish starts: peer messages numbered from here on belong to its hold.
    pub fn start_publish(&mut self) {
        self.pending.clear();
    }

    /// Hold everything written to `conn` from `out_len` on until the peer messages numbered since the publish
    /// started are confirmed and, if `local`, until this round is durable in our own log too.
    pub fn hold(&mut self, conn: ConnKey, out_len: usize, local: bool) {
        self.local_hold_this_round |= local;
        let peers = std::mem::take(&mut self.pending);
        let marks = &mut self.held.entry(conn).or_default().holds;
        // An earlier hold of this round already covers everything after it: it now needs what both need.
        if let Some(last) = marks.back_mut().filter(|h| h.round == self.round) {
            last.local |= local;
            for n in peers {
                match last.peers.iter_mut().find(|m| m.peer == n.peer) {
                    Some(m) => {
                        m.lo = m.lo.min(n.lo);
                        m.hi = m.hi.max(n.hi);
                    }
                    None => last.peers.push(n),
                }
            }
            return;
        }
        marks.push_back(Hold {
            offset: out_len,
            round: self.round,
            local,
            peers,
            acks: 0,
        });
    }

    /// A PUBACK or PUBCOMP was written to `conn`: if it waits behind a hold, the client's publish is not yet
    /// acknowledged (it still counts against the Receive Maximum we announced).
    pub fn note_ack(&mut self, conn: ConnKey) {
        if let Some(m) = self.held.get_mut(&conn) {
            if let Some(h) = m.holds.back_mut() {
                h.acks += 1;
                m.acks += 1;
            }
        }
    }

    /// PUBACKs/PUBCOMPs written to `conn` that wait for the log or a peer.
    pub fn held_acks(&self, conn: ConnKey) -> usize {
        self.held.get(&conn).map_or(0, |m| m.acks as usize)
    }

    /// How many leading bytes of a `out_len`-byte output may be written now.
    pub fn writable(&self, conn: ConnKey, out_len: usize) -> usize {
        match self.held.get(&conn).and_then(|m| m.holds.front()) {
            Some(h) => h.offset.min(out_len),
            None => out_len,
        }
    }

    /// The I/O layer removed `n` bytes from the front of the output (never past the first hold).
    pub fn consumed(&mut self, conn: ConnKey, n: usize) {
        if let Some(marks) = self.held.get_mut(&conn) {
            for h in marks.holds.iter_mut() {
                h.offset = h.offset.saturating_sub(n);
            }
        }
    }

    /// `delta` bytes were inserted (or, negative, removed) at `at` in the held part of the output: holds after
    /// it move with the bytes they mark.
    pub fn shift(&mut self, conn: ConnKey, at: usize, delta: isize) {
        if let Some(marks) = self.held.get_mut(&conn) {
            for h in marks.holds.iter_mut().filter(|h| h.offset > at) {
                h.offset = h.offset.saturating_add_signed(delta);
            }
        }
    }

    pub fn is_held(&self, conn: ConnKey) -> bool {
        self.held.contains_key(&conn)
    }

    /// The connection is gone: its held bytes go with it (the client retransmits what was not acknowledged).
    pub fn forget(&mut self, conn: ConnKey) {
        self.held.remove(&conn);
    }

    /// Release what `durable` allows: confirmations owed to peers go to `confirm(peer, seq)`, connections whose
    /// output became writable to `writable(conn)`.
    pub fn poll(
        &mut self,
        durable: Lsn,
        mut confirm: impl FnMut(u16, u64),
        mut writable: impl FnMut(ConnKey),
    ) {
        self.polled = durable;
        for (peer, r) in self.received_from.iter_mut().enumerate() {
            let mut last = None;
            while r.owed.front().is_some_and(|&(_, lsn)| lsn <= durable) {
                last = r.owed.pop_front().map(|(s, _)| s);
            }
            if let Some(seq) = last {
                confirm(peer as u16, seq);
                // Ranges not yet sent in a `Handled` that this confirmation covers need no mention.
                r.written.retain_mut(|w| {
                    w.0 = w.0.max(seq + 1);
                    w.0 <= w.1
                });
            }
        }
        // Holds are walked only when something they wait for moved (not every round while a sync is pending).
        let mut moved = std::mem::take(&mut self.peers_moved);
        while let Some(&(round, _)) = self
            .lsn_barriers
            .front()
            .filter(|&&(_, lsn)| lsn <= durable)
        {
            self.lsn_barriers.pop_front();
            self.lsn_round = round;
            moved = true;
        }
        if !moved {
            return;
        }
        let (lsn_round, sent_to) = (self.lsn_round, &self.sent_to);
        let ready = |h: &Hold| {
            (!h.local || h.round <= lsn_round)
                && h.peers
                    .iter()
                    .all(|n| sent_to[n.peer as usize].covers(n.lo, n.hi))
        };
        self.held.retain(|&conn, marks| {
            let mut freed = false;
            // In order: a hold that is ready still waits behind an earlier one that is not.
            while marks.holds.front().is_some_and(ready) {
                let h = marks.holds.pop_front().expect("front exists");
                marks.acks -= h.acks;
                freed = true;
            }
            if freed {
                writable(conn);
            }
            !marks.holds.is_empty()
        });
    }

    pub fn polled(&self) -> Lsn {
        self.polled
    }

    /// Something is waiting on the log or on a peer (the I/O layer then wakes up when the log syncs, and looks
    /// again soon as a safety net).
    pub fn waiting(&self) -> bool {
        !self.lsn_barriers.is_empty()
            || !self.held.is_empty()
            || self.received_from.iter().any(|r| !r.owed.is_empty())
    }
}

#[cfg(test)]
mod tests;
