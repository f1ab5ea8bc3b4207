//! The shard loop's socket backend, behind one small interface: epoll (readiness; one syscall per recv and per
//! send, `net/epoll.rs`) or io_uring (completions; multishot accept and receive, one `io_uring_enter` per round
//! for every send, `net/uring.rs`). The loop, the sans-io core and the stream layers (TLS, WebSocket) see the
//! same events and calls either way:
//! - `poll`: new connections, readable and writable connections, the doorbell, lingering sockets, and (io_uring)
//!   the end of a close or hand-off;
//! - `recv` / `send` per connection (the loop's own budgets and backpressure decide when);
//! - `submit` once a round's writes are queued;
//! - `close` / `handoff`, after which nothing of the connection is left in this shard's backend.

mod epoll;
#[cfg(test)]
mod tests;
mod uring;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

pub use epoll::EpollNet;
pub use uring::UringNet;

use crate::server::netpoll::{Epoll, IoResult};

/// Token slots that are not connections (a connection's token is its `ConnKey`: slot index low, generation
/// high): listeners (generation = listener index), the doorbell, lingering sockets (generation = the fd).
pub const LISTENER_IDX: u32 = u32::MAX;
pub const DOORBELL_IDX: u32 = u32::MAX - 1;
pub const LINGER_IDX: u32 = u32::MAX - 2;

pub fn special_token(idx: u32, gen: u32) -> u64 {
    idx as u64 | ((gen as u64) << 32)
}

fn token_parts(token: u64) -> (u32, u32) {
    (token as u32, (token >> 32) as u32)
}

/// The socket backend a broker runs (`io` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Epoll,
    Uring,
}

impl IoKind {
    pub fn name(self) -> &'static str {
        match self {
            IoKind::Epoll => "epoll",
            IoKind::Uring => "uring",
        }
    }
}

/// The backend for `io`: `auto` probes io_uring (ring creation, the opcodes we use, buffer ring registration,
/// multishot receive) and the locked memory all shards' rings need; a failure falls back to epoll, logged once.
/// `uring` refuses the start with the reason instead.
pub fn choose(mode: crate::config::IoMode, shards: usize, io_memory: u64) -> io::Result<IoKind> {
    use crate::config::IoMode;
    let usable = || -> io::Result<()> {
        crate::server::uring::probe()?;
        let need = crate::limits::uring_memlock_bytes(shards)
            .saturating_add(crate::limits::required_memlock_bytes(shards, io_memory));
        let have = crate::limits::memlock_soft_limit();
        // Kernels before 5.12 charge rings to RLIMIT_MEMLOCK; later ones only the buffer ring's descriptors.
        if have < need {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("RLIMIT_MEMLOCK is {have} bytes; glommio and {shards} shards' socket rings may need {need}"),
            ));
        }
        Ok(())
    };
    match mode {
        IoMode::Epoll => Ok(IoKind::Epoll),
        IoMode::Uring => usable()
            .map(|()| IoKind::Uring)
            .map_err(|e| io::Error::other(format!("io = \"uring\": io_uring is not usable: {e}"))),
        IoMode::Auto => match usable() {
            Ok(()) => Ok(IoKind::Uring),
            Err(e) => {
                tracing::info!("io = \"auto\": io_uring not usable ({e}); using epoll");
                Ok(IoKind::Epoll)
            }
        },
    }
}

/// What happened on the shard's sockets since the last `poll`.
#[derive(Debug)]
pub enum NetEvent {
    /// A listener (by its index in the shard's list) accepted a connection: non-blocking, TCP_NODELAY.
    Accepted { listener: usize, fd: RawFd },
    /// accept failed (out of file descriptors, ...): the loop pauses accepting for a second.
    AcceptFailed { err: io::Error },
    /// A connection has bytes to `recv`; `hup`: the peer closed or the socket failed (read until `recv` says so).
    Readable { token: u64, hup: bool },
    /// A connection's socket takes bytes again (epoll: EPOLLOUT; io_uring: its queued bytes are all sent).
    Writable { token: u64 },
    /// The socket buffer filled under an in-flight send (io_uring reports EAGAIN late, epoll at `send`).
    SendBlocked { token: u64 },
    /// A queued send failed: the connection is broken.
    Failed { token: u64 },
    /// A peer shard or the log's syncer rang this shard's eventfd.
    Doorbell,
    /// A lingering socket (closed by us, waiting for the client's close) is readable.
    Linger(RawFd),
    /// A `close` finished: nothing of the connection is left in the backend; the fd is ours to linger on.
    Closed { fd: RawFd },
    /// A `handoff` finished: the fd may go to its owner shard, after the bytes the kernel had already received
    /// (`raced`, in order after what the loop read) and before the wire bytes not sent yet (`unsent`).
    Released {
        fd: RawFd,
        unsent: Vec<Bytes>,
        raced: BytesMut,
    },
}

/// What a `send` did.
#[derive(Debug)]
pub enum SendResult {
    /// The backend took this many bytes (written, or queued to the kernel in order).
    Done(usize),
    /// The socket buffer is full (EAGAIN): `Writable` follows when it drains.
    WouldBlock,
    /// An earlier send of this connection is still in flight (io_uring): `Writable` follows when it is done.
    Busy,
    Failed,
}

