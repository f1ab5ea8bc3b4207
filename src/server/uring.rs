//! One shard's socket backend on io_uring: multishot accept per listener, multishot receive per connection into
//! a provided-buffer ring, sends of every dirty connection submitted together, the doorbell and the keep-alive
//! timer as ring completions, so the shard waits in exactly one place (`wait`).
//!
//! Ownership and ordering:
//! - Received bytes live in ring buffers. A `Completion::Data` carries a `RecvBuf` handle; `data()` views it and
//!   `recycle()` hands the buffer back to the kernel. Until then the kernel cannot reuse it, so the caller should
//!   consume (or copy a partial frame out) and recycle within the round. When the ring is empty the kernel ends
//!   the connection's multishot receive with ENOBUFS; the data stays in the socket and the receive is re-armed
//!   at the next `wait` once a buffer is back (counted in `Stats::enobufs`).
//! - `queue_send` takes the bytes (`Bytes`, so the caller can keep a cheap clone). The backend owns them until
//!   the kernel reports the send, so they stay valid while in flight. One send per connection is in flight at a
//!   time; later bytes queue behind it in order, and a short write resubmits the rest first, so writes are never
//!   reordered. EAGAIN (the socket buffer is full) arms a one-shot POLLOUT and resends when it fires.
//! - `cancel_conn` cancels every operation of the connection in this ring (receive, send, POLLOUT) and reports
//!   `Completion::Cancelled` with the fd and any unsent bytes once the kernel has confirmed the last one: only then
//!   may the fd be closed or handed to another shard. Data completions that raced the cancel come before it.
//!
//! Fixed (registered) files: not used. A fixed-file table is per ring, sized up front and bounded by
//! RLIMIT_NOFILE; a million connections would need a million-slot table per shard (8 MiB of kernel memory each)
//! and a fixed file cannot move to another shard's ring without MSG_RING plus a second install, while hand-off
//! after CONNECT is the common case. The saving is one fget/fput per operation, and with multishot receive that
//! is once per arm, not per message. (Registering the ring's own fd would save the fget per `io_uring_enter`,
//! but io-uring 0.7 keeps that registration in a `Submitter` value, which `IoUring::submit` does not reuse.)

mod bufring;
mod complete;
mod conns;
mod send;
mod setup;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod wait;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use bytes::Bytes;
use io_uring::types::{CancelBuilder, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use bufring::BufRing;
pub use setup::probe;

/// Buffer group id of the shard's one provided-buffer ring.
const BGID: u16 = 0;

// user_data: kind in the top 8 bits, slot generation in the next 24, slot index in the low 32.
const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_POLLOUT: u64 = 4;
const K_CANCEL: u64 = 5;
const K_DOORBELL: u64 = 6;
const K_TIMER: u64 = 7;
/// Completions of our own bookkeeping ops (timer updates) that carry nothing for the caller.
const K_QUIET: u64 = 8;
/// The cancel of one connection's receive (`pause_recv`).
const K_RECV_CANCEL: u64 = 9;
/// A one-shot readability poll of a watched fd (`watch`).
const K_WATCH: u64 = 10;

fn ud(kind: u64, gen: u32, idx: u32) -> u64 {
    kind << 56 | ((gen as u64 & 0xff_ffff) << 32) | idx as u64
}

fn ud_parts(ud: u64) -> (u64, u32, u32) {
    (ud >> 56, ((ud >> 32) & 0xff_ffff) as u32, ud as u32)
}

/// What the backend is asked to build.
#[derive(Clone, Debug)]
pub struct UringConfig {
    /// Submission queue entries (the completion queue gets twice as many).
    pub entries: u32,
    /// Provided receive buffers (a power of two, at most 32,768): the most connections with unread data at once.
    pub buf_count: u16,
    /// Bytes per receive buffer.
    pub buf_size: u32,
    /// Kernel-side submission polling with this idle time in ms (`io_sqpoll`); costs a kernel thread spinning.
    pub sqpoll_idle_ms: Option<u32>,
    /// Bytes queued for one connection (in flight included) past which `queue_send` refuses more.
    pub send_queue_limit: usize,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            entries: 1024,
            buf_count: 256,
            buf_size: 16 * 1024,
            sqpoll_idle_ms: None,
            send_queue_limit: 8 << 20,
        }
    }
}

/// A filled receive buffer lent to the caller; give it back with `UringBackend::recycle`.
#[must_use = "a RecvBuf not recycled is a receive buffer lost to the ring"]
#[derive(Debug)]
pub struct RecvBuf {
    bid: u16,
    len: u32,
}

impl RecvBuf {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug)]
pub enum Completion {
    /// A listener accepted a connection (non-blocking, close-on-exec, TCP_NODELAY); register it with `add_conn`.
    Accepted { listener: u64, fd: RawFd },
    /// accept failed (EMFILE, ENFILE, ...): the listener stays armed.
    AcceptError { listener: u64, err: io::Error },
    /// Bytes read from a connection, in a ring buffer.
    Data { token: u64, buf: RecvBuf },
    /// The peer closed its side (0-byte receive); no more Data will come.
    PeerClosed { token: u64 },
    /// The receive failed (reset, ...); no more Data will come.
    RecvError { token: u64, err: io::Error },
    /// `written` bytes of the connection's queue reached the socket; `queued` are still waiting (a short write
    /// leaves the rest at the front of the queue). `short` says the kernel took less than was submitted.
    Sent {
        token: u64,
        written: usize,
        queued: usize,
        short: bool,
    },
    /// The socket buffer is full: the backend waits for POLLOUT and resends (for backpressure accounting).
    SendBlocked { token: u64 },
    /// The send failed; the queued bytes are dropped (the connection is broken).
    SendError { token: u64, err: io::Error },
    /// Nothing of the connection is left in this ring: close the fd or hand it, with `unsent`, to another shard.
    Cancelled {
        token: u64,
        fd: RawFd,
        unsent: Vec<Bytes>,
    },
    /// The doorbell eventfd was rung (and has been drained).
    Doorbell,
    /// A watched fd became readable (`watch`; one-shot: watch again to hear of it again).
    Watched { token: u64 },
    /// The deadline given to `wait` passed.
    Timeout,
}

