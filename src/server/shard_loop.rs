//! One shard's event loop on its glommio executor: sockets -> shard core -> sockets and mesh.
//!
//! One task does all the work in rounds: harvest socket events (`net.rs`: epoll or io_uring), drain the mesh channels from the other shards,
//! read ready connections into one shared scratch buffer, let the core decide, then write every dirty connection
//! once (writes are batched per round) and hand mesh messages to their channels. Each round ends one log group
//! (`Shard::end_round`: commit, release acknowledgements that became durable). When there is nothing to do it
//! polls for up to `idle_spin_us` (default 0; less when recent events came further apart: `spin.rs`), then sleeps
//! in the backend (epoll_wait, or io_uring_enter) until a socket event arrives (a peer shard, or this shard's log
//! syncer, rings our eventfd, which the backend watches) or the next clock second (keep-alive sweep).
//!
//! Why crossbeam channels and not glommio's channel mesh: in glommio 0.9 a busy executor sees messages from other
//! executors only when it is preempted (every 100 ms by default), which let a publisher overrun a full queue and
//! adds 100 ms to cross-shard latency under load; a shorter preempt timer made executors lose timer wake-ups and
//! stall (reproduced by tests/churn.rs). Draining lock-free bounded channels ourselves each round has neither
//! problem.

mod auth_io;
mod budget;
mod handoff;
mod layered;
mod telemetry;

use layered::flush_wire_last;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::auth::policy::Refusal;
use crate::broker::message::ConnKey;
use crate::broker::shard::AuthJob;
use crate::broker::shard::{MeshMsg, ReadOutcome, Shard};
use crate::metrics::Metrics;
use crate::server::linger::Lingering;
use crate::server::net::{
    special_token, EpollNet, IoKind, Net, NetEvent, SendResult, UringNet, LINGER_IDX,
};
use crate::server::netpoll::{self, IoResult};
use crate::server::spin::SpinBudget;
use crate::server::verifier::VerifierLink;
use crate::stream::{ConnStream, LayerFactory};

/// Bytes read per recv(2) into the shared scratch buffer.
const SCRATCH: usize = 64 * 1024;
/// recv(2) calls per connection per round, so one busy client cannot starve the others.
const READS_PER_CONN: usize = 4;
/// Connections read per round before writes are flushed.
const CONNS_PER_ROUND: usize = 512;
/// Mesh messages waiting for a full channel, per peer, before this shard stops reading its sockets.
const OVERFLOW_PAUSE: usize = 1024;
/// Mesh messages taken from each peer's channel per round.
const MESH_PER_ROUND: usize = 4096;
/// What besides the mesh channel can hold messages already routed to a session: one round's batch, the overflow
/// before reading stops, and one message from each of up to 4096 distinct local publishers before each is paused.
pub const IN_TRANSIT_SLACK: usize = MESH_PER_ROUND + OVERFLOW_PAUSE + 4096;

const F_READABLE: u8 = 1;
const F_IN_READY: u8 = 2;
const F_WANT_WRITE: u8 = 4;
/// The peer closed or the socket failed: read until recv says so (a short read is not proof of "drained" then).
const F_HUP: u8 = 8;
/// The core yielded for a mid-round flush the round had no budget for: feed its kept bytes before reading more.
const F_YIELDED: u8 = 16;

fn token(key: ConnKey) -> u64 {
    key.idx as u64 | ((key.gen as u64) << 32)
}

fn key_of(token: u64) -> ConnKey {
    ConnKey {
        idx: token as u32,
        gen: (token >> 32) as u32,
    }
}

/// How other shards wake this one: an eventfd the socket backend watches, rung only while we sleep.
pub struct Doorbell {
    sleeping: AtomicBool,
    efd: RawFd,
}

impl Doorbell {
    pub fn new() -> std::io::Result<Arc<Doorbell>> {
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Doorbell {
            sleeping: AtomicBool::new(false),
            efd,
        }))
    }

    /// Called by a peer after it pushed messages for us.
    pub fn ring_if_sleeping(&self) {
        // Pairs with the fence in `main_loop` before the sleeper checks its channels: either we see `sleeping`,
        // or the sleeper sees our message.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            unsafe { libc::write(self.efd, &one as *const u64 as *const libc::c_void, 8) };
        }
    }
}

