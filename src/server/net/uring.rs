//! The io_uring backend (`server::uring::UringBackend` underneath): multishot accept per listener, multishot
//! receive per connection into the shard's provided-buffer ring, every send of a round submitted with one
//! `io_uring_enter`, the doorbell and the clock as ring completions.
//!
//! Received bytes: each completion's ring buffer is copied into the connection's inbox and handed back to the
//! kernel at once, so the ring never runs dry because the shard cannot take a connection's bytes now (a paused
//! publisher). An idle connection holds no buffer (its inbox is empty and unallocated). An inbox past
//! `INBOX_CAP` stops the connection's receive until the loop has read it, so further bytes stay in the socket,
//! where TCP pushes back on the peer, exactly as with epoll.
//!
//! Sends: one chunk per connection in flight; while it is, `send` says `Busy` and the bytes stay in the core's
//! bounded output buffer, so backpressure is the core's as before (EAGAIN arrives as `SendBlocked`; a send
//! still in flight two polls after it was queued makes `send` say `WouldBlock`).
//!
//! Bound: a connection's inbox stops growing once it passes `INBOX_CAP` and the pause reaches the kernel; what
//! the multishot receive had already put in ring buffers by then still lands in it, so the hard bound is
//! `INBOX_CAP` plus the ring's buffers (4 MiB by default), and all connections together hold at most
//! connections x `INBOX_CAP` plus one ring.
//!
//! Closes and hand-offs cancel everything of the connection in this ring; the fd is closed or handed on only
//! after the kernel has confirmed it (`NetEvent::Closed` / `Released`).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{token_parts, NetEvent, SendResult, LINGER_IDX};
use crate::server::netpoll::{Epoll, IoResult};
use crate::server::uring::{Completion, RecvBuf, UringBackend, UringConfig};

/// Received bytes a connection may hold before its receive is stopped (the loop reads at most this much per
/// connection and round with epoll too).
pub const INBOX_CAP: usize = 64 * 1024;
/// The watch token of the lingering-socket set.
const WATCH_LINGER: u64 = u64::MAX - 1;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    Open,
    Closing,
    HandingOff,
}

struct UConn {
    /// The ring buffer of the round's first receive, read straight from the ring when the loop gets to it in
    /// the same round (the common case: no copy into `inbox`); spilled into `inbox` before the next harvest.
    pending: Option<RecvBuf>,
    inbox: BytesMut,
    /// The peer closed (or the receive failed): `recv` reports it once the inbox is empty.
    hup: bool,
    /// The receive is stopped because the inbox is full.
    held: bool,
    /// `polls` when the connection's last send was queued.
    sent_at: u32,
    state: State,
}

pub struct UringNet {
    ring: UringBackend,
    conns: std::collections::HashMap<u64, UConn, ahash::RandomState>,
    /// Connections with a `pending` ring buffer.
    holding: Vec<u64>,
    /// `poll` calls so far (wrapping): how long a send has been in flight.
    polls: u32,
    completions: Vec<Completion>,
    /// Lingering sockets are watched with a small epoll set of their own, whose fd the ring polls: the shard
    /// still sleeps in the ring only, and lingering (rare) needs no per-fd ring bookkeeping.
    linger: Epoll,
    linger_events: Vec<libc::epoll_event>,
}

impl UringNet {
    pub fn new(cfg: UringConfig) -> io::Result<Self> {
        let mut ring = UringBackend::with_config(cfg)?;
        let linger = Epoll::new()?;
        ring.watch(WATCH_LINGER, linger.raw_fd())?;
        Ok(UringNet {
            ring,
            conns: Default::default(),
            holding: Vec::new(),
            polls: 0,
            completions: Vec::new(),
            linger,
            linger_events: Vec::with_capacity(64),
        })
    }

    pub fn backend(&self) -> &UringBackend {
        &self.ring
    }

    pub(super) fn linger_set(&self) -> &Epoll {
        &self.linger
    }

    pub(super) fn add_listener(&mut self, index: usize, fd: RawFd) -> io::Result<()> {
        self.ring.add_listener(index as u64, fd)
    }

    pub(super) fn set_doorbell(&mut self, efd: RawFd) -> io::Result<()> {
        self.ring.set_doorbell(efd)
    }

    pub(super) fn add_conn(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        self.ring.add_conn(token, fd)?;
        self.conns.insert(
            token,
            UConn {
                pending: None,
                inbox: BytesMut::new(),
                hup: false,
                held: false,
                sent_at: 0,
                state: State::Open,
            },
        );
        Ok(())
    }

