//! The io_uring backend as the shard loop drives it, on real loopback sockets: hand-offs and closes leave no
//! operation in the ring and lose no byte, a full inbox stops the receive, sends stay in order. Every wait is
//! bounded (`until` fails after ~20 s); nothing asserts on timing.

use super::*;
use crate::server::net::uring::INBOX_CAP;
use crate::server::uring::testing::{tcp_pair, usable};
use crate::server::uring::UringConfig;
use std::io::{Read, Write};

fn uring() -> Option<UringNet> {
    usable(UringNet::new(UringConfig::default()))
}

/// Poll until `step` says done (it sees every event); fails after ~20 s.
fn until(n: &mut UringNet, mut step: impl FnMut(&mut UringNet, NetEvent) -> bool) {
    let mut events = Vec::new();
    for _ in 0..200 {
        events.clear();
        n.poll(&mut events, Duration::from_millis(100)).unwrap();
        for ev in events.drain(..) {
            if step(n, ev) {
                return;
            }
        }
    }
    panic!("condition not reached");
}

/// Read what the socket holds now (non-blocking).
fn drain_socket(fd: RawFd) -> Vec<u8> {
    let mut out = BytesMut::new();
    loop {
        match crate::server::netpoll::recv_into(fd, &mut out, 64 * 1024) {
            IoResult::Done(0) => continue,
            IoResult::Done(_) => {}
            _ => return out.to_vec(),
        }
    }
}

#[test]
fn handoff_leaves_nothing_in_the_ring_and_loses_no_byte() {
    let Some(mut n) = uring() else { return };
    let (fd, mut peer) = tcp_pair();
    let token = 7;
    n.add_conn(token, fd).unwrap();
    peer.write_all(b"CONNECT").unwrap();
    until(&mut n, |_, ev| {
        matches!(ev, NetEvent::Readable { token: 7, .. })
    });
    let mut read = BytesMut::new();
    assert!(matches!(n.recv_into(token, &mut read), IoResult::Done(7)));
    // Bytes that come after the loop's read and before the hand-off: the ring may receive them (they must go
    // along with the hand-off) or not (they stay in the socket).
    peer.write_all(b"-raced-").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !n.handoff(token, fd),
        "io_uring hand-off waits for the ring"
    );
    peer.write_all(b"-after").unwrap();
    let mut raced_bytes = None;
    until(&mut n, |_, ev| match ev {
        NetEvent::Released {
            fd: f,
            unsent,
            raced,
        } => {
            assert_eq!(f, fd);
            assert!(unsent.is_empty());
            raced_bytes = Some(raced);
            true
        }
        NetEvent::Readable { .. } => panic!("a handed-off connection is not readable here"),
        _ => false,
    });
    assert_eq!(n.backend().in_flight(token), 0);
    assert_eq!(
        n.backend().conn_count(),
        0,
        "nothing of the connection left"
    );
    assert_eq!(n.backend().buffers_out(), 0, "every ring buffer went back");
    // The new owner reads the rest from the socket: raced bytes + socket bytes = everything, in order.
    std::thread::sleep(Duration::from_millis(20));
    let mut all = raced_bytes.unwrap().to_vec();
    all.extend(drain_socket(fd));
    assert_eq!(all, b"-raced--after");
    crate::server::netpoll::close(fd);
}

#[test]
fn close_waits_for_in_flight_sends_to_be_cancelled() {
    let Some(mut n) = uring() else { return };
    let (fd, peer) = tcp_pair();
    // A reader that never reads, with small buffers: the send parks on POLLOUT.
    let small: libc::c_int = 4096;
    // SAFETY: setting an int socket option on an fd the test owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &small as *const _ as *const libc::c_void,
            4,
        )
    };
    let token = 9;
    n.add_conn(token, fd).unwrap();
    let big = vec![b'x'; 4 << 20];
    assert!(matches!(n.send(token, &big), SendResult::Done(_)));
    assert!(matches!(n.send(token, b"more"), SendResult::Busy));
    n.submit();
    let mut events = Vec::new();
    for _ in 0..3 {
        n.poll(&mut events, Duration::from_millis(50)).unwrap();
        assert!(!events
            .iter()
            .any(|e| matches!(e, NetEvent::Writable { .. })));
    }
    assert!(
        matches!(n.send(token, b"more"), SendResult::WouldBlock),
        "a send parked for polls reads as a full socket"
    );
    assert!(
        n.backend().in_flight(token) >= 2,
        "receive and the parked send"
    );
    n.close(token, fd);
    until(&mut n, |_, ev| match ev {
        NetEvent::Closed { fd: f } => {
            assert_eq!(f, fd);
            true
        }
        NetEvent::Writable { .. } | NetEvent::Readable { .. } | NetEvent::Failed { .. } => {
            panic!("no events for a closing connection: {ev:?}")
        }
        _ => false,
    });
    assert_eq!(n.backend().in_flight(token), 0);
    assert_eq!(n.backend().conn_count(), 0);
    crate::server::netpoll::close(fd);
    drop(peer);
}

