//! Write-ahead acknowledgements: which bytes of a connection's output must wait until what they acknowledge is
//! durable, here and on the other shards.
//!
//! A PUBACK/PUBREC/PUBCOMP (or a first QoS 2 PUBLISH to a persistent subscriber) may only leave once every log
//! record it vouches for is on disk. Those records can be in this shard's log (the publisher's session, local
//! subscribers) or in a peer's (subscribers on other shards). Per round the shard core:
//! - marks a *hold* at the current end of a connection's output before writing such a packet; the I/O layer
//!   writes only the bytes before the first unreleased hold (packet order on the wire is kept);
//! - numbers every QoS>0 message it forwards to a peer (`next_seq`); the peer answers `Durable { seq }` once the
//!   records it wrote for that message (and for the same peer's earlier ones) are durable in its own log
//!   (`on_peer_msg` / `end_round` / `poll`). A message that wrote nothing there (no persistent subscriber) waits
//!   for no sync: clean-session traffic between shards only pays the mesh round trip;
//! - ends the round (`end_round`) with the LSN of its commit: holds of that round are released when every peer
//!   has confirmed the sequence numbers sent to it up to then and, for a hold that vouches for records in this
//!   shard's log (`local`), when that LSN is durable (`poll`). A clean-session publish whose subscribers are all
//!   on other shards, without persistent sessions, writes nothing here and waits for no local sync.
//!
//! Pure bookkeeping, no I/O: cumulative sequence numbers work because each shard-to-shard channel is FIFO.

use std::collections::{HashMap, VecDeque};

use crate::broker::message::ConnKey;
use crate::store::Lsn;

/// One unreleased hold in a connection's output.
#[derive(Clone, Copy)]
struct Hold {
    /// Offset in the output buffer: bytes from here on wait.
    offset: usize,
    round: u64,
    /// What it vouches for includes records in this shard's log (else only peers' confirmations).
    local: bool,
}

/// A round with holds: they wait for its peers' confirmations (sequence numbers sent up to then).
struct PeerBarrier {
    round: u64,
    /// Per peer: the last sequence number sent to it in or before this round.
    peer_seq: Box<[u64]>,
}

pub struct Durability {
    shard: u16,
    round: u64,
    /// A hold was marked in the current round, so it needs a peer barrier.
    hold_this_round: bool,
    /// ... and one of them vouches for local records, so it needs an LSN barrier too.
    local_hold_this_round: bool,
    /// (round, commit LSN) of rounds with local holds, waiting for our log.
    lsn_barriers: VecDeque<(u64, Lsn)>,
    peer_barriers: VecDeque<PeerBarrier>,
    /// Rounds of the last satisfied LSN barrier and peer barrier: local records of rounds up to the first are
    /// durable, peers confirmed everything of rounds up to the second. Both only grow; a hold is released when
    /// its round is covered by what it needs.
    lsn_round: u64,
    peer_round: u64,
    peer_sent: Vec<u64>,
    peer_acked: Vec<u64>,
    /// Highest sequence number received from each peer since the last `end_round` (0 = none).
    recv_seq: Vec<u64>,
    /// Per peer: its messages of the current round appended records to our log.
    recv_appended: Vec<bool>,
    /// Per peer: the commit LSN of the last round in which its messages appended records. Its later messages
    /// that appended nothing need only that much (confirmations are cumulative, so never less).
    recv_needs: Vec<Lsn>,
    /// Per peer: confirmations to send once the LSN is durable, in order.
    owed: Vec<VecDeque<(u64, Lsn)>>,
    /// Connection -> (offset in its output buffer, round) of each unreleased hold, oldest first. Only
    /// connections with a hold have an entry, so idle connections cost nothing here.
    held: HashMap<ConnKey, VecDeque<Hold>>,
    /// Records appended plus sequence numbers sent: a publish that changed neither needs no hold.
    work: u64,
    /// Records appended: a publish that appended none needs no local durability, only its peers'.
    appends: u64,
    /// The durable LSN seen by the last `poll`.
    polled: Lsn,
}

