//! Syscalls per message, io_uring backend vs today's epoll path (issue 17). Not a test: a tool to run under
//! `perf stat -e raw_syscalls:sys_enter` (or `strace -c -f`).
//!
//!     echo_syscalls server uring|uring-sqpoll|epoll PORT TOTAL_BYTES   # echoes until TOTAL_BYTES came back out, then exits
//!     echo_syscalls client PORT CONNS ROUNDS MSG_BYTES     # each round: one message on every connection, then
//!                                                          # read every echo
//!
//! The epoll server does what `shard_loop.rs` does per round: epoll_wait, one recv(2) per ready connection into a
//! shared 64 KiB scratch buffer (again while it fills it), one send(2) per connection with output.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use coremq::server::netpoll::{self, Epoll, IoResult};
use coremq::server::uring::{Completion, UringBackend, UringConfig};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n = |i: usize| -> usize { a[i].parse().expect("number") };
    match a.get(1).map(String::as_str) {
        Some("server") => {
            let l = TcpListener::bind(("127.0.0.1", n(3) as u16)).unwrap();
            let total = n(4);
            match a[2].as_str() {
                "uring" => uring_server(l, total, None),
                "uring-sqpoll" => uring_server(l, total, Some(10)),
                "epoll" => epoll_server(l, total),
                other => panic!("backend {other}?"),
            }
        }
        Some("client") => client(n(2) as u16, n(3), n(4), n(5)),
        _ => eprintln!("usage: see the module doc"),
    }
}

fn uring_server(l: TcpListener, total: usize, sqpoll_idle_ms: Option<u32>) {
    let mut b = UringBackend::with_config(UringConfig {
        entries: 4096,
        buf_count: 1024,
        buf_size: 4096,
        sqpoll_idle_ms,
        ..UringConfig::default()
    })
    .expect("io_uring");
    b.add_listener(u64::MAX, l.as_raw_fd()).unwrap();
    let (mut echoed, mut next, mut out) = (0usize, 0u64, Vec::new());
    while echoed < total {
        b.wait(None, &mut out).unwrap();
        for c in out.drain(..) {
            match c {
                Completion::Accepted { fd, .. } => {
                    b.add_conn(next, fd).unwrap();
                    next += 1;
                }
                Completion::Data { token, buf } => {
                    let bytes = Bytes::copy_from_slice(b.data(&buf));
                    b.recycle(buf);
                    b.queue_send(token, bytes).unwrap();
                }
                Completion::Sent { written, .. } => echoed += written,
                Completion::PeerClosed { .. }
                | Completion::SendBlocked { .. }
                | Completion::Timeout => {}
                other => panic!("{other:?}"),
            }
        }
    }
    eprintln!("uring: {:?}", b.stats());
}

fn epoll_server(l: TcpListener, total: usize) {
    l.set_nonblocking(true).unwrap();
    let ep = Epoll::new().unwrap();
    ep.add_listener(l.as_raw_fd(), u64::MAX).unwrap();
    let mut fds: Vec<RawFd> = Vec::new();
    let mut outs: Vec<BytesMut> = Vec::new();
    let mut scratch = BytesMut::with_capacity(64 * 1024);
    let mut events = Vec::with_capacity(1024);
    let mut dirty = Vec::new();
    let mut echoed = 0usize;
    while echoed < total {
        ep.wait(&mut events, -1).unwrap();
        for ev in events.iter() {
            let tok = ev.u64;
            if tok == u64::MAX {
                while let Some(fd) = netpoll::accept(l.as_raw_fd()).unwrap() {
                    ep.add_conn(fd, fds.len() as u64).unwrap();
                    fds.push(fd);
                    outs.push(BytesMut::new());
                }
                continue;
            }
            let i = tok as usize;
            loop {
                scratch.clear();
                match netpoll::recv_into(fds[i], &mut scratch, 64 * 1024) {
                    IoResult::Done(n) => {
                        outs[i].extend_from_slice(&scratch);
                        if n < 64 * 1024 {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            if !outs[i].is_empty() {
                dirty.push(i);
            }
        }
        for i in dirty.drain(..) {
            if let IoResult::Done(n) = netpoll::send(fds[i], &outs[i]) {
                let _ = outs[i].split_to(n);
                echoed += n;
            }
        }
    }
    for fd in fds {
        netpoll::close(fd);
    }
}

fn client(port: u16, conns: usize, rounds: usize, msg: usize) {
    let mut s: Vec<TcpStream> = (0..conns)
        .map(|_| {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_nodelay(true).unwrap();
            c
        })
        .collect();
    let payload = vec![0x5au8; msg];
    let mut back = vec![0u8; msg];
    let t = Instant::now();
    for _ in 0..rounds {
        for c in s.iter_mut() {
            c.write_all(&payload).unwrap();
        }
        for c in s.iter_mut() {
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, payload);
        }
    }
    let el = t.elapsed().max(Duration::from_micros(1));
    eprintln!(
        "{} messages echoed in {:.2}s",
        conns * rounds,
        el.as_secs_f64()
    );
    for c in s {
        let _ = c.into_raw_fd();
    }
}
