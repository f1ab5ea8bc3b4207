//! Model-based: a publisher shard and a receiver shard exchanging messages and answers over FIFO channels,
//! in any interleaving of handling, round ends, (partial) syncs and deliveries. An acknowledgement is never
//! released before every record it vouches for is durable (ours or the peer's) and every message it sent
//! was handled; once everything is delivered and synced, every acknowledgement is released.

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