pub enum Net {
    Epoll(EpollNet),
    Uring(Box<UringNet>),
}

impl Net {
    pub fn kind(&self) -> IoKind {
        match self {
            Net::Epoll(_) => IoKind::Epoll,
            Net::Uring(_) => IoKind::Uring,
        }
    }

    pub fn add_listener(&mut self, index: usize, fd: RawFd) -> io::Result<()> {
        match self {
            Net::Epoll(n) => n.add_listener(index, fd),
            Net::Uring(n) => n.add_listener(index, fd),
        }
    }

    /// The eventfd peers and the log's syncer ring.
    pub fn set_doorbell(&mut self, efd: RawFd) -> io::Result<()> {
        match self {
            Net::Epoll(n) => n.set_doorbell(efd),
            Net::Uring(n) => n.set_doorbell(efd),
        }
    }

    /// Watch a new connection socket; `token` names it in every event.
    pub fn add_conn(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        match self {
            Net::Epoll(n) => n.add_conn(token, fd),
            Net::Uring(n) => n.add_conn(token, fd),
        }
    }

    /// Events since the last call, sleeping up to `timeout` for the first (zero: do not sleep). The one place a
    /// shard sleeps.
    pub fn poll(&mut self, out: &mut Vec<NetEvent>, timeout: Duration) -> io::Result<()> {
        out.clear();
        match self {
            Net::Epoll(n) => n.poll(out, timeout),
            Net::Uring(n) => n.poll(out, timeout),
        }
    }

    /// Append a connection's received bytes to `buf` (epoll: one recv(2) of up to `max`; io_uring: what the
    /// ring received since the last call).
    pub fn recv(&mut self, token: u64, fd: RawFd, buf: &mut BytesMut, max: usize) -> IoResult {
        match self {
            Net::Epoll(_) => crate::server::netpoll::recv_into(fd, buf, max),
            Net::Uring(n) => n.recv_into(token, buf),
        }
    }

    /// After a `recv` of `n` bytes (of at most `max`): is nothing more waiting, so that the next arrival is a
    /// new `Readable` event? (epoll: a short read emptied the socket; io_uring: the inbox is empty.)
    pub fn drained(&self, token: u64, n: usize, max: usize) -> bool {
        match self {
            Net::Epoll(_) => n < max,
            Net::Uring(n) => n.inbox_empty(token),
        }
    }

    /// Send `data` (the caller consumes what `Done` says was taken).
    pub fn send(&mut self, token: u64, fd: RawFd, data: &[u8]) -> SendResult {
        match self {
            Net::Epoll(_) => epoll::send(fd, data),
            Net::Uring(n) => n.send(token, data),
        }
    }

    /// Best effort before a close: the reason (CONNACK, DISCONNECT) goes out ahead of the FIN.
    pub fn send_last(&mut self, token: u64, fd: RawFd, data: &[u8]) -> usize {
        match self {
            Net::Epoll(_) => match epoll::send(fd, data) {
                SendResult::Done(n) => n,
                _ => 0,
            },
            Net::Uring(n) => n.send_last(token, data),
        }
    }

    /// Submit what this round queued (io_uring: every connection's sends in one enter; epoll: nothing to do).
    pub fn submit(&mut self) {
        if let Net::Uring(n) = self {
            n.submit();
        }
    }

    /// Stop watching a connection the loop closes. `Some(fd)`: done now, linger on `fd`; `None`: a
    /// `NetEvent::Closed` follows once the kernel has let go of it.
    pub fn close(&mut self, token: u64, fd: RawFd) -> Option<RawFd> {
        match self {
            Net::Epoll(_) => Some(fd),
            Net::Uring(n) => {
                n.close(token, fd);
                None
            }
        }
    }

    /// Stop watching a connection moving to another shard. True: done now; false: `NetEvent::Released` follows.
    pub fn handoff(&mut self, token: u64, fd: RawFd) -> bool {
        match self {
            Net::Epoll(n) => {
                n.remove(fd);
                true
            }
            Net::Uring(n) => n.handoff(token, fd),
        }
    }

    /// The epoll set lingering sockets are watched in, and whether they are in it already (epoll: the
    /// connection set itself; io_uring: a small set of its own, which the ring polls).
    pub fn linger_set(&self) -> (&Epoll, bool) {
        match self {
            Net::Epoll(n) => (n.epoll(), true),
            Net::Uring(n) => (n.linger_set(), false),
        }
    }

    /// Stop (and restart) accepting: out of file descriptors.
    pub fn pause_accepts(&mut self, fds: &[RawFd]) {
        match self {
            Net::Epoll(n) => n.pause_accepts(fds),
            Net::Uring(n) => n.pause_accepts(),
        }
    }

    pub fn resume_accepts(&mut self, fds: &[RawFd]) {
        match self {
            Net::Epoll(n) => n.resume_accepts(fds),
            Net::Uring(n) => n.resume_accepts(),
        }
    }
}
