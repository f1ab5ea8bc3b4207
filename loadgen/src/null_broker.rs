//! `coremq-loadgen null-broker`: the latency and cost floor of this machine for any broker run through the
//! loadgen's scenarios. One thread, one edge-triggered epoll set, nonblocking sockets, one shared read buffer:
//! whatever a real broker adds above what this relay measures is the broker's own cost, not the kernel's, the
//! loopback's or the load generator's.
//!
//! Deliberately featureless: QoS 0 only (a QoS 1/2 PUBLISH closes its connection), exact-match topics (wildcard
//! and `$share/` filters are refused in the SUBACK), no sessions, retained messages, wills, keep-alive timeouts,
//! topic aliases or authentication. PUBLISH frames are forwarded byte for byte, so every client of one topic
//! must speak the same MQTT version. Framing and control packets go through coremq's codec; a PUBLISH is only
//! framed and its topic read, so relaying a message allocates nothing. A subscriber more than `HIGH_WATER` behind
//! holds every publisher back (their bytes wait in the kernel, where TCP slows them) until it drains: the floor
//! delivers what the subscribers can take, and loses nothing, so a fan-out against it is a fair comparison.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use coremq::codec::{
    encode, fixed_header, ConnAck, Decoder, FixedHeader, Packet, ProtocolVersion, ReasonCode,
    SubAck, UnsubAck,
};
use coremq::server::netpoll::{self, Epoll};

use crate::opts::NullBrokerArgs;

/// One read buffer shared by every connection: only an incomplete frame is ever kept per connection.
const SCRATCH_LEN: usize = 64 * 1024;
/// Largest frame accepted, and so the largest partial frame kept per connection.
const MAX_FRAME: u32 = 16 << 20;
/// Unsent output beyond which a subscriber is too slow and is closed: bytes are never dropped silently.
const MAX_PENDING: usize = 16 << 20;
/// Unsent output at which a subscriber holds every publisher back (their reads wait, so TCP slows them), and
/// below which it lets them go again: the floor relays what the subscribers take instead of closing them.
const HIGH_WATER: usize = 1 << 20;
const LOW_WATER: usize = HIGH_WATER / 2;
/// Exact topics one connection may subscribe to (the scenarios use one); more are refused in the SUBACK, so the
/// topic table is bounded by connections times this.
const MAX_TOPICS_PER_CONN: usize = 64;
const LISTENER: u64 = u64::MAX;

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Server-side codec state: refuses anything before CONNECT and remembers the protocol version.
    decoder: Decoder,
    /// Tail of an incomplete frame, when a read ended mid-frame.
    partial: Vec<u8>,
    /// Unsent output. `blocked`: a write hit EAGAIN, so wait for EPOLLOUT; `dirty`: queued for this round's flush.
    out: BytesMut,
    blocked: bool,
    dirty: bool,
    closing: bool,
    /// Its unsent output is past `HIGH_WATER` (counted in `NullBroker::backlogged`).
    backlogged: bool,
    /// Readable, but not read while some subscriber is backlogged (in `NullBroker::paused`).
    paused: bool,
    /// Its exact topic filters, to remove from the table when it closes.
    topics: Vec<Box<[u8]>>,
}

impl Conn {
    /// Queues this connection for the end-of-round write, unless it waits for EPOLLOUT anyway.
    fn queue(&mut self, idx: usize, dirty: &mut Vec<usize>) {
        if !self.dirty && !self.blocked {
            self.dirty = true;
            dirty.push(idx);
        }
    }
}

/// `Err(None)`: close quietly (DISCONNECT, EOF); `Err(Some(why))`: close and say why on stderr.
type Closed = Option<String>;

pub struct NullBroker {
    listener: TcpListener,
    /// coremq's own shard readiness set: edge-triggered connections, registered once.
    epoll: Epoll,
    /// Slab indexed by epoll token; freed slots are reused only after the round that closed them.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    subs: HashMap<Box<[u8]>, Vec<usize>>,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    closing: Vec<usize>,
    /// Subscribers past `HIGH_WATER`; while any, no connection is read.
    backlogged: usize,
    /// Connections that became readable while reads were held back: read once the backlog clears.
    paused: Vec<usize>,
    warned_qos: bool,
}