    pub(super) fn pause_accepts(&mut self) {
        if let Err(e) = self.ring.pause_accepts() {
            tracing::warn!(error = %e, "io_uring: cannot pause accepts");
        }
    }

    pub(super) fn resume_accepts(&mut self) {
        if let Err(e) = self.ring.resume_accepts() {
            tracing::warn!(error = %e, "io_uring: cannot resume accepts");
        }
    }

    pub(super) fn recv_into(&mut self, token: u64, buf: &mut BytesMut) -> IoResult {
        let Some(c) = self.conns.get_mut(&token) else {
            return IoResult::Closed;
        };
        if c.state != State::Open {
            return IoResult::WouldBlock;
        }
        if c.pending.is_none() && c.inbox.is_empty() {
            return if c.hup {
                IoResult::Closed
            } else {
                IoResult::WouldBlock
            };
        }
        let mut n = 0;
        if let Some(p) = c.pending.take() {
            buf.extend_from_slice(self.ring.data(&p));
            n += p.len();
            self.ring.recycle(p);
        }
        if !c.inbox.is_empty() {
            n += c.inbox.len();
            buf.extend_from_slice(&c.inbox);
            // Idle connections hold no buffer.
            c.inbox = BytesMut::new();
        }
        if std::mem::take(&mut c.held) {
            if let Err(e) = self.ring.resume_recv(token) {
                tracing::warn!(error = %e, "io_uring: cannot resume a receive");
                c.hup = true;
            }
        }
        IoResult::Done(n)
    }

    pub(super) fn inbox_empty(&self, token: u64) -> bool {
        self.conns
            .get(&token)
            .map_or(true, |c| c.pending.is_none() && c.inbox.is_empty())
    }

    pub(super) fn send(&mut self, token: u64, data: &[u8]) -> SendResult {
        let polls = self.polls;
        let c = match self.conns.get_mut(&token) {
            Some(c) if c.state == State::Open => c,
            _ => return SendResult::Failed,
        };
        if self.ring.queued_bytes(token) > 0 {
            // This kernel parks a send the socket cannot take on its own poll instead of failing it with EAGAIN.
            // Still in flight two polls after it was queued: the socket is full, as epoll's EAGAIN would say
            // (the core then treats QoS 0 overflow as a slow reader's, not as a burst to write out).
            return if polls.wrapping_sub(c.sent_at) >= 2 {
                SendResult::WouldBlock
            } else {
                SendResult::Busy
            };
        }
        if data.is_empty() {
            return SendResult::Done(0);
        }
        c.sent_at = polls;
        match self.ring.queue_send(token, Bytes::copy_from_slice(data)) {
            Ok(()) => SendResult::Done(data.len()),
            Err(_) => SendResult::Failed,
        }
    }

    pub(super) fn send_last(&mut self, token: u64, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        match self.ring.queue_send(token, Bytes::copy_from_slice(data)) {
            Ok(()) => data.len(),
            Err(_) => 0,
        }
    }

    pub(super) fn submit(&mut self) {
        if let Err(e) = self.ring.flush() {
            tracing::error!(error = %e, "io_uring submit failed");
        }
    }

    fn cancel(&mut self, token: u64, fd: RawFd, state: State) -> bool {
        let Some(c) = self.conns.get_mut(&token) else {
            return false;
        };
        c.state = state;
        if let Some(p) = c.pending.take() {
            if state == State::HandingOff {
                c.inbox.extend_from_slice(self.ring.data(&p));
            }
            self.ring.recycle(p);
        }
        if state == State::Closing {
            c.inbox = BytesMut::new();
        }
        if let Err(e) = self.ring.cancel_conn(token) {
            // Unknown to the ring (cannot happen for a registered token): nothing of it is in the ring.
            tracing::warn!(fd, error = %e, "io_uring: cancel failed");
            self.conns.remove(&token);
            return false;
        }
        true
    }

    pub(super) fn close(&mut self, token: u64, fd: RawFd) {
        if !self.cancel(token, fd, State::Closing) {
            crate::server::netpoll::close(fd);
        }
    }

    pub(super) fn handoff(&mut self, token: u64, fd: RawFd) -> bool {
        // Not registered: nothing to wait for.
        !self.cancel(token, fd, State::HandingOff)
    }

    pub(super) fn poll(&mut self, out: &mut Vec<NetEvent>, timeout: Duration) -> io::Result<()> {
        self.spill();
        self.polls = self.polls.wrapping_add(1);
        let mut comps = std::mem::take(&mut self.completions);
        comps.clear();
        let r = self.ring.wait(Some(timeout), &mut comps);
        for c in comps.drain(..) {
            self.on_completion(c, out);
        }
        self.completions = comps;
        r
    }

