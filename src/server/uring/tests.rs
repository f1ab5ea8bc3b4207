//! Real loopback sockets through a real ring. Every wait is bounded (`pump` gives up after 20 s and fails), so
//! a broken backend fails instead of hanging; nothing asserts on how long anything took.

use super::testing::{tcp_pair, usable};
use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

fn backend(entries: u32, buf_count: u16, buf_size: u32) -> Option<UringBackend> {
    usable(UringBackend::new(entries, buf_count, buf_size))
}

fn close(fd: RawFd) {
    // SAFETY: an fd the test owns.
    unsafe { libc::close(fd) };
}

/// Wait round after round, handing each round's completions to `step` (which may recycle buffers) until it
/// says done; `step` first sees an empty round. Fails after ~20 s.
fn pump(b: &mut UringBackend, mut step: impl FnMut(&mut UringBackend, Vec<Completion>) -> bool) {
    let mut out = Vec::new();
    for _ in 0..200 {
        if step(b, std::mem::take(&mut out)) {
            return;
        }
        b.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
    }
    panic!("condition not reached");
}

type Got = std::collections::HashMap<u64, Vec<u8>>;

/// Receive until `total` bytes arrived over all connections (recycling each buffer at once); other completions
/// are returned.
fn recv_until(b: &mut UringBackend, got: &mut Got, total: usize) -> Vec<Completion> {
    let mut others = Vec::new();
    let mut out = Vec::new();
    for _ in 0..200 {
        if got.values().map(Vec::len).sum::<usize>() >= total {
            return others;
        }
        b.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
        for c in out.drain(..) {
            match c {
                Completion::Data { token, buf } => {
                    got.entry(token)
                        .or_default()
                        .extend_from_slice(b.data(&buf));
                    b.recycle(buf);
                }
                other => others.push(other),
            }
        }
    }
    panic!(
        "received {} of {total} bytes",
        got.values().map(Vec::len).sum::<usize>()
    );
}