impl NullBroker {
    pub fn bind(addr: SocketAddr) -> io::Result<NullBroker> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let b = NullBroker {
            listener,
            epoll,
            conns: Vec::new(),
            free: Vec::new(),
            subs: HashMap::new(),
            scratch: vec![0; SCRATCH_LEN],
            dirty: Vec::new(),
            closing: Vec::new(),
            backlogged: 0,
            paused: Vec::new(),
            warned_qos: false,
        };
        b.epoll.add_listener(b.listener.as_raw_fd(), LISTENER)?;
        Ok(b)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is set or `deadline` passes. One round: handle every ready event, then write what the
    /// round queued for each connection (one write per subscriber per round), then close what has to close.
    pub fn run(mut self, deadline: Option<Instant>, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Vec::with_capacity(256);
        while !stop.load(Ordering::Relaxed) {
            // Bounded wait: a stop signal landing just before epoll_wait is still seen within 0.5 s.
            let mut wait = Duration::from_millis(500);
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
                if wait.is_zero() {
                    break;
                }
            }
            let ms = wait.as_micros().div_ceil(1000) as i32;
            // A signal ends the wait early with no events; the loop then sees `stop`.
            self.epoll.wait(&mut events, ms)?;
            for ev in &events {
                let (token, flags) = (ev.u64, ev.events);
                if token == LISTENER {
                    self.accept();
                    continue;
                }
                let idx = token as usize;
                if flags & netpoll::READABLE != 0 {
                    self.read(idx, flags & netpoll::HANGUP != 0);
                }
                let out = flags & netpoll::WRITABLE != 0;
                if out && self.conns[idx].as_ref().is_some_and(|c| c.blocked) {
                    self.flush(idx);
                }
            }
            for idx in std::mem::take(&mut self.dirty) {
                self.flush(idx);
            }
            self.close_pending();
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = self.add(stream, peer) {
                        eprintln!("null-broker: {peer}: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return eprintln!("null-broker: accept: {e}"),
            }
        }
    }

    fn add(&mut self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        // Edge-triggered for reads and writes from the start: no epoll_ctl when a write blocks or unblocks.
        self.epoll.add_conn(stream.as_raw_fd(), idx as u64)?;
        self.conns[idx] = Some(Conn {
            stream,
            peer,
            decoder: Decoder::new_server(MAX_FRAME),
            partial: Vec::new(),
            out: BytesMut::new(),
            blocked: false,
            dirty: false,
            closing: false,
            backlogged: false,
            paused: false,
            topics: Vec::new(),
        });
        Ok(())
    }