/// Counters for measuring and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// io_uring_enter calls made (submit or wait).
    pub enters: u64,
    /// SQEs handed to the kernel.
    pub submitted: u64,
    pub short_sends: u64,
    pub send_eagain: u64,
    /// Receives ended because the buffer ring was empty.
    pub enobufs: u64,
    pub recv_rearms: u64,
    pub accept_rearms: u64,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum RecvState {
    Armed,
    /// Ended with ENOBUFS: re-arm once a buffer is back.
    Starved,
    /// Ended for good (peer closed, error, cancelled).
    Done,
    /// Stopped by `pause_recv`: re-armed by `resume_recv`.
    Held,
}

struct Conn {
    token: u64,
    fd: RawFd,
    gen: u32,
    recv: RecvState,
    /// A send or its POLLOUT is in the kernel: the front of `queue` is borrowed by it.
    send_busy: bool,
    /// Length of the front chunk submitted in the in-flight send.
    send_len: usize,
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Operations of this connection the kernel has not finished (receive, send/poll, cancel).
    ops: u32,
    cancelling: bool,
    /// `pause_recv` asked for no more Data until `resume_recv`.
    recv_hold: bool,
}

struct Listener {
    token: u64,
    fd: RawFd,
    /// Its multishot accept is in the kernel.
    armed: bool,
}

pub struct UringBackend {
    ring: IoUring,
    bufs: BufRing,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    gens: Vec<u32>,
    by_token: std::collections::HashMap<u64, u32, ahash::RandomState>,
    /// Completions taken from the queue (reused).
    cqe_buf: Vec<cqueue::Entry>,
    listeners: Vec<Listener>,
    starved: Vec<u32>,
    /// `pause_accepts`: ended accepts are not re-armed until `resume_accepts`.
    accepts_paused: bool,
    /// Tokens of watched fds, by watch slot.
    watches: Vec<(u64, RawFd)>,
    doorbell: Option<(RawFd, Box<u64>)>,
    /// Absolute CLOCK_MONOTONIC deadline (ns) of the armed timer.
    timer: Option<u64>,
    /// Read by the kernel when a timeout SQE is submitted (it copies the value then).
    timer_ts: Box<Timespec>,
    ready: VecDeque<Completion>,
    send_queue_limit: usize,
    stats: Stats,
    sqpoll: bool,
    /// The last enter was cut short by a signal: `wait` returns instead of sleeping again.
    interrupted: bool,
}

impl UringBackend {
    /// Queue an SQE; if the submission queue is full, submit what is there first (one extra enter).
    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every SQE we build points only at memory the backend owns until its completion (send
            // queues, the doorbell box, the ring buffers) or that the kernel copies at submission (timespec).
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.enter(0)?;
        }
    }

    fn enter(&mut self, want: usize) -> io::Result<()> {
        self.stats.enters += 1;
        match self.ring.submit_and_wait(want) {
            Ok(n) => {
                self.stats.submitted += n as u64;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                self.interrupted = true;
                Ok(())
            }
            // The completion queue is full (EBUSY) or the kernel is short of memory for now (EAGAIN): harvest.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn conn(&mut self, idx: u32) -> &mut Conn {
        self.conns[idx as usize].as_mut().expect("live slot")
    }

    /// The live connection a completion belongs to (None if the slot was reused: cannot happen while `ops`
    /// counts it, kept as a guard).
    fn slot(&self, gen: u32, idx: u32) -> Option<u32> {
        match self.conns.get(idx as usize) {
            Some(Some(c)) if c.gen == gen => Some(idx),
            _ => None,
        }
    }

    /// An operation of a cancelling connection ended: report `Cancelled` when it was the last.
    fn end_op(&mut self, idx: u32) {
        if self.conn(idx).ops == 0 {
            self.finish_cancel(idx);
        }
    }

    fn finish_cancel(&mut self, idx: u32) {
        let c = self.conns[idx as usize].take().expect("live slot");
        self.by_token.remove(&c.token);
        self.gens[idx as usize] = (c.gen + 1) & 0xff_ffff;
        self.free.push(idx);
        self.ready.push_back(Completion::Cancelled {
            token: c.token,
            fd: c.fd,
            unsent: c.queue.into(),
        });
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}

impl Drop for UringBackend {
    /// The kernel may still write into our buffers or read send queues until its operations end: cancel them
    /// all and wait (bounded) for their completions before the memory goes.
    fn drop(&mut self) {
        let e = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(ud(K_QUIET, 0, 0));
        if self.push(e).is_err() {
            return;
        }
        let ts = Timespec::new().nsec(10_000_000);
        for _ in 0..100 {
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let live: u32 = self.conns.iter().flatten().map(|c| c.ops).sum();
            let cqes: Vec<cqueue::Entry> = self.ring.completion().collect();
            for cqe in cqes {
                let (kind, gen, idx) = ud_parts(cqe.user_data());
                if matches!(kind, K_RECV | K_SEND | K_POLLOUT | K_CANCEL | K_RECV_CANCEL)
                    && !cqueue::more(cqe.flags())
                {
                    if let Some(Some(c)) = self.conns.get_mut(idx as usize) {
                        if c.gen == gen {
                            c.ops = c.ops.saturating_sub(1);
                        }
                    }
                }
            }
            if live == 0 {
                break;
            }
        }
    }
}