impl Durability {
    pub fn new(shard: u16, shards: u16) -> Self {
        let n = shards.max(1) as usize;
        Durability {
            shard,
            round: 1,
            hold_this_round: false,
            local_hold_this_round: false,
            lsn_barriers: VecDeque::new(),
            peer_barriers: VecDeque::new(),
            lsn_round: 0,
            peer_round: 0,
            peer_sent: vec![0; n],
            peer_acked: vec![0; n],
            recv_seq: vec![0; n],
            recv_appended: vec![false; n],
            recv_needs: vec![Lsn(0); n],
            owed: (0..n).map(|_| VecDeque::new()).collect(),
            held: HashMap::new(),
            work: 0,
            appends: 0,
            polled: Lsn(0),
        }
    }

    /// Rounds waiting for the disk (or a peer): barriers of held output plus confirmations owed to peers. Grows by
    /// at most one barrier and one confirmation per peer per round; the shard stops reading its sockets when it
    /// passes `Shard`'s bound, so a stalled disk cannot grow it without limit.
    pub fn backlog(&self) -> usize {
        self.peer_barriers.len().max(self.lsn_barriers.len())
            + self.owed.iter().map(VecDeque::len).sum::<usize>()
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

    /// Sequence number for a QoS>0 message forwarded to `peer`.
    pub fn next_seq(&mut self, peer: u16) -> u64 {
        self.work += 1;
        let s = &mut self.peer_sent[peer as usize];
        *s += 1;
        *s
    }

    /// Hold everything written to `conn` from `out_len` on until this round's peer confirmations are in and,
    /// if `local`, until this round is durable in our own log too.
    pub fn hold(&mut self, conn: ConnKey, out_len: usize, local: bool) {
        self.hold_this_round = true;
        self.local_hold_this_round |= local;
        let marks = self.held.entry(conn).or_default();
        // An earlier hold of this round already covers everything after it (and now needs what both need).
        if let Some(last) = marks.back_mut().filter(|h| h.round == self.round) {
            last.local |= local;
            return;
        }
        marks.push_back(Hold {
            offset: out_len,
            round: self.round,
            local,
        });
    }

    /// How many leading bytes of a `out_len`-byte output may be written now.
    pub fn writable(&self, conn: ConnKey, out_len: usize) -> usize {
        match self.held.get(&conn).and_then(|m| m.front()) {
            Some(h) => h.offset.min(out_len),
            None => out_len,
        }
    }

    /// The I/O layer removed `n` bytes from the front of the output (never past the first hold).
    pub fn consumed(&mut self, conn: ConnKey, n: usize) {
        if let Some(marks) = self.held.get_mut(&conn) {
            for h in marks.iter_mut() {
                h.offset = h.offset.saturating_sub(n);
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
        let r = &mut self.recv_seq[from as usize];
        *r = (*r).max(seq);
        self.recv_appended[from as usize] |= appended;
    }

    /// A peer confirmed everything we numbered for it up to `seq`.
    pub fn on_peer_durable(&mut self, from: u16, seq: u64) {
        let a = &mut self.peer_acked[from as usize];
        *a = (*a).max(seq);
    }

    /// End of a round whose records were committed up to `committed`.
    pub fn end_round(&mut self, committed: Lsn) {
        for (peer, seq) in self.recv_seq.iter_mut().enumerate() {
            if *seq > 0 {
                if std::mem::take(&mut self.recv_appended[peer]) {
                    self.recv_needs[peer] = committed;
                }
                self.owed[peer].push_back((std::mem::take(seq), self.recv_needs[peer]));
            }
        }
        if std::mem::take(&mut self.hold_this_round) {
            self.peer_barriers.push_back(PeerBarrier {
                round: self.round,
                peer_seq: self.peer_sent.clone().into_boxed_slice(),
            });
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
        for (peer, q) in self.owed.iter_mut().enumerate() {
            let mut last = None;
            while q.front().is_some_and(|&(_, lsn)| lsn <= durable) {
                last = q.pop_front().map(|(s, _)| s);
            }
            if let Some(seq) = last {
                confirm(peer as u16, seq);
            }
        }
        // Each frontier moves to the round of the last barrier that became satisfied: every hold of a round has a
        // peer barrier, and every local one an LSN barrier, so nothing beyond them can be released. Holds are
        // walked only when a frontier moved (not every round while a sync is pending).
        let mut moved = false;
        while let Some(&(round, _)) = self
            .lsn_barriers
            .front()
            .filter(|&&(_, lsn)| lsn <= durable)
        {
            self.lsn_barriers.pop_front();
            self.lsn_round = round;
            moved = true;
        }
        while let Some(b) = self.peer_barriers.front().filter(|b| {
            b.peer_seq
                .iter()
                .zip(&self.peer_acked)
                .enumerate()
                .all(|(p, (sent, acked))| p == self.shard as usize || acked >= sent)
        }) {
            self.peer_round = b.round;
            self.peer_barriers.pop_front();
            moved = true;
        }
        if !moved {
            return;
        }
        let (lsn_round, peer_round) = (self.lsn_round, self.peer_round);
        self.held.retain(|&conn, marks| {
            let mut freed = false;
            // In order: a hold that needs only peers still waits behind an earlier one that needs the log.
            while marks
                .front()
                .is_some_and(|h| h.round <= peer_round && (!h.local || h.round <= lsn_round))
            {
                marks.pop_front();
                freed = true;
            }
            if freed {
                writable(conn);
            }
            !marks.is_empty()
        });
    }

    pub fn polled(&self) -> Lsn {
        self.polled
    }

    /// Something is waiting on the log or on a peer (the I/O layer then wakes up when the log syncs).
    pub fn waiting(&self) -> bool {
        !self.lsn_barriers.is_empty()
            || !self.peer_barriers.is_empty()
            || self.owed.iter().any(|q| !q.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u32) -> ConnKey {
        ConnKey { idx: i, gen: 0 }
    }

    #[test]
    fn a_hold_waits_for_the_local_log_and_keeps_order() {
        let mut d = Durability::new(0, 1);
        let c = k(1);
        // 10 bytes already written before the hold may go; the held PUBACK and everything after it waits.
        d.hold(c, 10, true);
        assert_eq!(d.writable(c, 14), 10);
        d.end_round(Lsn(100));
        let mut woke = vec![];
        d.poll(Lsn(99), |_, _| panic!("no peers"), |c| woke.push(c));
        assert!(woke.is_empty());
        assert_eq!(d.writable(c, 30), 10, "later bytes stay behind the hold");
        d.consumed(c, 10);
        assert_eq!(d.writable(c, 20), 0);
        d.poll(Lsn(100), |_, _| {}, |c| woke.push(c));
        assert_eq!(woke, vec![c]);
        assert_eq!(d.writable(c, 20), 20);
        assert!(!d.is_held(c));
    }

    #[test]
    fn a_hold_waits_for_every_peer_it_sent_to() {
        let mut d = Durability::new(0, 3);
        let c = k(1);
        let s1 = d.next_seq(1);
        let s2 = d.next_seq(2);
        d.hold(c, 0, true);
        d.end_round(Lsn(0));
        let mut woke = 0;
        d.poll(Lsn(0), |_, _| {}, |_| woke += 1);
        assert_eq!(woke, 0);
        d.on_peer_durable(1, s1);
        d.poll(Lsn(0), |_, _| {}, |_| woke += 1);
        assert_eq!(woke, 0, "peer 2 has not confirmed");
        d.on_peer_durable(2, s2);
        d.poll(Lsn(0), |_, _| {}, |_| woke += 1);
        assert_eq!(woke, 1);
    }

    #[test]
    fn holds_of_a_later_round_are_released_after_earlier_ones() {
        let mut d = Durability::new(0, 1);
        let c = k(1);
        d.hold(c, 0, true);
        d.end_round(Lsn(10));
        d.hold(c, 4, true);
        d.end_round(Lsn(20));
        d.poll(Lsn(10), |_, _| {}, |_| {});
        assert_eq!(d.writable(c, 8), 4, "the second round is not durable yet");
        d.poll(Lsn(20), |_, _| {}, |_| {});
        assert_eq!(d.writable(c, 8), 8);
    }

    #[test]
    fn confirmations_to_peers_are_cumulative_and_wait_for_the_log() {
        let mut d = Durability::new(1, 2);
        d.on_peer_msg(0, 5, true);
        d.on_peer_msg(0, 7, false);
        d.end_round(Lsn(50));
        d.on_peer_msg(0, 9, true);
        d.end_round(Lsn(60));
        let mut sent = vec![];
        d.poll(Lsn(49), |p, s| sent.push((p, s)), |_| {});
        assert!(sent.is_empty());
        d.poll(Lsn(55), |p, s| sent.push((p, s)), |_| {});
        assert_eq!(sent, vec![(0, 7)]);
        d.poll(Lsn(60), |p, s| sent.push((p, s)), |_| {});
        assert_eq!(sent, vec![(0, 7), (0, 9)]);
        assert!(!d.waiting());
    }

    #[test]
    fn a_hold_that_vouches_only_for_peers_does_not_wait_for_the_local_log() {
        let mut d = Durability::new(0, 2);
        let (a, b) = (k(1), k(2));
        // Round 1: connection a's acknowledgement vouches for a local record (LSN 100, not durable yet).
        d.hold(a, 0, true);
        d.end_round(Lsn(100));
        // Round 2: b's publish went only to peer 1; a's second acknowledgement too, but it stays behind a's first.
        let s = d.next_seq(1);
        d.hold(b, 0, false);
        d.hold(a, 5, false);
        d.end_round(Lsn(100));
        let mut woke = vec![];
        d.poll(Lsn(50), |_, _| {}, |c| woke.push(c));
        assert!(woke.is_empty(), "peer 1 has not confirmed");
        d.on_peer_durable(1, s);
        d.poll(Lsn(50), |_, _| {}, |c| woke.push(c));
        assert_eq!(
            woke,
            vec![b],
            "b needs only the peer; a's first hold needs the log"
        );
        assert_eq!(d.writable(a, 9), 0);
        d.poll(Lsn(100), |_, _| {}, |c| woke.push(c));
        assert_eq!(woke, vec![b, a]);
        assert_eq!(
            d.writable(a, 9),
            9,
            "both of a's holds are released, in order"
        );
        assert!(!d.waiting());
    }

    #[test]
    fn a_peer_message_that_wrote_nothing_does_not_wait_for_unrelated_records() {
        // Shard 1 logs for its own persistent sessions (LSN 40 durable, 50 not yet) while peer 0 forwards
        // clean-session traffic that writes nothing here.
        let mut d = Durability::new(1, 3);
        d.on_peer_msg(0, 1, false);
        d.end_round(Lsn(50));
        let mut sent = vec![];
        d.poll(Lsn(40), |p, s| sent.push((p, s)), |_| {});
        assert_eq!(
            sent,
            vec![(0, 1)],
            "nothing of peer 0's is in the pending round"
        );
        // Peer 2's message did write: it waits; a later message of peer 2 that wrote nothing waits behind it
        // (confirmations are cumulative).
        d.on_peer_msg(2, 1, true);
        d.on_peer_msg(0, 2, false);
        d.end_round(Lsn(60));
        d.on_peer_msg(2, 2, false);
        d.end_round(Lsn(70));
        sent.clear();
        d.poll(Lsn(50), |p, s| sent.push((p, s)), |_| {});
        assert_eq!(sent, vec![(0, 2)]);
        sent.clear();
        d.poll(Lsn(60), |p, s| sent.push((p, s)), |_| {});
        assert_eq!(
            sent,
            vec![(2, 2)],
            "both of peer 2's, once its record is durable"
        );
        assert!(!d.waiting());
    }
}