/// One shard's ends of the mesh: a bounded channel to and from every other shard, and everyone's doorbell.
pub struct MeshLink {
    pub to: Vec<Option<Sender<MeshMsg>>>,
    pub from: Vec<Option<Receiver<MeshMsg>>>,
    pub doorbells: Vec<Arc<Doorbell>>,
}

/// The full N x N mesh: `links[i]` belongs to shard i.
pub fn build_mesh(shards: usize, capacity: usize) -> std::io::Result<Vec<MeshLink>> {
    let doorbells: Vec<Arc<Doorbell>> = (0..shards)
        .map(|_| Doorbell::new())
        .collect::<Result<_, _>>()?;
    let mut links: Vec<MeshLink> = (0..shards)
        .map(|_| MeshLink {
            to: (0..shards).map(|_| None).collect(),
            from: (0..shards).map(|_| None).collect(),
            doorbells: doorbells.clone(),
        })
        .collect();
    for a in 0..shards {
        for b in 0..shards {
            if a != b {
                let (tx, rx) = crossbeam_channel::bounded(capacity);
                links[a].to[b] = Some(tx);
                links[b].from[a] = Some(rx);
            }
        }
    }
    Ok(links)
}

/// A listening socket of this shard and what its connections speak above TCP.
pub struct ShardListener {
    pub fd: RawFd,
    /// Index into the broker's listener list (`Config::all_listeners`).
    pub index: usize,
    /// The stream layer for its connections (TLS, WebSocket); `None` = plain MQTT.
    pub layers: Option<Arc<dyn LayerFactory>>,
}

/// Where a shard reports: the shared metrics registry, and how often it publishes `$SYS` (0 = never).
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub sys_interval: u32,
    /// The security rules in force (replaced on SIGHUP).
    pub security: Arc<crate::server::reload::SecurityCell>,
}

pub struct ShardIo {
    pub id: u16,
    pub core: RefCell<Shard>,
    /// The socket backend (`net.rs`).
    net: RefCell<Net>,
    listeners: Vec<ShardListener>,
    /// Sockets handed off this round whose backend has not let go of them yet (io_uring), their `Adopt`
    /// messages waiting for that, and releases that came before their message.
    handoffs_pending: RefCell<Vec<u64>>,
    parked_adopts: RefCell<Vec<(u16, MeshMsg)>>,
    released_early: RefCell<Vec<(u64, Vec<bytes::Bytes>, BytesMut)>>,
    /// Stream layers of layered connections, by connection slot; `None` for plain ones (most).
    streams: RefCell<Vec<Option<Box<ConnStream>>>>,
    /// Layers of connections handed to another shard this round, by socket, until their `Adopt` leaves.
    handoff_streams: RefCell<Vec<(u64, Box<ConnStream>)>>,
    /// Application bytes a layer decoded this read (reused).
    app: RefCell<BytesMut>,
    /// Closed connections draining until their client closes, so it can read the reason we closed with.
    lingering: RefCell<Lingering>,
    security: Arc<crate::server::reload::SecurityCell>,
    /// The generation of `security` this shard enforces.
    security_gen: Cell<u64>,
    /// Where costly password checks go, and their answers come from.
    verifier: Option<VerifierLink>,
    auth_jobs: RefCell<Vec<AuthJob>>,
    refusals: RefCell<Vec<(u64, Refusal)>>,
    /// Refusals logged in the current second (rate limit), and that second.
    refusal_log: Cell<(u32, u32)>,
    listeners_paused: Cell<bool>,
    flags: RefCell<Vec<u8>>,
    /// Mid-round flushes left this round (`budget.rs`), and the key list they reuse.
    budget: budget::RoundBudget,
    mid_keys: RefCell<Vec<ConnKey>>,
    ready: RefCell<VecDeque<ConnKey>>,
    mesh: MeshLink,
    /// Messages for a peer whose channel was full, in order; retried every round.
    overflow: RefCell<Vec<VecDeque<MeshMsg>>>,
    /// Peers we pushed to this round (their doorbells are checked once, after the round).
    pushed: RefCell<Vec<bool>>,
    shutdown: Arc<AtomicBool>,
    max_conns: usize,
    /// How long an idle shard keeps polling before it sleeps in the kernel (`idle_spin_us`).
    idle_spin: Duration,
    rejected: Cell<u64>,
    /// Where this shard publishes its counters and gauges, once a second (`publish_metrics`).
    metrics: Arc<Metrics>,
    /// Socket bytes read and written (wire bytes, layers included), published with the metrics.
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    /// The `$SYS` topics this shard publishes every `sys_interval` seconds.
    sys: RefCell<crate::metrics::sys::SysTopics>,
    /// The incremental walk behind the session gauges (bounded per tick).
    gauge_walk: RefCell<crate::broker::shard::GaugeWalk>,
}