    /// Ring buffers the loop did not read last round go into their connections' inboxes, so a connection the
    /// shard cannot read now (paused, or past the round's budget) never keeps the ring's buffers.
    fn spill(&mut self) {
        for token in self.holding.drain(..) {
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            if let Some(p) = c.pending.take() {
                c.inbox.extend_from_slice(self.ring.data(&p));
                self.ring.recycle(p);
            }
        }
    }

    fn on_completion(&mut self, c: Completion, out: &mut Vec<NetEvent>) {
        match c {
            Completion::Accepted { listener, fd } => out.push(NetEvent::Accepted {
                listener: listener as usize,
                fd,
            }),
            Completion::AcceptError { err, .. } => out.push(NetEvent::AcceptFailed { err }),
            Completion::Data { token, buf } => {
                let Some(c) = self.conns.get_mut(&token) else {
                    self.ring.recycle(buf);
                    return;
                };
                if c.state == State::Open && c.pending.is_none() && c.inbox.is_empty() {
                    c.pending = Some(buf);
                    self.holding.push(token);
                    out.push(NetEvent::Readable { token, hup: false });
                    return;
                }
                if c.state != State::Closing {
                    // In order: the pending buffer first. Handing off: kept for the owner shard.
                    if let Some(p) = c.pending.take() {
                        c.inbox.extend_from_slice(self.ring.data(&p));
                        self.ring.recycle(p);
                    }
                    c.inbox.extend_from_slice(self.ring.data(&buf));
                }
                self.ring.recycle(buf);
                if c.state != State::Open {
                    return;
                }
                if c.inbox.len() >= INBOX_CAP && !c.held {
                    c.held = true;
                    if let Err(e) = self.ring.pause_recv(token) {
                        tracing::warn!(error = %e, "io_uring: cannot pause a receive");
                    }
                }
                out.push(NetEvent::Readable { token, hup: false });
            }
            Completion::PeerClosed { token } | Completion::RecvError { token, .. } => {
                if let Some(c) = self.conns.get_mut(&token) {
                    c.hup = true;
                    if c.state == State::Open {
                        out.push(NetEvent::Readable { token, hup: true });
                    }
                }
            }
            Completion::Sent { token, queued, .. } => {
                if !self.is_open(token) {
                    return;
                }
                if queued == 0 {
                    out.push(NetEvent::Writable { token });
                }
            }
            Completion::SendBlocked { token } => {
                if self.is_open(token) {
                    out.push(NetEvent::SendBlocked { token });
                }
            }
            Completion::SendError { token, .. } => {
                if self.is_open(token) {
                    out.push(NetEvent::Failed { token });
                }
            }
            Completion::Cancelled { token, fd, unsent } => {
                let Some(mut c) = self.conns.remove(&token) else {
                    crate::server::netpoll::close(fd);
                    return;
                };
                if let Some(p) = c.pending.take() {
                    self.ring.recycle(p);
                }
                match c.state {
                    State::HandingOff => out.push(NetEvent::Released {
                        fd,
                        unsent,
                        raced: c.inbox,
                    }),
                    State::Closing | State::Open => out.push(NetEvent::Closed { fd }),
                }
            }
            Completion::Doorbell => out.push(NetEvent::Doorbell),
            Completion::Watched { token } if token == WATCH_LINGER => {
                if self.linger.poll_now(&mut self.linger_events).is_ok() {
                    for ev in &self.linger_events {
                        let (idx, gen) = token_parts(ev.u64);
                        if idx == LINGER_IDX {
                            out.push(NetEvent::Linger(gen as RawFd));
                        }
                    }
                }
                if let Err(e) = self.ring.watch(WATCH_LINGER, self.linger.raw_fd()) {
                    tracing::warn!(error = %e, "io_uring: cannot watch lingering sockets");
                }
            }
            Completion::Watched { .. } | Completion::Timeout => {}
        }
    }

    /// A connection's inbox length and whether its receive is stopped (tests).
    #[cfg(test)]
    pub(super) fn inbox_state(&self, token: u64) -> (usize, bool) {
        self.conns.get(&token).map_or((0, false), |c| {
            (
                c.inbox.len() + c.pending.as_ref().map_or(0, RecvBuf::len),
                c.held,
            )
        })
    }

    fn is_open(&self, token: u64) -> bool {
        self.conns
            .get(&token)
            .is_some_and(|c| c.state == State::Open)
    }
}