    /// Reads into the shared buffer and handles every complete frame; only a trailing partial frame is copied.
    /// A short read drained the socket, so stop there: any later data raises a new edge. After a hang-up, read
    /// on to EOF.
    fn read(&mut self, idx: usize, hangup: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(c) = self.conns[idx].as_mut().filter(|c| !c.closing) {
            if self.backlogged > 0 {
                // Hold back until the subscribers drain; the bytes wait in the kernel.
                if !c.paused {
                    c.paused = true;
                    self.paused.push(idx);
                }
                break;
            }
            // EOF, reset or a bad frame mark the connection closing, which ends the loop.
            let n = match (&c.stream).read(&mut scratch) {
                Ok(n) if n > 0 => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                _ => {
                    self.close_later(idx, None);
                    continue;
                }
            };
            let mut partial = std::mem::take(&mut c.partial);
            let handled = if partial.is_empty() {
                let r = self.frames(idx, &scratch[..n]);
                r.map(|used| partial.extend_from_slice(&scratch[used..n]))
            } else {
                partial.extend_from_slice(&scratch[..n]);
                let r = self.frames(idx, &partial);
                r.map(|used| drop(partial.drain(..used)))
            };
            match handled {
                Ok(()) => self.conns[idx].as_mut().expect("open").partial = partial,
                Err(why) => self.close_later(idx, why),
            }
            if n < scratch.len() && !hangup {
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Handles the complete frames at the front of `buf`; returns the bytes consumed.
    fn frames(&mut self, idx: usize, buf: &[u8]) -> Result<usize, Closed> {
        let mut at = 0;
        while let Some(h) = fixed_header(&buf[at..], MAX_FRAME).map_err(|e| Some(e.to_string()))? {
            if buf.len() - at < h.frame_len() {
                break;
            }
            let frame = &buf[at..at + h.frame_len()];
            at += h.frame_len();
            if h.packet_type() == 3 {
                self.publish(idx, frame, h)?;
            } else {
                self.control(idx, frame)?;
            }
        }
        Ok(at)
    }

    /// QoS 0 PUBLISH: append the frame as it came to every connection subscribed to exactly its topic.
    fn publish(&mut self, idx: usize, frame: &[u8], h: FixedHeader) -> Result<(), Closed> {
        if self.conns[idx]
            .as_ref()
            .expect("open")
            .decoder
            .version()
            .is_none()
        {
            return Err(Some("PUBLISH before CONNECT".into()));
        }
        if (h.byte1 >> 1) & 3 != 0 {
            if !std::mem::replace(&mut self.warned_qos, true) {
                eprintln!("null-broker: QoS 1/2 PUBLISH is not supported; closing such clients");
            }
            return Err(None);
        }
        let t = h.header_len;
        let topic = frame
            .get(t..t + 2)
            .map(|l| t + 2 + u16::from_be_bytes([l[0], l[1]]) as usize)
            .and_then(|end| frame.get(t + 2..end))
            .ok_or_else(|| Some("malformed PUBLISH topic".to_string()))?;
        let Some(subs) = self.subs.get(topic) else {
            return Ok(());
        };
        for &s in subs {
            let Some(c) = self.conns[s].as_mut().filter(|c| !c.closing) else {
                continue;
            };
            if c.out.len() + frame.len() > MAX_PENDING {
                eprintln!(
                    "null-broker: {}: {MAX_PENDING} bytes unsent, closing",
                    c.peer
                );
                c.closing = true;
                self.closing.push(s);
                continue;
            }
            c.out.extend_from_slice(frame);
            if c.out.len() >= HIGH_WATER && !c.backlogged {
                c.backlogged = true;
                self.backlogged += 1;
            }
            c.queue(s, &mut self.dirty);
        }
        Ok(())
    }

    /// Every other packet goes through the codec (rare, so the copy into a `BytesMut` does not matter).
    fn control(&mut self, idx: usize, frame: &[u8]) -> Result<(), Closed> {
        let c = self.conns[idx].as_mut().expect("open");
        let packet = match c.decoder.decode(&mut BytesMut::from(frame)) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(Some("incomplete frame".into())),
            Err(e) => return Err(Some(e.to_string())),
        };
        let reply = match packet {
            Packet::Connect(_) => Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: None,
            }),
            Packet::Subscribe(s) => Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reasons: s
                    .filters
                    .iter()
                    .map(|f| self.subscribe(idx, &f.filter))
                    .collect(),
                properties: None,
            }),
            Packet::Unsubscribe(u) => {
                for f in &u.filters {
                    self.unsubscribe(idx, f.as_bytes());
                }
                Packet::UnsubAck(UnsubAck {
                    packet_id: u.packet_id,
                    reasons: vec![ReasonCode::Success; u.filters.len()],
                    properties: None,
                })
            }
            Packet::PingReq => Packet::PingResp,
            Packet::Disconnect(_) => return Err(None),
            p => return Err(Some(format!("{:?} is not supported", p.packet_type()))),
        };
        let c = self.conns[idx].as_mut().expect("open");
        let version = c.decoder.version().unwrap_or(ProtocolVersion::V3_1_1);
        encode(&reply, version, &mut c.out).map_err(|e| Some(e.to_string()))?;
        c.queue(idx, &mut self.dirty);
        Ok(())
    }

    /// Records an exact filter and grants QoS 0; a wildcard or shared filter could never match here, so it is
    /// refused rather than silently delivering nothing.
    fn subscribe(&mut self, idx: usize, filter: &str) -> ReasonCode {
        if filter.starts_with("$share/") {
            return ReasonCode::SharedSubscriptionsNotSupported;
        }
        if filter.contains(['+', '#']) {
            return ReasonCode::WildcardSubscriptionsNotSupported;
        }
        let (c, filter) = (self.conns[idx].as_mut().expect("open"), filter.as_bytes());
        if c.topics.len() >= MAX_TOPICS_PER_CONN {
            return ReasonCode::QuotaExceeded;
        }
        if !c.topics.iter().any(|t| &t[..] == filter) {
            c.topics.push(filter.into());
            self.subs.entry(filter.into()).or_default().push(idx);
        }
        ReasonCode::Success
    }

    fn unsubscribe(&mut self, idx: usize, filter: &[u8]) {
        if let Some(subs) = self.subs.get_mut(filter) {
            subs.retain(|&s| s != idx);
            if subs.is_empty() {
                self.subs.remove(filter);
            }
        }
    }

    /// Writes until done or EAGAIN; what is left waits for EPOLLOUT.
    fn flush(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        (c.dirty, c.blocked) = (false, false);
        while !c.closing && !c.out.is_empty() {
            match (&c.stream).write(&c.out) {
                Ok(n) => c.out.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.blocked = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.close_later(idx, None),
            }
        }
        if c.backlogged && c.out.len() < LOW_WATER {
            c.backlogged = false;
            self.unbacklog();
        }
    }

    /// One subscriber less past `HIGH_WATER`; at none, read what waited.
    fn unbacklog(&mut self) {
        self.backlogged -= 1;
        if self.backlogged > 0 {
            return;
        }
        for idx in std::mem::take(&mut self.paused) {
            if let Some(c) = self.conns[idx].as_mut() {
                c.paused = false;
                self.read(idx, false);
            }
        }
    }

    fn close_later(&mut self, idx: usize, why: Closed) {
        if let Some(c) = self.conns[idx].as_mut().filter(|c| !c.closing) {
            if let Some(why) = why {
                eprintln!("null-broker: {}: {why}, closing", c.peer);
            }
            c.closing = true;
            self.closing.push(idx);
        }
    }

    /// A closing subscriber holds nobody back.
    fn forget_backlog(&mut self, idx: usize) {
        if let Some(c) = self.conns[idx].as_mut().filter(|c| c.backlogged) {
            c.backlogged = false;
            self.unbacklog();
        }
    }

    /// Closing the socket also removes it from the epoll set.
    fn close_pending(&mut self) {
        for idx in std::mem::take(&mut self.closing) {
            self.forget_backlog(idx);
            for t in self.conns[idx].take().map(|c| c.topics).unwrap_or_default() {
                self.unsubscribe(idx, &t);
            }
            self.free.push(idx);
        }
    }
}

/// The `null-broker` command: pin, bind, serve until SIGINT/SIGTERM or `--duration`.
pub fn main(a: &NullBrokerArgs) -> Result<(), String> {
    if let Some(cpu) = a.cpu {
        let core = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.id == cpu)
            .ok_or(format!("--cpu {cpu}: no such CPU"))?;
        if !core_affinity::set_for_current(core) {
            return Err(format!("--cpu {cpu}: cannot pin"));
        }
    }
    crate::cpu::raise_nofile();
    let broker = NullBroker::bind(a.listen).map_err(|e| format!("{}: {e}", a.listen))?;
    let addr = broker.local_addr().map_err(|e| e.to_string())?;
    crate::cpu::catch_signals(&[libc::SIGINT, libc::SIGTERM]);
    eprintln!("null-broker: listening on {addr} (QoS 0, exact topics only)");
    let deadline = (a.duration > 0.0).then(|| Instant::now() + Duration::from_secs_f64(a.duration));
    let served = broker.run(deadline, crate::cpu::stop_flag());
    served.map_err(|e| format!("epoll: {e}"))
}