impl ShardIo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Shard,
        listeners: Vec<ShardListener>,
        mesh: MeshLink,
        shutdown: Arc<AtomicBool>,
        max_conns: usize,
        idle_spin: Duration,
        verifier: Option<VerifierLink>,
        telemetry: Telemetry,
        io: IoKind,
    ) -> std::io::Result<Rc<Self>> {
        let mut net = match io {
            IoKind::Epoll => Net::Epoll(EpollNet::new()?),
            IoKind::Uring => match UringNet::new(Default::default()) {
                Ok(n) => Net::Uring(Box::new(n)),
                // The probe at start passed; a shard that still cannot get its ring runs on epoll (connections
                // move between shards of either kind: only the fd travels).
                Err(e) => {
                    tracing::warn!(shard = core.id(), error = %e, "io_uring ring setup failed; this shard uses epoll");
                    Net::Epoll(EpollNet::new()?)
                }
            },
        };
        for (i, l) in listeners.iter().enumerate() {
            net.add_listener(i, l.fd)?;
        }
        let id = core.id();
        net.set_doorbell(mesh.doorbells[id as usize].efd)?;
        let peers = mesh.to.len().max(1);
        Ok(Rc::new(ShardIo {
            id: core.id(),
            core: RefCell::new(core),
            net: RefCell::new(net),
            listeners,
            handoffs_pending: RefCell::new(Vec::new()),
            parked_adopts: RefCell::new(Vec::new()),
            released_early: RefCell::new(Vec::new()),
            streams: RefCell::new(Vec::new()),
            handoff_streams: RefCell::new(Vec::new()),
            app: RefCell::new(BytesMut::new()),
            lingering: RefCell::new(Lingering::new()),
            verifier,
            auth_jobs: RefCell::new(Vec::new()),
            refusals: RefCell::new(Vec::new()),
            refusal_log: Cell::new((0, 0)),
            listeners_paused: Cell::new(false),
            flags: RefCell::new(Vec::new()),
            budget: budget::RoundBudget::new(),
            mid_keys: RefCell::new(Vec::new()),
            ready: RefCell::new(VecDeque::new()),
            mesh,
            overflow: RefCell::new((0..peers).map(|_| VecDeque::new()).collect()),
            pushed: RefCell::new(vec![false; peers]),
            shutdown,
            max_conns,
            idle_spin,
            rejected: Cell::new(0),
            metrics: telemetry.metrics,
            security: telemetry.security,
            security_gen: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            sys: RefCell::new(crate::metrics::sys::SysTopics::new(
                id as usize,
                telemetry.sys_interval,
            )),
            gauge_walk: RefCell::default(),
        }))
    }

    fn set_flags(&self, key: ConnKey, f: impl FnOnce(&mut u8)) -> u8 {
        let mut flags = self.flags.borrow_mut();
        let i = key.idx as usize;
        if i >= flags.len() {
            flags.resize(i + 1, 0);
        }
        f(&mut flags[i]);
        flags[i]
    }

    fn flags_of(&self, key: ConnKey) -> u8 {
        self.flags
            .borrow()
            .get(key.idx as usize)
            .copied()
            .unwrap_or(0)
    }

    fn mark_readable(&self, key: ConnKey) {
        let before = self.flags_of(key);
        self.set_flags(key, |f| *f |= F_READABLE | F_IN_READY);
        if before & F_IN_READY == 0 {
            self.ready.borrow_mut().push_back(key);
        }
    }

    fn register(&self, fd: RawFd, key: ConnKey) {
        self.set_flags(key, |f| *f = 0);
        if let Err(e) = self.net.borrow_mut().add_conn(token(key), fd) {
            tracing::warn!(error = %e, "socket registration failed; closing connection");
            self.core.borrow_mut().on_io_closed(key);
            return;
        }
        // Edge-triggered: bytes may already be waiting, so try a read now.
        self.mark_readable(key);
    }

    fn on_event(&self, ev: NetEvent) {
        match ev {
            NetEvent::Doorbell => {}
            NetEvent::Accepted { listener, fd } => self.accept(listener, fd),
            NetEvent::AcceptFailed { err } => {
                // Out of file descriptors: stop accepting for a second instead of spinning on the listener.
                tracing::warn!(shard = self.id, error = %err, "accept failed; pausing accepts for 1 s (see tuning/)");
                if !self.listeners_paused.replace(true) {
                    self.net.borrow_mut().pause_accepts(&self.listener_fds());
                }
            }
            NetEvent::Linger(fd) => {
                let net = self.net.borrow();
                self.lingering
                    .borrow_mut()
                    .on_readable(net.linger_set().0, fd);
            }
            NetEvent::Readable { token, hup } => {
                let key = key_of(token);
                if hup {
                    self.set_flags(key, |f| *f |= F_HUP);
                }
                self.mark_readable(key);
            }
            NetEvent::Writable { token } => {
                let key = key_of(token);
                self.set_flags(key, |f| *f &= !F_WANT_WRITE);
                self.write_conn(key);
            }
            NetEvent::SendBlocked { token } => self.core.borrow_mut().send_blocked(key_of(token)),
            NetEvent::Failed { token } => self.core.borrow_mut().on_io_closed(key_of(token)),
            NetEvent::Closed { fd } => self.linger(fd),
            NetEvent::Released { fd, unsent, raced } => self.released(fd as u64, unsent, raced),
        }
    }

    fn listener_fds(&self) -> Vec<RawFd> {
        self.listeners.iter().map(|l| l.fd).collect()
    }

    /// Keep a closed connection's socket half-open until its client closes (`linger.rs`).
    fn linger(&self, fd: RawFd) {
        let net = self.net.borrow();
        let (set, registered) = net.linger_set();
        let token = special_token(LINGER_IDX, fd as u32);
        self.lingering
            .borrow_mut()
            .start(set, registered, fd, token, Instant::now());
    }

    fn accept(&self, listener: usize, fd: RawFd) {
        if self.core.borrow().connection_count() >= self.max_conns {
            netpoll::close(fd);
            self.rejected.set(self.rejected.get() + 1);
            tracing::warn!(
                shard = self.id,
                limit = self.max_conns,
                "max_connections reached; connection refused"
            );
            return;
        }
        let stream = match &self.listeners[listener].layers {
            None => None,
            Some(f) => match f.new_layer() {
                Ok(layer) => Some(Box::new(ConnStream::new(layer))),
                Err(e) => {
                    tracing::warn!(shard = self.id, error = %e, "cannot set up the stream layer; connection refused");
                    netpoll::close(fd);
                    return;
                }
            },
        };
        let index = self.listeners[listener].index as u8;
        let key = self.core.borrow_mut().accept_on(fd as u64, index);
        self.set_stream(key, stream);
        self.register(fd, key);
    }

    fn resume_listeners(&self) {
        if self.listeners_paused.replace(false) {
            self.net.borrow_mut().resume_accepts(&self.listener_fds());
        }
    }

    /// Read from up to `CONNS_PER_ROUND` ready connections. Returns whether anything was read.
    fn process_ready(&self, scratch: &mut BytesMut) -> bool {
        let mut did = false;
        // Only the connections ready when the round began: one that still has bytes goes to the back of the
        // line for the next round, after this round's writes and mesh messages are out.
        let n = self.ready.borrow().len().min(CONNS_PER_ROUND);
        for _ in 0..n {
            if self.budget.spent() {
                // The destinations took all this round could write: the rest waits in the kernel.
                break;
            }
            let Some(key) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            self.set_flags(key, |f| *f &= !F_IN_READY);
            did |= self.read_conn(key, scratch);
        }
        did
    }

    fn read_conn(&self, key: ConnKey, scratch: &mut BytesMut) -> bool {
        if self.flags_of(key) & F_YIELDED != 0 && !self.feed_kept(key, scratch) {
            return true;
        }
        if self.is_layered(key) {
            return self.read_layered(key, scratch);
        }
        let mut core = self.core.borrow_mut();
        let Some(fd) = core.conn_io(key).map(|io| io as RawFd) else {
            return false;
        };
        let mut did = false;
        for _ in 0..READS_PER_CONN {
            if !core.can_read(key) {
                // Paused (backpressure) or closing: keep the readable flag for when reading resumes.
                return did;
            }
            scratch.clear();
            let got = self.net.borrow_mut().recv(token(key), fd, scratch, SCRATCH);
            match got {
                IoResult::Done(0) => continue,
                IoResult::Done(n) => {
                    did = true;
                    self.bytes_in.set(self.bytes_in.get() + n as u64);
                    let connecting = (!core.is_established(key)).then(Instant::now);
                    let (c, outcome) = self.feed(core, key, scratch);
                    core = c;
                    if let Some(t) = connecting {
                        self.connect_timed(&core, key, &outcome, t);
                    }
                    match outcome {
                        ReadOutcome::Continue
                            if self.net.borrow().drained(token(key), n, SCRATCH)
                                && self.flags_of(key) & F_HUP == 0 =>
                        {
                            // A short read emptied the socket (io_uring: the inbox). Edge-triggered epoll reports any byte that
                            // arrives after this point as a new event, so the usual recv that only says EAGAIN
                            // (one syscall, and a socket-lock round, per message at low rates) is skipped.
                            self.set_flags(key, |f| *f &= !F_READABLE);
                            return did;
                        }
                        ReadOutcome::Continue => {}
                        // Yield: the round's flush budget is spent; the core hands it back after the round.
                        ReadOutcome::Paused | ReadOutcome::Close | ReadOutcome::Yield => {
                            return did
                        }
                        ReadOutcome::HandedOff => {
                            drop(core);
                            self.handed_off(key, fd);
                            return did;
                        }
                    }
                }
                IoResult::WouldBlock => {
                    self.set_flags(key, |f| *f &= !F_READABLE);
                    return did;
                }
                IoResult::Closed | IoResult::Error(_) => {
                    core.on_io_closed(key);
                    return true;
                }
            }
        }
        drop(core);
        // More may be waiting: go to the back of the line.
        let f = self.flags_of(key);
        if f & F_READABLE != 0 && f & F_IN_READY == 0 {
            self.set_flags(key, |f| *f |= F_IN_READY);
            self.ready.borrow_mut().push_back(key);
        }
        did
    }

    fn write_conn(&self, key: ConnKey) {
        if self.is_layered(key) {
            return self.write_layered(key);
        }
        let mut core = self.core.borrow_mut();
        let Some(fd) = core.conn_io(key).map(|io| io as RawFd) else {
            return;
        };
        loop {
            // Only the bytes before a held acknowledgement (waiting for the log) may go.
            let Some((out, writable)) = core.out_writable(key) else {
                return;
            };
            if writable == 0 {
                break;
            }
            let sent = self.net.borrow_mut().send(token(key), fd, &out[..writable]);
            match sent {
                SendResult::Done(n) => {
                    self.bytes_out.set(self.bytes_out.get() + n as u64);
                    core.consumed(key, n)
                }
                SendResult::WouldBlock => {
                    core.send_blocked(key);
                    drop(core);
                    self.set_flags(key, |f| *f |= F_WANT_WRITE);
                    return;
                }
                SendResult::Busy => {
                    // io_uring: the last chunk is still in flight; `Writable` comes when it is out.
                    drop(core);
                    self.set_flags(key, |f| *f |= F_WANT_WRITE);
                    return;
                }
                SendResult::Failed => {
                    core.on_io_closed(key);
                    return;
                }
            }
        }
        // Empty: free the buffer and let the session queue refill it.
        core.flushed(key);
    }

    fn flush(&self, keys: &mut Vec<ConnKey>) {
        // Refilling from session queues can dirty connections again; a few passes, then the next round.
        for _ in 0..4 {
            keys.clear();
            self.core.borrow_mut().take_dirty(keys);
            if keys.is_empty() {
                break;
            }
            for &key in keys.iter() {
                let f = self.flags_of(key);
                if f & F_WANT_WRITE == 0 {
                    self.write_conn(key);
                }
            }
        }
        // io_uring: every connection's sends of this flush go to the kernel together.
        self.net.borrow_mut().submit();
    }

    fn close_finished(&self, keys: &mut Vec<ConnKey>) {
        keys.clear();
        self.core.borrow_mut().take_closing(keys);
        for &key in keys.iter() {
            let stream = self.take_stream(key);
            let mut core = self.core.borrow_mut();
            if let Some(fd) = core.conn_io(key).map(|io| io as RawFd) {
                // Best effort: a CONNACK/DISCONNECT with the reason goes out before the close (never bytes still
                // held for the log: the client retransmits what it has no acknowledgement for).
                let out = core.out_writable(key);
                match stream {
                    None => {
                        if let Some((out, writable)) = out {
                            if writable > 0 {
                                self.net
                                    .borrow_mut()
                                    .send_last(token(key), fd, &out[..writable]);
                            }
                        }
                    }
                    Some(mut cs) => {
                        if let Some((out, writable)) = out {
                            if writable > 0 && cs.layer.established() {
                                let _ = cs.layer.write_app(&out[..writable], &mut cs.wire_out);
                            }
                        }
                        cs.layer.close(&mut cs.wire_out);
                        flush_wire_last(&self.net, token(key), fd, &mut cs, &self.bytes_out);
                    }
                }
                let now_or_later = self.net.borrow_mut().close(token(key), fd);
                if let Some(fd) = now_or_later {
                    self.linger(fd);
                }
            }
            core.release(key);
            drop(core);
            self.set_flags(key, |f| *f = 0);
        }
    }

    fn resume_paused(&self, keys: &mut Vec<ConnKey>, scratch: &mut BytesMut) {
        keys.clear();
        self.core.borrow_mut().take_resumed(keys);
        for &key in keys.iter() {
            let core = self.core.borrow_mut();
            if core.has_partial(key) {
                scratch.clear();
                let (core, out) = self.feed(core, key, scratch);
                drop(core);
                if out != ReadOutcome::Continue {
                    continue;
                }
                self.set_flags(key, |f| *f &= !F_YIELDED);
            } else {
                drop(core);
            }
            if self.flags_of(key) & F_READABLE != 0 {
                self.mark_readable(key);
            }
        }
    }

    /// A connection's CONNECT moved it to another shard: stop watching its socket here; its layer goes along
    /// with the `Adopt` message.
    fn handed_off(&self, key: ConnKey, fd: RawFd) {
        let released = self.net.borrow_mut().handoff(token(key), fd);
        if !released {
            self.handoffs_pending.borrow_mut().push(fd as u64);
        }
        self.set_flags(key, |f| *f = 0);
        if let Some(cs) = self.take_stream(key) {
            self.handoff_streams.borrow_mut().push((fd as u64, cs));
        }
    }

    /// Take what the other shards sent us (a bounded batch per peer per round).
    fn drain_mesh(&self) -> bool {
        let mut did = false;
        for (from, rx) in self.mesh.from.iter().enumerate() {
            let Some(rx) = rx else { continue };
            for _ in 0..MESH_PER_ROUND {
                let Ok(msg) = rx.try_recv() else { break };
                did = true;
                match msg {
                    MeshMsg::Adopt(mut a) => {
                        let fd = a.io as RawFd;
                        let stream = a.stream.take();
                        let layered = stream.is_some();
                        // Adopting is the owner shard's half of a CONNECT: session lookup, takeover, CONNACK.
                        let t = Instant::now();
                        let (key, _outcome) = self.core.borrow_mut().adopt(*a);
                        self.metrics
                            .shard(self.id as usize)
                            .connect_time
                            .record(t.elapsed());
                        self.set_stream(key, stream);
                        self.register(fd, key);
                        if layered {
                            // Wire bytes the old shard's layer had not sent yet go out first.
                            self.write_conn(key);
                        }
                    }
                    other => self.core.borrow_mut().on_mesh(from as u16, other),
                }
                if self.core.borrow().flush_wanted() && !self.flush_mid_round() {
                    // The round wrote all it may: the rest stays in the channel (its sender backs off).
                    return did;
                }
            }
        }
        did
    }

    /// Feed the bytes a connection kept when its yield had no flush left; false if it may not be read now.
    fn feed_kept(&self, key: ConnKey, scratch: &mut BytesMut) -> bool {
        self.set_flags(key, |f| *f &= !F_YIELDED);
        let core = self.core.borrow_mut();
        if !core.can_read(key) {
            return false;
        }
        if !core.has_partial(key) {
            return true;
        }
        let fd = core.conn_io(key).map(|io| io as RawFd);
        scratch.clear();
        let (core, outcome) = self.feed(core, key, scratch);
        drop(core);
        match (outcome, fd) {
            (ReadOutcome::Continue, _) => true,
            (ReadOutcome::HandedOff, Some(fd)) => {
                self.handed_off(key, fd);
                false
            }
            _ => false,
        }
    }

    fn mesh_pending(&self) -> bool {
        self.mesh.from.iter().flatten().any(|rx| !rx.is_empty())
    }

    /// Hand messages to their peers' channels, in order; a full channel keeps the rest in `overflow`.
    fn send_mesh(&self, out: &mut Vec<(u16, MeshMsg)>) {
        self.retry_overflow();
        let mut overflow = self.overflow.borrow_mut();
        let mut pushed = self.pushed.borrow_mut();
        let mut handoffs = self.handoff_streams.borrow_mut();
        for (peer, mut msg) in out.drain(..) {
            if let MeshMsg::Adopt(a) = &mut msg {
                if let Some(i) = handoffs.iter().position(|(io, _)| *io == a.io) {
                    a.stream = Some(handoffs.swap_remove(i).1);
                }
                if !self.adopt_ready(a) {
                    // The old backend still holds the socket: the message waits for `released`.
                    self.parked_adopts.borrow_mut().push((peer, msg));
                    continue;
                }
            }
            let p = peer as usize;
            let Some(tx) = &self.mesh.to[p] else { continue };
            if !overflow[p].is_empty() {
                overflow[p].push_back(msg);
                continue;
            }
            match tx.try_send(msg) {
                Ok(()) => pushed[p] = true,
                Err(TrySendError::Full(m)) => overflow[p].push_back(m),
                Err(TrySendError::Disconnected(_)) => {
                    tracing::error!(shard = self.id, peer, "mesh channel closed; message lost");
                }
            }
        }
    }

    fn retry_overflow(&self) {
        let mut overflow = self.overflow.borrow_mut();
        let mut pushed = self.pushed.borrow_mut();
        for (p, q) in overflow.iter_mut().enumerate() {
            let Some(tx) = &self.mesh.to[p] else { continue };
            while let Some(m) = q.pop_front() {
                match tx.try_send(m) {
                    Ok(()) => pushed[p] = true,
                    Err(TrySendError::Full(m)) => {
                        q.push_front(m);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => q.clear(),
                }
            }
        }
    }

    /// Wake the peers we sent to this round, if they sleep.
    fn ring_peers(&self) {
        let mut pushed = self.pushed.borrow_mut();
        for (p, flag) in pushed.iter_mut().enumerate() {
            if std::mem::take(flag) {
                self.mesh.doorbells[p].ring_if_sleeping();
            }
        }
    }

    fn overflow_pending(&self) -> bool {
        self.overflow.borrow().iter().any(|q| !q.is_empty())
    }

    fn mesh_congested(&self) -> bool {
        self.overflow
            .borrow()
            .iter()
            .any(|q| q.len() >= OVERFLOW_PAUSE)
    }

    /// Everything the core left behind after a batch of events.
    fn after_work(
        &self,
        keys: &mut Vec<ConnKey>,
        mesh: &mut Vec<(u16, MeshMsg)>,
        scratch: &mut BytesMut,
    ) {
        // One log group per round: commit what the round appended, release what became durable.
        self.core.borrow_mut().end_round();
        self.resume_paused(keys, scratch);
        self.core.borrow_mut().take_mesh(mesh);
        self.send_mesh(mesh);
        self.flush(keys);
        self.send_auth_jobs();
        self.log_refusals();
        self.close_finished(keys);
        // Closing can publish wills, which can produce log records, mesh messages and writes.
        self.core.borrow_mut().end_round();
        self.core.borrow_mut().take_mesh(mesh);
        self.send_mesh(mesh);
        self.flush(keys);
        self.ring_peers();
    }

    /// Shutdown: stop listening. Connection sockets close with the process.
    fn close_all(&self) {
        self.net.borrow_mut().pause_accepts(&self.listener_fds());
        for l in &self.listeners {
            netpoll::close(l.fd);
        }
    }
}

