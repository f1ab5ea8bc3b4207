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

/// What this shard knows about the messages it numbered for one peer.
#[derive(Default)]
struct SentTo {
    /// Last sequence number given out.
    sent: u64,
    /// The peer handled every message up to this one.
    handled: u64,
    /// The peer's records for every message up to this one are durable.
    durable: u64,
    /// Ranges (inclusive, ascending, disjoint) of handled messages that wrote records the peer has not yet
    /// reported durable.
    unsynced: VecDeque<(u64, u64)>,
}

impl SentTo {
    /// Every message of `lo..=hi` was handled and wrote nothing, or wrote records that are durable.
    fn covers(&self, lo: u64, hi: u64) -> bool {
        if self.handled < hi {
            return false;
        }
        let first = self.unsynced.partition_point(|&(_, h)| h < lo);
        self.unsynced.get(first).map_or(true, |&(l, _)| l > hi)
    }
}

/// What this shard owes one peer for the messages it received from it.
#[derive(Default)]
struct ReceivedFrom {
    /// Highest sequence number handled in the current round (0 = none).
    seq: u64,
    /// A message of the current round wrote nothing: the round is answered with `Handled`, which releases it.
    clean_in_round: bool,
    /// A message of the current round wrote records: the round owes a `Durable`.
    wrote_in_round: bool,
    /// Ranges of sequence numbers whose messages appended records to our log, not yet sent in a `Handled` nor
    /// covered by a `Durable`. A round whose messages all wrote sends no `Handled` (its `Durable` will say it
    /// all); its ranges go with the next `Handled`.
    written: Vec<(u64, u64)>,
    /// `Durable { seq }` to send once the LSN is durable, in order.
    owed: VecDeque<(u64, Lsn)>,
}

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

    /// `peer` handled the message we numbered `seq` for it and, if it wrote records, they are durable.
    pub fn peer_covers(&self, peer: u16, seq: u64) -> bool {
        self.sent_to
            .get(peer as usize)
            .is_some_and(|s| s.covers(seq, seq))
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
mod tests {
    use super::*;

    fn k(i: u32) -> ConnKey {
        ConnKey { idx: i, gen: 0 }
    }

    /// End a round that received nothing from peers.
    fn end(d: &mut Durability, committed: u64) {
        d.end_round(Lsn(committed), |p, _, _| {
            panic!("nothing received from peer {p}")
        });
    }

    /// (peer, upto, written) of one `Handled` answer.
    type Answer = (u16, u64, Vec<(u64, u64)>);

    /// End a round, returning the `Handled` answers it sends.
    fn end_answers(d: &mut Durability, committed: u64) -> Vec<Answer> {
        let mut out = vec![];
        d.end_round(Lsn(committed), |p, upto, w| out.push((p, upto, w.to_vec())));
        out
    }

    fn poll(d: &mut Durability, durable: u64) -> (Vec<(u16, u64)>, Vec<ConnKey>) {
        let (mut sent, mut woke) = (vec![], vec![]);
        d.poll(Lsn(durable), |p, s| sent.push((p, s)), |c| woke.push(c));
        (sent, woke)
    }

    #[test]
    fn a_hold_waits_for_the_local_log_and_keeps_order() {
        let mut d = Durability::new(1);
        let c = k(1);
        // 10 bytes already written before the hold may go; the held PUBACK and everything after it waits.
        d.hold(c, 10, true);
        assert_eq!(d.writable(c, 14), 10);
        end(&mut d, 100);
        assert!(poll(&mut d, 99).1.is_empty());
        assert_eq!(d.writable(c, 30), 10, "later bytes stay behind the hold");
        d.consumed(c, 10);
        assert_eq!(d.writable(c, 20), 0);
        assert_eq!(poll(&mut d, 100).1, vec![c]);
        assert_eq!(d.writable(c, 20), 20);
        assert!(!d.is_held(c));
    }

    #[test]
    fn a_hold_waits_for_every_peer_it_sent_to() {
        let mut d = Durability::new(3);
        let c = k(1);
        d.start_publish();
        let s1 = d.next_seq(1);
        let s2 = d.next_seq(2);
        d.hold(c, 0, true);
        end(&mut d, 0);
        assert!(poll(&mut d, 0).1.is_empty());
        d.on_peer_handled(1, s1, &[]);
        assert!(poll(&mut d, 0).1.is_empty(), "peer 2 has not answered");
        d.on_peer_handled(2, s2, &[(s2, s2)]);
        assert!(
            poll(&mut d, 0).1.is_empty(),
            "peer 2 wrote it, not durable yet"
        );
        d.on_peer_durable(2, s2);
        assert_eq!(poll(&mut d, 0).1, vec![c]);
    }

    #[test]
    fn acks_behind_holds_are_counted_until_released() {
        let mut d = Durability::new(1);
        let c = k(1);
        d.note_ack(c);
        assert_eq!(d.held_acks(c), 0, "an ack with no hold before it is sent");
        d.hold(c, 0, true);
        d.note_ack(c);
        d.note_ack(c);
        end(&mut d, 10);
        d.hold(c, 8, true);
        d.note_ack(c);
        end(&mut d, 20);
        assert_eq!(d.held_acks(c), 3);
        poll(&mut d, 10);
        assert_eq!(d.held_acks(c), 1, "the first round's two acks may go");
        poll(&mut d, 20);
        assert_eq!(d.held_acks(c), 0);
        d.hold(c, 0, true);
        d.note_ack(c);
        d.forget(c);
        assert_eq!(d.held_acks(c), 0);
    }

    #[test]
    fn holds_of_a_later_round_are_released_after_earlier_ones() {
        let mut d = Durability::new(1);
        let c = k(1);
        d.hold(c, 0, true);
        end(&mut d, 10);
        d.hold(c, 4, true);
        end(&mut d, 20);
        poll(&mut d, 10);
        assert_eq!(d.writable(c, 8), 4, "the second round is not durable yet");
        poll(&mut d, 20);
        assert_eq!(d.writable(c, 8), 8);
    }

    #[test]
    fn answers_to_peers_say_what_wrote_and_durable_confirmations_wait_for_the_log() {
        let mut d = Durability::new(2);
        d.on_peer_msg(0, 5, true);
        d.on_peer_msg(0, 6, true);
        d.on_peer_msg(0, 7, false);
        assert_eq!(end_answers(&mut d, 50), vec![(0, 7, vec![(5, 6)])]);
        d.on_peer_msg(0, 8, false);
        d.on_peer_msg(0, 9, true);
        assert_eq!(end_answers(&mut d, 60), vec![(0, 9, vec![(9, 9)])]);
        d.on_peer_msg(0, 10, false);
        assert_eq!(
            end_answers(&mut d, 70),
            vec![(0, 10, vec![])],
            "nothing written, nothing owed"
        );
        assert!(poll(&mut d, 49).0.is_empty());
        assert_eq!(poll(&mut d, 55).0, vec![(0, 6)]);
        assert_eq!(poll(&mut d, 70).0, vec![(0, 9)]);
        assert!(!d.waiting());
    }

    #[test]
    fn a_hold_that_vouches_only_for_peers_does_not_wait_for_the_local_log() {
        let mut d = Durability::new(2);
        let (a, b) = (k(1), k(2));
        // Round 1: connection a's acknowledgement vouches for a local record (LSN 100, not durable yet).
        d.start_publish();
        d.hold(a, 0, true);
        end(&mut d, 100);
        // Round 2: b's publish went only to peer 1; a's second acknowledgement too, but it stays behind a's first.
        d.start_publish();
        let sb = d.next_seq(1);
        d.hold(b, 0, false);
        d.start_publish();
        let sa = d.next_seq(1);
        d.hold(a, 5, false);
        end(&mut d, 100);
        assert!(poll(&mut d, 50).1.is_empty(), "peer 1 has not answered");
        d.on_peer_handled(1, sa.max(sb), &[]);
        assert_eq!(
            poll(&mut d, 50).1,
            vec![b],
            "b needs only the peer; a's first hold needs the log"
        );
        assert_eq!(d.writable(a, 9), 0);
        assert_eq!(poll(&mut d, 100).1, vec![a]);
        assert_eq!(
            d.writable(a, 9),
            9,
            "both of a's holds are released, in order"
        );
        assert!(!d.waiting());
    }

    #[test]
    fn a_peer_message_that_wrote_nothing_does_not_wait_behind_one_that_did() {
        // Publisher p's message to peer 1 writes there (a persistent subscriber), q's does not; q's comes later
        // in the same round and again in the next round.
        let mut d = Durability::new(2);
        let (p, q) = (k(1), k(2));
        d.start_publish();
        let sp = d.next_seq(1);
        d.hold(p, 0, false);
        d.start_publish();
        let sq = d.next_seq(1);
        d.hold(q, 0, false);
        end(&mut d, 0);
        d.start_publish();
        let sq2 = d.next_seq(1);
        d.hold(q, 4, false);
        end(&mut d, 0);
        d.on_peer_handled(1, sq2, &[(sp, sp)]);
        assert_eq!(
            poll(&mut d, 0).1,
            vec![q],
            "q's messages wrote nothing there"
        );
        assert_eq!(d.writable(q, 8), 8, "both of q's holds are released");
        assert_eq!(d.writable(p, 4), 0);
        d.on_peer_durable(1, sp);
        assert_eq!(poll(&mut d, 0).1, vec![p]);
        assert!(!d.waiting());
        assert!(sp < sq && sq < sq2);
    }

    #[test]
    fn merged_holds_of_one_round_wait_for_everything_either_needs() {
        let mut d = Durability::new(3);
        let (c, other) = (k(1), k(2));
        d.start_publish();
        let a = d.next_seq(1);
        d.hold(c, 0, false);
        // Another connection's message to peer 1 is numbered between c's two; it writes there.
        d.start_publish();
        let o = d.next_seq(1);
        d.hold(other, 0, false);
        d.start_publish();
        let b = d.next_seq(1);
        let b2 = d.next_seq(2);
        d.hold(c, 4, false);
        end(&mut d, 0);
        d.on_peer_handled(1, b, &[(o, o)]);
        d.on_peer_handled(2, b2, &[]);
        // c's merged hold spans a..=b on peer 1, which includes the other connection's unsynced message: waiting
        // for it is conservative, never early.
        assert!(poll(&mut d, 0).1.is_empty());
        d.on_peer_durable(1, o);
        let mut woke = poll(&mut d, 0).1;
        woke.sort_by_key(|k| k.idx);
        assert_eq!(woke, vec![c, other]);
        assert!(a < o && o < b);
    }

    #[test]
    fn a_partial_durable_confirmation_trims_an_unsynced_range() {
        let mut d = Durability::new(2);
        let (x, y) = (k(1), k(2));
        d.start_publish();
        let sx = d.next_seq(1);
        d.hold(x, 0, false);
        d.start_publish();
        let sy = d.next_seq(1);
        d.hold(y, 0, false);
        end(&mut d, 0);
        // Both wrote, reported as one range; the peer's log then syncs only the first.
        d.on_peer_handled(1, sy, &[(sx, sy)]);
        assert!(poll(&mut d, 0).1.is_empty());
        d.on_peer_durable(1, sx);
        assert_eq!(poll(&mut d, 0).1, vec![x]);
        d.on_peer_durable(1, sy);
        assert_eq!(poll(&mut d, 0).1, vec![y]);
        assert_eq!(d.backlog(), 0);
    }

    #[test]
    fn nothing_is_released_before_the_peer_answered_for_it() {
        let mut d = Durability::new(2);
        let c = k(1);
        d.start_publish();
        let s = d.next_seq(1);
        d.hold(c, 0, false);
        end(&mut d, 0);
        d.on_peer_handled(1, s - 1, &[]);
        assert!(poll(&mut d, 0).1.is_empty(), "not handled yet");
        d.on_peer_handled(1, s, &[(s, s)]);
        assert!(
            poll(&mut d, 0).1.is_empty(),
            "handled, written, not durable"
        );
        d.on_peer_durable(1, s);
        assert_eq!(poll(&mut d, 0).1, vec![c]);
    }

    #[test]
    fn a_round_whose_messages_all_wrote_is_answered_by_its_durable_confirmation_alone() {
        let mut q = Durability::new(2);
        q.on_peer_msg(0, 1, true);
        q.on_peer_msg(0, 2, true);
        assert!(
            end_answers(&mut q, 10).is_empty(),
            "no Handled: Durable says it all"
        );
        q.on_peer_msg(0, 3, true);
        q.on_peer_msg(0, 4, false);
        assert_eq!(
            end_answers(&mut q, 20),
            vec![(0, 4, vec![(1, 3)])],
            "the next Handled carries the earlier round's writes"
        );
        // Messages 5 (wrote) and 6 (wrote) in a round, then the log syncs the first round before the next
        // Handled: the ranges it covers are not mentioned again.
        q.on_peer_msg(0, 5, true);
        assert!(end_answers(&mut q, 30).is_empty());
        assert_eq!(poll(&mut q, 30).0, vec![(0, 5)]);
        q.on_peer_msg(0, 6, false);
        assert_eq!(end_answers(&mut q, 30), vec![(0, 6, vec![])]);

        // The publisher side: a Durable alone releases a hold whose messages all wrote.
        let mut p = Durability::new(2);
        let c = k(1);
        p.start_publish();
        let s = p.next_seq(1);
        p.hold(c, 0, false);
        end(&mut p, 0);
        p.on_peer_durable(1, s);
        assert_eq!(poll(&mut p, 0).1, vec![c]);
        // A late Handled naming ranges the Durable covered does not make anything wait again.
        p.on_peer_handled(1, s, &[(s, s)]);
        assert_eq!(p.backlog(), 0);
    }

    /// Model-based: a publisher shard and a receiver shard exchanging messages and answers over FIFO channels,
    /// in any interleaving of handling, round ends, (partial) syncs and deliveries. An acknowledgement is never
    /// released before every record it vouches for is durable (ours or the peer's) and every message it sent
    /// was handled; once everything is delivered and synced, every acknowledgement is released.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            /// A publish on connection `conn`: maybe to the peer (which logs it if `writes`), maybe logged here.
            Publish {
                conn: u8,
                to_peer: bool,
                writes: bool,
                local: bool,
            },
            PEndRound,
            /// Sync the publisher's log up to `frac`/4 of the way to what it committed.
            PSync(u8),
            QHandle,
            QEndRound,
            QSync(u8),
            PReceive,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..3, any::<bool>(), any::<bool>(), any::<bool>())
                    .prop_map(|(conn, to_peer, writes, local)| Op::Publish { conn, to_peer, writes, local }),
                1 => Just(Op::PEndRound),
                1 => (1u8..=4).prop_map(Op::PSync),
                2 => Just(Op::QHandle),
                1 => Just(Op::QEndRound),
                1 => (1u8..=4).prop_map(Op::QSync),
                2 => Just(Op::PReceive),
            ]
        }

        /// What one acknowledgement vouches for.
        #[derive(Clone, Copy)]
        struct Ack {
            peer_seq: Option<u64>,
            local_lsn: Option<u64>,
        }

        enum Answer {
            Handled(u64, Vec<(u64, u64)>),
            Durable(u64),
        }

        #[derive(Default)]
        struct Log {
            appended: u64,
            committed: u64,
            durable: u64,
        }

        impl Log {
            fn sync(&mut self, frac: u8) {
                self.durable += (self.committed - self.durable) * frac as u64 / 4;
            }
        }

        struct World {
            p: Durability,
            q: Durability,
            plog: Log,
            qlog: Log,
            acks: Vec<Vec<Ack>>,
            to_q: VecDeque<(u64, bool)>,
            to_p: VecDeque<Answer>,
            /// Receiver: sequence number -> LSN of the record it wrote (if any); handled up to.
            q_wrote: HashMap<u64, u64>,
            q_handled: u64,
        }

        impl World {
            fn new() -> Self {
                World {
                    p: Durability::new(2),
                    q: Durability::new(2),
                    plog: Log::default(),
                    qlog: Log::default(),
                    acks: vec![Vec::new(); 3],
                    to_q: VecDeque::new(),
                    to_p: VecDeque::new(),
                    q_wrote: HashMap::new(),
                    q_handled: 0,
                }
            }

            fn p_poll(&mut self) {
                self.p.poll(
                    Lsn(self.plog.durable),
                    |_, _| panic!("p received nothing"),
                    |_| {},
                );
            }

            fn q_poll(&mut self) {
                let to_p = &mut self.to_p;
                self.q.poll(
                    Lsn(self.qlog.durable),
                    |_, s| to_p.push_back(Answer::Durable(s)),
                    |_| panic!("q holds nothing"),
                );
            }

            fn apply(&mut self, op: &Op) {
                match *op {
                    Op::Publish {
                        conn,
                        to_peer,
                        writes,
                        local,
                    } => {
                        if !to_peer && !local {
                            return;
                        }
                        self.p.start_publish();
                        let peer_seq = to_peer.then(|| {
                            let s = self.p.next_seq(1);
                            self.to_q.push_back((s, writes));
                            s
                        });
                        let local_lsn = local.then(|| {
                            self.p.note_append();
                            self.plog.appended += 1;
                            self.plog.appended
                        });
                        let out = &mut self.acks[conn as usize];
                        self.p.hold(k(conn as u32), out.len(), local);
                        out.push(Ack {
                            peer_seq,
                            local_lsn,
                        });
                    }
                    Op::PEndRound => {
                        self.plog.committed = self.plog.appended;
                        self.p.end_round(Lsn(self.plog.committed), |_, _, _| {
                            panic!("p received nothing")
                        });
                        self.p_poll();
                    }
                    Op::PSync(f) => {
                        self.plog.sync(f);
                        self.p_poll();
                    }
                    Op::QHandle => {
                        if let Some((seq, writes)) = self.to_q.pop_front() {
                            if writes {
                                self.qlog.appended += 1;
                                self.q_wrote.insert(seq, self.qlog.appended);
                            }
                            self.q.on_peer_msg(0, seq, writes);
                            self.q_handled = seq;
                        }
                    }
                    Op::QEndRound => {
                        self.qlog.committed = self.qlog.appended;
                        let to_p = &mut self.to_p;
                        self.q.end_round(Lsn(self.qlog.committed), |_, upto, w| {
                            to_p.push_back(Answer::Handled(upto, w.to_vec()))
                        });
                        self.q_poll();
                    }
                    Op::QSync(f) => {
                        self.qlog.sync(f);
                        self.q_poll();
                    }
                    Op::PReceive => {
                        match self.to_p.pop_front() {
                            Some(Answer::Handled(upto, w)) => self.p.on_peer_handled(1, upto, &w),
                            Some(Answer::Durable(s)) => self.p.on_peer_durable(1, s),
                            None => return,
                        }
                        self.p_poll();
                    }
                }
            }

            /// Acknowledgements released on each connection.
            fn released(&self, conn: usize) -> usize {
                self.p.writable(k(conn as u32), self.acks[conn].len())
            }

            fn check_safety(&self) {
                for conn in 0..3 {
                    for a in &self.acks[conn][..self.released(conn)] {
                        if let Some(lsn) = a.local_lsn {
                            assert!(
                                lsn <= self.plog.durable,
                                "released before our log synced it"
                            );
                        }
                        if let Some(s) = a.peer_seq {
                            assert!(s <= self.q_handled, "released before the peer handled it");
                            if let Some(&lsn) = self.q_wrote.get(&s) {
                                assert!(
                                    lsn <= self.qlog.durable,
                                    "released before the peer's log synced it"
                                );
                            }
                        }
                    }
                }
            }

            fn drain(&mut self) {
                for _ in 0..4 {
                    for op in [Op::PEndRound, Op::PSync(4)] {
                        self.apply(&op);
                    }
                    while !self.to_q.is_empty() {
                        self.apply(&Op::QHandle);
                    }
                    for op in [Op::QEndRound, Op::QSync(4)] {
                        self.apply(&op);
                    }
                    while !self.to_p.is_empty() {
                        self.apply(&Op::PReceive);
                    }
                    self.check_safety();
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn acknowledgements_are_released_only_when_safe_and_eventually(ops in proptest::collection::vec(op(), 0..80)) {
                let mut w = World::new();
                for op in &ops {
                    w.apply(op);
                    w.check_safety();
                }
                w.drain();
                for conn in 0..3 {
                    prop_assert_eq!(w.released(conn), w.acks[conn].len(), "connection {} still held", conn);
                }
                prop_assert_eq!(w.p.backlog() + w.q.backlog(), 0);
                prop_assert!(!w.p.waiting() && !w.q.waiting());
            }
        }
    }
}