#[test]
fn accepts_several_connections_on_one_multishot() {
    let Some(mut b) = backend(64, 4, 4096) else {
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    b.add_listener(7, l.as_raw_fd()).unwrap();
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
        .collect();
    let mut fds = Vec::new();
    pump(&mut b, |_, round| {
        for c in round {
            match c {
                Completion::Accepted { listener, fd } => {
                    assert_eq!(listener, 7);
                    fds.push(fd);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        fds.len() >= 5
    });
    // Each accepted fd is one of our clients' peers.
    let mut peers: Vec<_> = fds
        .iter()
        .map(|&fd| {
            let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let p = s.peer_addr().unwrap();
            assert!(s.nodelay().unwrap(), "accepted sockets get TCP_NODELAY");
            p
        })
        .collect();
    let mut locals: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    peers.sort();
    locals.sort();
    assert_eq!(peers, locals);
}

#[test]
fn many_connections_share_fewer_buffers_and_idle_ones_hold_none() {
    let Some(mut b) = backend(256, 4, 256) else {
        return;
    };
    let mut peers = Vec::new();
    for t in 0..32u64 {
        let (fd, peer) = tcp_pair();
        b.add_conn(t, fd).unwrap();
        peers.push(peer);
    }
    b.wait(Some(Duration::ZERO), &mut Vec::new()).unwrap();
    assert_eq!(b.buffers_out(), 0, "idle connections hold no buffer");
    assert_eq!(b.bufs.available(), 4);
    let mut want = std::collections::HashMap::new();
    for (t, p) in peers.iter_mut().enumerate() {
        let msg = format!("message from connection {t}").repeat(3);
        p.write_all(msg.as_bytes()).unwrap();
        want.insert(t as u64, msg.into_bytes());
    }
    let mut got = Got::new();
    let total: usize = want.values().map(Vec::len).sum();
    let others = recv_until(&mut b, &mut got, total);
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(got, want);
    assert_eq!(b.buffers_out(), 0);
}

#[test]
fn enobufs_rearms_when_buffers_come_back_and_loses_nothing() {
    let Some(mut b) = backend(64, 2, 64) else {
        return;
    };
    let mut peers = Vec::new();
    for t in 0..6u64 {
        let (fd, peer) = tcp_pair();
        b.add_conn(t, fd).unwrap();
        peers.push(peer);
    }
    b.flush().unwrap();
    for (t, p) in peers.iter_mut().enumerate() {
        p.write_all(&[t as u8; 40]).unwrap();
    }
    // Hold every buffer we get: the ring runs dry and the other receives end with ENOBUFS.
    let mut held = Vec::new();
    pump(&mut b, |b, round| {
        for c in round {
            if let Completion::Data { token, buf } = c {
                held.push((token, buf));
            }
        }
        b.stats().enobufs > 0
    });
    assert!(b.buffers_out() <= 2);
    let mut got = Got::new();
    for (t, buf) in held {
        got.entry(t).or_default().extend_from_slice(b.data(&buf));
        b.recycle(buf);
    }
    recv_until(&mut b, &mut got, 6 * 40);
    for t in 0..6u64 {
        assert_eq!(
            got[&t],
            vec![t as u8; 40],
            "connection {t} lost or reordered bytes"
        );
    }
    assert!(b.stats().recv_rearms > 0, "a starved receive was re-armed");
    assert_eq!(b.buffers_out(), 0);
}

#[test]
fn sends_to_many_connections_go_out_in_one_submit() {
    let Some(mut b) = backend(256, 8, 1024) else {
        return;
    };
    let mut peers = Vec::new();
    for t in 0..50u64 {
        let (fd, peer) = tcp_pair();
        b.add_conn(t, fd).unwrap();
        peers.push(peer);
    }
    b.flush().unwrap();
    let before = b.stats();
    for t in 0..50u64 {
        b.queue_send(t, Bytes::from(format!("reply {t}"))).unwrap();
    }
    assert_eq!(
        b.stats().enters,
        before.enters,
        "queue_send makes no syscall"
    );
    b.flush().unwrap();
    let after = b.stats();
    assert_eq!(
        after.enters,
        before.enters + 1,
        "one io_uring_enter for the whole round"
    );
    assert_eq!(after.submitted - before.submitted, 50);
    let mut sent = 0;
    pump(&mut b, |_, round| {
        for c in round {
            match c {
                Completion::Sent { queued, short, .. } => {
                    assert_eq!(queued, 0);
                    assert!(!short);
                    sent += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        sent == 50
    });
    for (t, p) in peers.iter_mut().enumerate() {
        let want = format!("reply {t}");
        let mut buf = vec![0; want.len()];
        p.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want.as_bytes());
    }
}

fn set_buf(fd: RawFd, opt: libc::c_int, bytes: libc::c_int) {
    // SAFETY: valid socket and option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &bytes as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[test]
fn large_payload_to_slow_reader_arrives_whole_and_in_order() {
    let Some(mut b) = backend(64, 4, 1024) else {
        return;
    };
    let (fd, mut peer) = tcp_pair();
    set_buf(fd, libc::SO_SNDBUF, 16 * 1024);
    set_buf(peer.as_raw_fd(), libc::SO_RCVBUF, 16 * 1024);
    b.add_conn(1, fd).unwrap();
    // 4 chunks of 1 MiB; byte i of the stream is (i / 4) as u32's little-endian bytes, so any gap, repeat or
    // swap shows.
    const CHUNK: usize = 1 << 20;
    let stream: Vec<u8> = (0..(4 * CHUNK / 4) as u32)
        .flat_map(u32::to_le_bytes)
        .collect();
    for c in stream.chunks(CHUNK) {
        b.queue_send(1, Bytes::copy_from_slice(c)).unwrap();
    }
    assert_eq!(b.queued_bytes(1), 4 * CHUNK);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(4 * CHUNK);
        let mut buf = [0u8; 8192];
        while got.len() < 4 * CHUNK {
            let n = peer.read(&mut buf).unwrap();
            assert!(n > 0, "early EOF");
            got.extend_from_slice(&buf[..n]);
            std::thread::sleep(Duration::from_micros(200));
        }
        got
    });
    let mut written = 0;
    let mut out = Vec::new();
    while b.queued_bytes(1) > 0 {
        b.wait(Some(Duration::from_millis(100)), &mut out).unwrap();
        for c in out.drain(..) {
            match c {
                Completion::Sent { written: n, .. } => written += n,
                Completion::SendBlocked { .. } | Completion::Timeout => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(written, 4 * CHUNK);
    let got = reader.join().unwrap();
    assert!(got == stream, "stream corrupted or reordered");
    let s = b.stats();
    assert!(
        s.short_sends + s.send_eagain > 0,
        "a 1 MiB send into a 16 KiB buffer cannot go whole: {s:?}"
    );
}

#[test]
fn peer_close_is_a_zero_byte_completion() {
    let Some(mut b) = backend(64, 4, 1024) else {
        return;
    };
    let (fd, mut peer) = tcp_pair();
    b.add_conn(9, fd).unwrap();
    peer.write_all(b"last words").unwrap();
    drop(peer);
    let mut got = Got::new();
    let others = recv_until(&mut b, &mut got, 10);
    assert_eq!(got[&9], b"last words");
    let mut closed = false;
    let mut first = others;
    pump(&mut b, |_, round| {
        for c in first.drain(..).chain(round) {
            match c {
                Completion::PeerClosed { token: 9 } => closed = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        closed
    });
    assert_eq!(b.in_flight(9), 0, "the receive ended");
    b.cancel_conn(9).unwrap();
    let mut out = Vec::new();
    b.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(
        matches!(out.as_slice(), [Completion::Cancelled { token: 9, .. }]),
        "{out:?}"
    );
    close(fd);
}

#[test]
fn cancel_leaves_nothing_of_the_connection_in_the_ring() {
    let Some(mut b) = backend(64, 4, 1024) else {
        return;
    };
    let (fd, mut peer) = tcp_pair();
    set_buf(fd, libc::SO_SNDBUF, 8 * 1024);
    set_buf(peer.as_raw_fd(), libc::SO_RCVBUF, 8 * 1024);
    b.add_conn(5, fd).unwrap();
    // The peer never reads: the send blocks in the kernel (send or POLLOUT in flight) beside the receive.
    b.queue_send(5, Bytes::from(vec![7u8; 4 << 20])).unwrap();
    pump(&mut b, |b, _| {
        b.stats().short_sends + b.stats().send_eagain > 0
    });
    assert_eq!(b.in_flight(5), 2, "receive and send armed");
    b.cancel_conn(5).unwrap();
    assert!(
        b.queue_send(5, Bytes::from_static(b"late")).is_err(),
        "no sends after cancel"
    );
    let mut cancelled = None;
    pump(&mut b, |b, round| {
        for c in round {
            match c {
                Completion::Cancelled { token, fd, unsent } => {
                    cancelled = Some((token, fd, unsent))
                }
                Completion::Data { buf, .. } => b.recycle(buf),
                _ => {}
            }
        }
        cancelled.is_some()
    });
    let (token, cfd, unsent) = cancelled.unwrap();
    assert_eq!((token, cfd), (5, fd));
    let unsent: usize = unsent.iter().map(Bytes::len).sum();
    assert!(
        unsent > 0 && unsent < 4 << 20,
        "unsent rest handed back: {unsent}"
    );
    assert_eq!(b.in_flight(5), 0);
    assert_eq!(b.conn_count(), 0);
    // Bytes the peer sends now stay in the socket: no receive of this ring takes them.
    peer.write_all(b"for the next shard").unwrap();
    let mut out = Vec::new();
    for _ in 0..3 {
        b.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
    }
    assert!(
        out.iter().all(|c| matches!(c, Completion::Timeout)),
        "completions after cancel: {out:?}"
    );
    let mut buf = [0u8; 64];
    let n = loop {
        // SAFETY: reading into a valid buffer from the fd the ring gave back.
        let n = unsafe { libc::recv(cfd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n >= 0 {
            break n as usize;
        }
        assert_eq!(io::Error::last_os_error().kind(), io::ErrorKind::WouldBlock);
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(&buf[..n], b"for the next shard");
    // The slot is reusable for a new token.
    let (fd2, _peer2) = tcp_pair();
    b.add_conn(5, fd2).unwrap();
    assert_eq!(b.conn_count(), 1);
    close(cfd);
}

#[test]
fn doorbell_wakes_wait() {
    let Some(mut b) = backend(64, 4, 1024) else {
        return;
    };
    // SAFETY: plain eventfd creation.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    b.set_doorbell(efd).unwrap();
    let ringer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let one: u64 = 1;
        // SAFETY: 8-byte write of a u64 to an eventfd.
        unsafe { libc::write(efd, &one as *const u64 as *const libc::c_void, 8) };
    });
    let mut out = Vec::new();
    // A long deadline, so only the doorbell can end this wait.
    b.wait(Some(Duration::from_secs(30)), &mut out).unwrap();
    ringer.join().unwrap();
    assert!(matches!(out.as_slice(), [Completion::Doorbell]), "{out:?}");
    // Drained by the backend's read, and re-armed: a second ring wakes it again.
    let one: u64 = 1;
    unsafe { libc::write(efd, &one as *const u64 as *const libc::c_void, 8) };
    out.clear();
    b.wait(Some(Duration::from_secs(30)), &mut out).unwrap();
    assert!(matches!(out.as_slice(), [Completion::Doorbell]), "{out:?}");
    close(efd);
}

#[test]
fn timeout_wakes_wait() {
    let Some(mut b) = backend(64, 4, 1024) else {
        return;
    };
    let mut out = Vec::new();
    // The start-up probe left no timer behind (it would surface as a stale Timeout in a later wait).
    assert!(b.timer.is_none());
    b.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    b.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
    assert!(matches!(out.as_slice(), [Completion::Timeout]), "{out:?}");
    // A shorter deadline moves an armed longer one forward.
    out.clear();
    b.arm_timer(Duration::from_secs(3600)).unwrap();
    b.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
    assert!(matches!(out.as_slice(), [Completion::Timeout]), "{out:?}");
    assert!(b.timer.is_none());
}

#[test]
fn user_data_round_trips() {
    for (k, g, i) in [
        (K_RECV, 0, 0),
        (K_SEND, 0xff_ffff, u32::MAX),
        (K_TIMER, 5, 77),
    ] {
        assert_eq!(ud_parts(ud(k, g, i)), (k, g, i));
    }
}

#[test]
fn sqpoll_ring_receives_and_sends() {
    let cfg = UringConfig {
        entries: 64,
        buf_count: 4,
        buf_size: 1024,
        sqpoll_idle_ms: Some(10),
        ..UringConfig::default()
    };
    let mut b = match UringBackend::with_config(cfg) {
        Ok(b) => b,
        Err(e) => {
            // SQPOLL can need privileges the plain ring does not; the plain ring is what the tests require.
            eprintln!("skipped: SQPOLL ring unavailable: {e}");
            return;
        }
    };
    let (fd, mut peer) = tcp_pair();
    b.add_conn(3, fd).unwrap();
    peer.write_all(b"ping").unwrap();
    let mut got = Got::new();
    recv_until(&mut b, &mut got, 4);
    assert_eq!(got[&3], b"ping");
    b.queue_send(3, Bytes::from_static(b"pong")).unwrap();
    pump(&mut b, |b, _| b.queued_bytes(3) == 0);
    let mut buf = [0u8; 4];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}