pub async fn main_loop(io: Rc<ShardIo>) {
    let mut events: Vec<NetEvent> = Vec::with_capacity(1024);
    let mut scratch = BytesMut::with_capacity(SCRATCH);
    let mut keys = Vec::new();
    let mut mesh = Vec::new();
    let start = Instant::now();
    let mut last_sec = 0u32;
    let mut idle_since: Option<Instant> = None;
    let mut spin = SpinBudget::new(io.idle_spin);
    let mut woke_with_events = false;
    loop {
        if io.shutdown.load(Ordering::Relaxed) {
            io.close_all();
            return;
        }
        let mut progress = false;
        io.budget.start_round();
        if std::mem::take(&mut woke_with_events) {
            // The sleep below already harvested them.
            progress |= !events.is_empty();
        } else {
            let polled = io.net.borrow_mut().poll(&mut events, Duration::ZERO);
            match polled {
                Ok(()) => progress |= !events.is_empty(),
                Err(e) => tracing::error!(shard = io.id, error = %e, "socket poll failed"),
            }
        }
        for ev in events.drain(..) {
            io.on_event(ev);
        }
        progress |= io.drain_mesh();
        progress |= io.drain_auth_results();
        let congested = io.mesh_congested() || io.core.borrow_mut().log_congested();
        if !congested {
            progress |= io.process_ready(&mut scratch);
        }
        io.after_work(&mut keys, &mut mesh, &mut scratch);

        let elapsed = start.elapsed();
        let sec = elapsed.as_secs() as u32;
        if sec != last_sec {
            last_sec = sec;
            io.resume_listeners();
            io.lingering
                .borrow_mut()
                .expire(io.net.borrow().linger_set().0, Instant::now());
            io.core.borrow_mut().tick(sec);
            io.publish_metrics();
            io.follow_security();
            io.publish_sys(sec as u64);
            io.after_work(&mut keys, &mut mesh, &mut scratch);
        }

        let more = io.mesh_pending()
            || io.auth_results_pending()
            || (!congested && !io.ready.borrow().is_empty());
        if progress || more {
            if idle_since.take().is_some() {
                spin.on_spin_hit();
            }
            // Let other glommio tasks (none on the hot path today) run between rounds.
            futures_lite::future::yield_now().await;
            continue;
        }
        // Under steady traffic the next packet is usually microseconds away: look again for a short while
        // before paying for a sleep and a kernel wake-up (latency), then really sleep (CPU).
        let idle = *idle_since.get_or_insert_with(Instant::now);
        if idle.elapsed() < spin.budget() {
            // sched_yield: a load generator or another shard sharing this CPU runs first (unpinned runs).
            std::thread::yield_now();
            futures_lite::future::yield_now().await;
            continue;
        }
        idle_since = None;
        // About to sleep: tell peers to ring us, then look once more (see `Doorbell::ring_if_sleeping`).
        let bell = &io.mesh.doorbells[io.id as usize];
        bell.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // The same for the log's syncer, which rings us when held acknowledgements may go.
        if io.mesh_pending() || io.auth_results_pending() || io.core.borrow().durable_progress() {
            bell.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        // Nothing to do: sleep until sockets, peers, the log's syncer or the clock need us. The thread blocks in
        // its own backend (epoll_wait on its epoll set, or io_uring_enter on its ring): this task is the shard's only work, and a direct kernel wake-up is
        // much cheaper than the blocking-pool hop plus a glommio timer (measured at a steady 10k msg/s: shard
        // CPU and tail latency were dominated by those context switches).
        let mut until_tick =
            Duration::from_secs(sec as u64 + 1).saturating_sub(elapsed) + Duration::from_millis(1);
        if io.core.borrow().durability_waiting() {
            // Safety net behind the syncer's doorbell.
            until_tick = until_tick.min(Duration::from_millis(5));
        }
        if io.overflow_pending() {
            // A peer's channel was full: retry soon rather than wait for our own sockets.
            until_tick = until_tick.min(Duration::from_millis(1));
        }
        let slept = Instant::now();
        let polled = io.net.borrow_mut().poll(&mut events, until_tick);
        if let Err(e) = polled {
            tracing::error!(shard = io.id, error = %e, "socket wait failed");
        }
        woke_with_events = true;
        bell.sleeping.store(false, Ordering::SeqCst);
        spin.on_sleep(slept.elapsed());
    }
}