#[test]
fn a_full_inbox_stops_the_receive_and_nothing_is_lost() {
    let Some(mut n) = uring() else { return };
    let (fd, peer) = tcp_pair();
    let token = 11;
    n.add_conn(token, fd).unwrap();
    let total = 24 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        let mut peer = peer.try_clone().unwrap();
        std::thread::spawn(move || peer.write_all(&data).unwrap())
    };
    // The loop does not read (a paused publisher): the inbox fills to its cap and the receive stops, with
    // the ring's buffers handed back. (Unbounded, it would take most of the 24 MiB.)
    let mut held = false;
    for _ in 0..50 {
        let mut events = Vec::new();
        n.poll(&mut events, Duration::from_millis(20)).unwrap();
        let (len, stopped) = n.inbox_state(token);
        let ring = UringConfig::default();
        assert!(
            len <= INBOX_CAP + ring.buf_count as usize * ring.buf_size as usize,
            "inbox {len} grows past its bound"
        );
        // At most the one buffer of this round, read straight from the ring (spilled at the next poll).
        assert!(n.backend().buffers_out() <= 1);
        held |= stopped;
    }
    assert!(held, "the receive was stopped");
    // Reading resumes it; everything arrives in order.
    let mut got = BytesMut::new();
    let mut events = Vec::new();
    for _ in 0..2000 {
        while let IoResult::Done(_) = n.recv_into(token, &mut got) {}
        if got.len() >= total {
            break;
        }
        n.poll(&mut events, Duration::from_millis(10)).unwrap();
    }
    writer.join().unwrap();
    assert_eq!(&got[..], &data[..]);
    n.close(token, fd);
    until(&mut n, |_, ev| matches!(ev, NetEvent::Closed { .. }));
    crate::server::netpoll::close(fd);
}

#[test]
fn one_send_in_flight_per_connection_and_order_kept() {
    let Some(mut n) = uring() else { return };
    let (fd, mut peer) = tcp_pair();
    let token = 13;
    n.add_conn(token, fd).unwrap();
    let mut expect = Vec::new();
    let mut i = 0u32;
    while expect.len() < 2 << 20 {
        let chunk: Vec<u8> = (0..10_000u32)
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        match n.send(token, &chunk) {
            SendResult::Done(k) => {
                assert_eq!(k, chunk.len());
                expect.extend_from_slice(&chunk);
                i += 1;
            }
            SendResult::Busy => {
                n.submit();
                until(&mut n, |_, ev| {
                    matches!(ev, NetEvent::Writable { token: 13 })
                });
            }
            other => panic!("send: {other:?}"),
        }
    }
    n.submit();
    let want = expect.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; want];
        peer.read_exact(&mut got).unwrap();
        got
    });
    until(&mut n, |n, _| n.backend().queued_bytes(token) == 0);
    assert_eq!(reader.join().unwrap(), expect);
    n.close(token, fd);
    until(&mut n, |_, ev| matches!(ev, NetEvent::Closed { .. }));
    crate::server::netpoll::close(fd);
}

#[test]
fn peer_close_reads_as_closed_after_the_last_bytes() {
    let Some(mut n) = uring() else { return };
    let (fd, mut peer) = tcp_pair();
    let token = 15;
    n.add_conn(token, fd).unwrap();
    peer.write_all(b"last words").unwrap();
    drop(peer);
    until(&mut n, |_, ev| {
        matches!(ev, NetEvent::Readable { hup: true, .. })
    });
    let mut got = BytesMut::new();
    assert!(matches!(n.recv_into(token, &mut got), IoResult::Done(10)));
    assert_eq!(&got[..], b"last words");
    assert!(matches!(n.recv_into(token, &mut got), IoResult::Closed));
    n.close(token, fd);
    until(&mut n, |_, ev| matches!(ev, NetEvent::Closed { .. }));
    crate::server::netpoll::close(fd);
}
