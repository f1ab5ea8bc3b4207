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
mod send;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::Bytes;
use io_uring::types::{CancelBuilder, Fd, TimeoutFlags, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use bufring::BufRing;
use send::drop_queue;

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

fn unsupported(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, why)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Is io_uring usable here for what the backend needs? `Err` (kind `Unsupported`) names why not, for the
/// caller to log once and fall back to epoll.
pub fn probe() -> io::Result<()> {
    UringBackend::with_config(UringConfig {
        entries: 8,
        buf_count: 1,
        buf_size: 64,
        ..UringConfig::default()
    })
    .map(drop)
}

impl UringBackend {
    pub fn new(entries: u32, buf_count: u16, buf_size: u32) -> io::Result<Self> {
        Self::with_config(UringConfig {
            entries,
            buf_count,
            buf_size,
            ..UringConfig::default()
        })
    }

    pub fn with_config(cfg: UringConfig) -> io::Result<Self> {
        let mut b = IoUring::builder();
        b.setup_cqsize(cfg.entries.saturating_mul(2));
        if let Some(idle) = cfg.sqpoll_idle_ms {
            b.setup_sqpoll(idle);
        }
        let ring = b.build(cfg.entries).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "io_uring_setup: ENOSYS (kernel without io_uring)".to_string()
                }
                Some(libc::EPERM) => {
                    "io_uring_setup: EPERM (seccomp filter or kernel.io_uring_disabled)".to_string()
                }
                Some(libc::ENOMEM) => {
                    "io_uring_setup: ENOMEM (RLIMIT_MEMLOCK too small for the ring)".to_string()
                }
                _ => format!("io_uring_setup: {e}"),
            };
            unsupported(why)
        })?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| unsupported(format!("IORING_REGISTER_PROBE: {e}")))?;
        for (code, name) in [
            (opcode::AcceptMulti::CODE, "ACCEPT"),
            (opcode::RecvMulti::CODE, "RECV"),
            (opcode::Send::CODE, "SEND"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::Timeout::CODE, "TIMEOUT"),
            (opcode::TimeoutRemove::CODE, "TIMEOUT_REMOVE"),
            (opcode::AsyncCancel2::CODE, "ASYNC_CANCEL"),
            (opcode::Read::CODE, "READ"),
        ] {
            if !probe.is_supported(code) {
                return Err(unsupported(format!("kernel lacks IORING_OP_{name}")));
            }
        }
        let bufs = BufRing::new(&ring.submitter(), BGID, cfg.buf_count, cfg.buf_size).map_err(
            |e| match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOSYS) => unsupported(format!(
                    "IORING_REGISTER_PBUF_RING: {e} (kernel before 5.19)"
                )),
                Some(libc::ENOMEM) => unsupported(format!(
                    "IORING_REGISTER_PBUF_RING: {e} (RLIMIT_MEMLOCK too small)"
                )),
                _ => e,
            },
        )?;
        let mut me = UringBackend {
            ring,
            bufs,
            conns: Vec::new(),
            free: Vec::new(),
            gens: Vec::new(),
            by_token: Default::default(),
            cqe_buf: Vec::with_capacity(256),
            listeners: Vec::new(),
            starved: Vec::new(),
            accepts_paused: false,
            watches: Vec::new(),
            doorbell: None,
            timer: None,
            timer_ts: Box::new(Timespec::new()),
            ready: VecDeque::new(),
            send_queue_limit: cfg.send_queue_limit,
            stats: Stats::default(),
            sqpoll: cfg.sqpoll_idle_ms.is_some(),
            interrupted: false,
        };
        me.check_recv_multishot()?;
        Ok(me)
    }

    /// Multishot receive (6.0) has no opcode of its own: try it on a socketpair.
    fn check_recv_multishot(&mut self) -> io::Result<()> {
        let mut sv = [0; 2];
        // SAFETY: valid out-array of two fds.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let token = u64::MAX;
        let res = (|| {
            self.add_conn(token, sv[0])?;
            // SAFETY: writes one byte from a valid buffer.
            unsafe { libc::write(sv[1], b"x".as_ptr() as *const libc::c_void, 1) };
            let mut out = Vec::new();
            for _ in 0..100 {
                self.wait(Some(Duration::from_millis(100)), &mut out)?;
                for c in out.drain(..) {
                    match c {
                        Completion::Data { buf, .. } => {
                            self.recycle(buf);
                            return Ok(());
                        }
                        Completion::RecvError { err, .. } => {
                            return Err(unsupported(format!(
                                "multishot receive: {err} (kernel before 6.0)"
                            )))
                        }
                        _ => {}
                    }
                }
            }
            Err(unsupported("multishot receive never completed".into()))
        })();
        let drained = (|| {
            if self.by_token.contains_key(&token) {
                self.cancel_conn(token)?;
            }
            let mut out = Vec::new();
            // Bounded: a kernel that never confirms the cancel fails the probe instead of hanging the start.
            for _ in 0..50 {
                if !self.by_token.contains_key(&token) {
                    return Ok(());
                }
                self.wait(Some(Duration::from_millis(100)), &mut out)?;
                for c in out.drain(..) {
                    if let Completion::Data { buf, .. } = c {
                        self.recycle(buf);
                    }
                }
            }
            Err(unsupported(
                "the probe's receive was never cancelled".into(),
            ))
        })();
        let disarmed = self.disarm_timer();
        self.stats = Stats::default();
        // SAFETY: closing the two fds we opened; the ring holds no operation on them any more (or failed).
        unsafe {
            libc::close(sv[0]);
            libc::close(sv[1]);
        }
        res.and(drained).and(disarmed)
    }

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

    /// Start a multishot accept on a listening socket; it is re-armed whenever the kernel ends it.
    pub fn add_listener(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        let idx = self.listeners.len() as u32;
        self.listeners.push(Listener {
            token,
            fd,
            armed: false,
        });
        self.arm_accept(idx)
    }

    fn arm_accept(&mut self, idx: u32) -> io::Result<()> {
        let l = &mut self.listeners[idx as usize];
        l.armed = true;
        let fd = l.fd;
        let e = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(K_ACCEPT, 0, idx));
        self.push(e)
    }

    /// Start receiving on a connection socket. `token` is the caller's name for it in every completion.
    pub fn add_conn(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        if self.by_token.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already registered",
            ));
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let gen = self.gens[idx as usize];
        self.conns[idx as usize] = Some(Conn {
            token,
            fd,
            gen,
            recv: RecvState::Armed,
            send_busy: false,
            send_len: 0,
            queue: VecDeque::new(),
            queued: 0,
            ops: 0,
            cancelling: false,
            recv_hold: false,
        });
        self.by_token.insert(token, idx);
        self.arm_recv(idx)
    }

    fn conn(&mut self, idx: u32) -> &mut Conn {
        self.conns[idx as usize].as_mut().expect("live slot")
    }

    fn arm_recv(&mut self, idx: u32) -> io::Result<()> {
        let c = self.conn(idx);
        c.recv = RecvState::Armed;
        c.ops += 1;
        let e = opcode::RecvMulti::new(Fd(c.fd), BGID)
            .build()
            .user_data(ud(K_RECV, c.gen, idx));
        self.push(e)
    }

    /// The bytes of a received buffer.
    pub fn data(&self, buf: &RecvBuf) -> &[u8] {
        self.bufs.data(buf.bid, buf.len)
    }

    /// Hand a received buffer back to the kernel.
    pub fn recycle(&mut self, buf: RecvBuf) {
        self.bufs.give_back(buf.bid);
    }

    /// Buffers the caller holds (taken by Data completions, not recycled yet).
    pub fn buffers_out(&self) -> usize {
        self.bufs.out()
    }

    /// Memory the ring's buffers pin, for the locked-memory check.
    pub fn buffer_footprint(&self) -> usize {
        self.bufs.footprint()
    }

    /// Cancel everything of this connection in the ring; `Completion::Cancelled` follows once the kernel is done.
    pub fn cancel_conn(&mut self, token: u64) -> io::Result<()> {
        let idx = *self
            .by_token
            .get(&token)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown token"))?;
        let c = self.conn(idx);
        if c.cancelling {
            return Ok(());
        }
        c.cancelling = true;
        if c.ops == 0 {
            self.finish_cancel(idx);
            return Ok(());
        }
        c.ops += 1;
        let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(c.fd)).all())
            .build()
            .user_data(ud(K_CANCEL, c.gen, idx));
        self.push(e)
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

    /// Operations of a connection still in the kernel (0 for an unknown token).
    pub fn in_flight(&self, token: u64) -> u32 {
        self.by_token
            .get(&token)
            .and_then(|&i| self.conns[i as usize].as_ref())
            .map_or(0, |c| c.ops)
    }

    /// Connections registered (cancelled ones leave at their `Cancelled`).
    pub fn conn_count(&self) -> usize {
        self.by_token.len()
    }

    /// Wake `wait` when `efd` (an eventfd) is written; the backend's read drains it.
    pub fn set_doorbell(&mut self, efd: RawFd) -> io::Result<()> {
        self.doorbell = Some((efd, Box::new(0)));
        self.arm_doorbell()
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
        let Some((efd, buf)) = self.doorbell.as_mut() else {
            return Ok(());
        };
        let e = opcode::Read::new(Fd(*efd), &mut **buf as *mut u64 as *mut u8, 8)
            .build()
            .user_data(ud(K_DOORBELL, 0, 0));
        self.push(e)
    }

    /// Submit everything queued (sends, re-arms) without waiting: one io_uring_enter.
    pub fn flush(&mut self) -> io::Result<()> {
        self.rearm_starved()?;
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enter(0)
    }

    fn rearm_starved(&mut self) -> io::Result<()> {
        if self.starved.is_empty() || self.bufs.available() == 0 {
            return Ok(());
        }
        let starved = std::mem::take(&mut self.starved);
        for idx in starved {
            let live = matches!(&self.conns[idx as usize], Some(c) if c.recv == RecvState::Starved && !c.cancelling && !c.recv_hold);
            if live {
                self.stats.recv_rearms += 1;
                self.arm_recv(idx)?;
            }
        }
        Ok(())
    }

    /// Submit what is queued and wait for completions: up to `timeout` (None: until something completes; zero:
    /// do not sleep). The one place a shard sleeps. Completions are appended to `out`; it may come back empty
    /// (a signal, or only internal completions).
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.rearm_starved()?;
        let pending = !self.ready.is_empty() || !self.ring.completion().is_empty();
        let want = match timeout {
            _ if pending => 0,
            Some(d) if d.is_zero() => 0,
            Some(d) => {
                self.arm_timer(d)?;
                1
            }
            None => 1,
        };
        let before = out.len();
        loop {
            if want == 1 || !self.ring.submission().is_empty() || self.sqpoll {
                self.enter(want)?;
            }
            self.harvest(out)?;
            // Only bookkeeping completed (a timer update, a cancel step): sleep on, unless a signal woke us.
            if want == 0 || out.len() > before || std::mem::take(&mut self.interrupted) {
                return Ok(());
            }
        }
    }

    /// Make sure a timer fires no later than `d` from now. An earlier armed timer is kept (the caller just wakes
    /// early); a later one is moved forward, so a keep-alive second costs one timeout SQE, not one per wait.
    fn arm_timer(&mut self, d: Duration) -> io::Result<()> {
        let deadline = monotonic_ns().saturating_add(d.as_nanos().min(u64::MAX as u128) as u64);
        if matches!(self.timer, Some(t) if t <= deadline) {
            return Ok(());
        }
        *self.timer_ts = Timespec::new()
            .sec(deadline / 1_000_000_000)
            .nsec((deadline % 1_000_000_000) as u32);
        let ts: *const Timespec = &*self.timer_ts;
        let e = if self.timer.is_some() {
            opcode::TimeoutUpdate::new(ud(K_TIMER, 0, 0), ts)
                .flags(TimeoutFlags::ABS)
                .build()
                .user_data(ud(K_QUIET, 0, 0))
        } else {
            opcode::Timeout::new(ts)
                .flags(TimeoutFlags::ABS)
                .build()
                .user_data(ud(K_TIMER, 0, 0))
        };
        self.timer = Some(deadline);
        self.push(e)?;
        // The kernel copies the timespec when it takes the SQE: submit now, while `timer_ts` holds this value.
        self.enter(0)
    }

    /// Remove the armed timer, so no stale Timeout reaches a later `wait`.
    fn disarm_timer(&mut self) -> io::Result<()> {
        if self.timer.take().is_none() {
            return Ok(());
        }
        let e = opcode::TimeoutRemove::new(ud(K_TIMER, 0, 0))
            .build()
            .user_data(ud(K_QUIET, 0, 0));
        self.push(e)
    }

    fn harvest(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        out.extend(self.ready.drain(..));
        let mut cqes = std::mem::take(&mut self.cqe_buf);
        let r = loop {
            cqes.clear();
            cqes.extend(self.ring.completion().take(256));
            if cqes.is_empty() {
                break Ok(());
            }
            if let Err(e) = cqes.drain(..).try_for_each(|cqe| self.complete(cqe, out)) {
                break Err(e);
            }
            out.extend(self.ready.drain(..));
        };
        self.cqe_buf = cqes;
        r
    }

    /// The live connection a completion belongs to (None if the slot was reused: cannot happen while `ops`
    /// counts it, kept as a guard).
    fn slot(&self, gen: u32, idx: u32) -> Option<u32> {
        match self.conns.get(idx as usize) {
            Some(Some(c)) if c.gen == gen => Some(idx),
            _ => None,
        }
    }

    fn complete(&mut self, cqe: cqueue::Entry, out: &mut Vec<Completion>) -> io::Result<()> {
        let (kind, gen, idx) = ud_parts(cqe.user_data());
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        match kind {
            K_ACCEPT => {
                let listener = self.listeners[idx as usize].token;
                if res >= 0 {
                    set_nodelay(res);
                    out.push(Completion::Accepted { listener, fd: res });
                } else if res != -libc::ECANCELED {
                    out.push(Completion::AcceptError {
                        listener,
                        err: io::Error::from_raw_os_error(-res),
                    });
                }
                if !more {
                    self.listeners[idx as usize].armed = false;
                    if !self.accepts_paused {
                        self.stats.accept_rearms += 1;
                        self.arm_accept(idx)?;
                    }
                }
            }
            K_RECV => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                let bid = cqueue::buffer_select(cqe.flags());
                if res > 0 && bid.is_none() {
                    // Cannot happen with buffer select; refuse the connection rather than guess.
                    let token = self.conn(idx).token;
                    out.push(Completion::RecvError {
                        token,
                        err: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "receive without a buffer id",
                        ),
                    });
                } else if let (true, Some(bid)) = (res > 0, bid) {
                    self.bufs.taken();
                    let token = self.conn(idx).token;
                    out.push(Completion::Data {
                        token,
                        buf: RecvBuf {
                            bid,
                            len: res as u32,
                        },
                    });
                }
                if more {
                    return Ok(());
                }
                // The multishot receive ended.
                let c = self.conn(idx);
                c.ops -= 1;
                let token = c.token;
                if c.cancelling {
                    c.recv = RecvState::Done;
                    self.end_op(idx);
                } else if c.recv_hold
                    && (res > 0 || res == -libc::ECANCELED || res == -libc::ENOBUFS)
                {
                    c.recv = RecvState::Held;
                } else if res > 0 || res == -libc::ECANCELED {
                    // Ended with data (e.g. the completion queue overflowed), or cancelled by a pause that
                    // `resume_recv` overtook: keep receiving.
                    self.stats.recv_rearms += 1;
                    self.arm_recv(idx)?;
                } else if res == -libc::ENOBUFS {
                    c.recv = RecvState::Starved;
                    self.stats.enobufs += 1;
                    self.starved.push(idx);
                } else if res == 0 {
                    c.recv = RecvState::Done;
                    out.push(Completion::PeerClosed { token });
                } else {
                    c.recv = RecvState::Done;
                    out.push(Completion::RecvError {
                        token,
                        err: io::Error::from_raw_os_error(-res),
                    });
                }
            }
            K_SEND => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                self.send_done(idx, res, out)?;
            }
            K_POLLOUT => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                let c = self.conn(idx);
                c.ops -= 1;
                c.send_busy = false;
                if c.cancelling {
                    self.end_op(idx);
                } else if res < 0 {
                    let token = c.token;
                    drop_queue(c);
                    out.push(Completion::SendError {
                        token,
                        err: io::Error::from_raw_os_error(-res),
                    });
                } else {
                    self.submit_send(idx)?;
                }
            }
            K_CANCEL => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                self.conn(idx).ops -= 1;
                self.end_op(idx);
            }
            K_RECV_CANCEL => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                let c = self.conn(idx);
                c.ops -= 1;
                if c.cancelling {
                    self.end_op(idx);
                }
            }
            K_WATCH if res != -libc::ECANCELED => {
                if let Some(&(token, _)) = self.watches.get(idx as usize) {
                    out.push(Completion::Watched { token });
                }
            }
            K_DOORBELL if res != -libc::ECANCELED => {
                if res < 0 {
                    tracing::warn!(
                        "doorbell read failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                out.push(Completion::Doorbell);
                self.arm_doorbell()?;
            }
            // ECANCELED is a timer we removed (`disarm_timer`), which already forgot it.
            K_TIMER if res != -libc::ECANCELED => {
                self.timer = None;
                out.push(Completion::Timeout);
            }
            _ => {}
        }
        Ok(())
    }

    /// An operation of a cancelling connection ended: report `Cancelled` when it was the last.
    fn end_op(&mut self, idx: u32) {
        if self.conn(idx).ops == 0 {
            self.finish_cancel(idx);
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Stop a connection's receive (the shard cannot take more of its bytes now): they stay in the socket,
    /// where TCP pushes back on the peer. A Data completion that raced the pause may still come.
    pub fn pause_recv(&mut self, token: u64) -> io::Result<()> {
        let Some(&idx) = self.by_token.get(&token) else {
            return Ok(());
        };
        let c = self.conn(idx);
        if c.cancelling || c.recv_hold {
            return Ok(());
        }
        c.recv_hold = true;
        match c.recv {
            RecvState::Armed => {
                c.ops += 1;
                let target = ud(K_RECV, c.gen, idx);
                let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
                    .build()
                    .user_data(ud(K_RECV_CANCEL, c.gen, idx));
                self.push(e)
            }
            RecvState::Starved => {
                c.recv = RecvState::Held;
                Ok(())
            }
            RecvState::Held | RecvState::Done => Ok(()),
        }
    }

    /// Receive again after `pause_recv`.
    pub fn resume_recv(&mut self, token: u64) -> io::Result<()> {
        let Some(&idx) = self.by_token.get(&token) else {
            return Ok(());
        };
        let c = self.conn(idx);
        if !c.recv_hold {
            return Ok(());
        }
        c.recv_hold = false;
        if c.recv == RecvState::Held && !c.cancelling {
            self.stats.recv_rearms += 1;
            self.arm_recv(idx)?;
        }
        Ok(())
    }

    /// Stop accepting (e.g. out of file descriptors): the listeners' accepts are cancelled and not re-armed.
    pub fn pause_accepts(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.accepts_paused, true) {
            return Ok(());
        }
        for idx in 0..self.listeners.len() as u32 {
            if self.listeners[idx as usize].armed {
                let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud(K_ACCEPT, 0, idx)))
                    .build()
                    .user_data(ud(K_QUIET, 0, 0));
                self.push(e)?;
            }
        }
        Ok(())
    }

    pub fn resume_accepts(&mut self) -> io::Result<()> {
        if !std::mem::replace(&mut self.accepts_paused, false) {
            return Ok(());
        }
        for idx in 0..self.listeners.len() as u32 {
            if !self.listeners[idx as usize].armed {
                self.stats.accept_rearms += 1;
                self.arm_accept(idx)?;
            }
        }
        Ok(())
    }

    /// Report `Completion::Watched { token }` once `fd` is readable (one-shot; call again to re-arm). The fd
    /// must outlive the ring or be watched no more (the ring cancels everything when it is dropped).
    pub fn watch(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        let slot = match self.watches.iter().position(|&(t, _)| t == token) {
            Some(i) => i,
            None => {
                self.watches.push((token, fd));
                self.watches.len() - 1
            }
        };
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(ud(K_WATCH, 0, slot as u32));
        self.push(e)
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: fd is the socket just accepted; the option value is a valid c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
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
