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

mod model;
