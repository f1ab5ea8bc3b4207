//! One MQTT connection on a worker thread's tokio runtime: connect, then act as an idle connection, a publisher
//! or a subscriber until the run closes. Tasks are small (no per-connection read buffer while idle) so one
//! thread holds tens of thousands of connections.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout};

use crate::clock::{instant_at, now_ns};
use crate::mqtt::{self, ConnectParams, Decoder, Packet, PublishTemplate, QoS};
use crate::pacing::Schedule;
use crate::payload::{read_stamp, Stamp};
use crate::stats::{PubResult, SubResult, WorkerStats, MAX_STREAMS_PER_SUBSCRIBER};
use crate::tls::{TlsClient, TlsConn};

/// Bound on encoded bytes waiting to be written per connection: when the socket does not drain, publishing
/// pauses (the backlog shows as latency from the intended send time) instead of buffering without limit.
const OUT_CAP: usize = 256 * 1024;
/// Messages encoded per wake-up: one write per batch.
const BATCH: u64 = 256;
/// Bytes reserved per read for busy connections; idle ones reserve only what a PINGRESP needs.
const READ_CHUNK: usize = 64 * 1024;
const IDLE_READ_CHUNK: usize = 64;
/// One socket read under TLS, on the stack: a full record (16 KiB plus overhead) and then some.
const TLS_READ_CHUNK: usize = 18 * 1024;
/// Publishers start 20 ms after the start signal; anything stamped a second before it is from another run.
const STALE_SLACK_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// Connecting and subscribing.
    Setup,
    /// Publishing starts at `start_ns` and ends at `end_ns` (run clock).
    Run { start_ns: u64, end_ns: u64 },
    /// Everyone disconnects.
    Close,
}

/// State shared by the main thread and all workers.
pub struct Shared {
    pub phase: watch::Sender<Phase>,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Unique messages received (all subscribers).
    pub received: AtomicU64,
    pub open: AtomicUsize,
    pub errors: AtomicU64,
    pub pubs_done: AtomicUsize,
    pub pub_sent: Vec<AtomicU64>,
    pub sub_ok: Vec<AtomicBool>,
}

impl Shared {
    pub fn new(publishers: usize, subscribers: usize) -> Self {
        Shared {
            phase: watch::Sender::new(Phase::Setup),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
            pubs_done: AtomicUsize::new(0),
            pub_sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            sub_ok: (0..subscribers).map(|_| AtomicBool::new(false)).collect(),
        }
    }
}

/// Immutable per-run settings every client reads.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub broker: SocketAddr,
    pub connect: ConnectParams,
    pub qos: QoS,
    pub size: usize,
    pub connect_timeout: Duration,
    pub inflight: usize,
    pub max_packet: u32,
    pub total_rate: f64,
    pub publishers: usize,
    /// Ignore (and count) messages stamped before this run: true when the publishers are in this process.
    pub stale_filter: bool,
    /// Fault injection: (subscriber index, seconds into the run).
    pub drop_subscriber: Option<(usize, f64)>,
    /// Messages sent in the first `warmup_ns` of the run are not recorded in the latency histogram.
    pub warmup_ns: u64,
    /// `--tls`: every connection speaks TLS with these settings.
    pub tls: Option<TlsClient>,
}

#[derive(Debug, Clone)]
pub enum Role {
    Idle,
    Publisher {
        index: usize,
        pub_id: u32,
        topic: String,
        limit: u64,
    },
    Subscriber {
        index: usize,
        filter: String,
    },
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub client_id: String,
    pub source: Option<IpAddr>,
    pub role: Role,
}

type Stats = Rc<RefCell<WorkerStats>>;

fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EADDRNOTAVAIL) => "addr_not_available".into(),
        Some(libc::EADDRINUSE) => "addr_in_use".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_open_files".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable".into(),
        _ => format!("io:{:?}", e.kind()),
    }
}

/// One TCP connection speaking MQTT through the coremq codec.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    out: BytesMut,
    decoder: Decoder,
    version: mqtt::ProtocolVersion,
    idle: bool,
    /// The server's Receive Maximum from CONNACK (MQTT 5).
    receive_maximum: Option<u16>,
    /// `--tls`: `rbuf` and `out` hold plaintext, this layer the TLS state between them and the socket.
    tls: Option<Box<TlsConn>>,
}

impl Conn {
    /// Non-blocking read of whatever is there. Ok(false) = nothing to read now.
    fn try_fill(&mut self) -> Result<bool, String> {
        if self.tls.is_some() {
            return self.try_fill_tls();
        }
        self.rbuf.reserve(if self.idle {
            IDLE_READ_CHUNK
        } else {
            READ_CHUNK
        });
        let room = self.rbuf.capacity() - self.rbuf.len();
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err("closed_by_broker".into()),
            Ok(n) => {
                if n < room {
                    // A short read emptied the socket: forget the readiness now instead of learning it from a
                    // recv that says EAGAIN (one syscall per message at fixed rates). Bytes arriving later raise
                    // a new edge; tokio keeps a hang-up's readiness, so a close is still read.
                    let _ = self.stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(io_reason(&e)),
        }
    }

    /// `try_fill` through TLS: one socket read (on the stack), decrypted into `rbuf`; then whatever TLS must
    /// answer (handshake flights) goes out.
    fn try_fill_tls(&mut self) -> Result<bool, String> {
        let mut wire = [0u8; TLS_READ_CHUNK];
        let n = match self.stream.try_read(&mut wire) {
            Ok(0) => return Err("closed_by_broker".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(io_reason(&e)),
        };
        if n < wire.len() {
            // As in try_fill: a short read emptied the socket.
            let _ = self.stream.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        let tls = self.tls.as_mut().expect("tls connection");
        tls.read_wire(&wire[..n], &mut self.rbuf)?;
        self.try_flush()?;
        Ok(true)
    }

    /// Bytes still to go to the socket: queued MQTT bytes or TLS records.
    fn write_pending(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    async fn fill(&mut self) -> Result<(), String> {
        loop {
            self.stream.readable().await.map_err(|e| io_reason(&e))?;
            if self.try_fill()? {
                return Ok(());
            }
        }
    }

    fn next_packet(&mut self) -> Result<Option<Packet>, String> {
        let p = self
            .decoder
            .decode(&mut self.rbuf)
            .map_err(|e| format!("decode:{e}"))?;
        if p.is_none() && self.idle && self.rbuf.is_empty() {
            // Give the allocation back: idle connections hold no read buffer.
            self.rbuf = BytesMut::new();
        }
        Ok(p)
    }

    fn queue(&mut self, p: &Packet) -> Result<(), String> {
        mqtt::encode_into(p, self.version, &mut self.out)
    }

    fn try_flush(&mut self) -> Result<(), String> {
        if let Some(tls) = self.tls.as_mut() {
            let stream = &self.stream;
            loop {
                tls.write_app(&mut self.out)?;
                if !tls.wants_write() {
                    break;
                }
                tls.write_wire(|b| stream.try_write(b))
                    .map_err(|e| io_reason(&e))?;
                if tls.wants_write() || self.out.is_empty() {
                    // Blocked on the socket, or all sent.
                    break;
                }
            }
        }
        while self.tls.is_none() && !self.out.is_empty() {
            match self.stream.try_write(&self.out) {
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(io_reason(&e)),
            }
        }
        if self.idle && self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), String> {
        loop {
            self.try_flush()?;
            if !self.write_pending() {
                return Ok(());
            }
            self.stream.writable().await.map_err(|e| io_reason(&e))?;
        }
    }

    /// Reads until a packet arrives (setup only: CONNACK, SUBACK).
    async fn recv(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    async fn disconnect(mut self) {
        if self.queue(&mqtt::disconnect_packet()).is_ok() {
            let _ = timeout(Duration::from_millis(500), self.flush()).await;
        }
    }
}

async fn open(cfg: &ClientConfig, spec: &ClientSpec, idle: bool) -> Result<Conn, String> {
    let socket = if cfg.broker.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_reason(&e))?;
    if let Some(src) = spec.source {
        // Let connect() pick the port per (source, destination) pair rather than bind() per source alone.
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a correctly sized int option.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| io_reason(&e))?;
    }
    let stream = match timeout(cfg.connect_timeout, socket.connect(cfg.broker)).await {
        Err(_) => return Err("timeout".into()),
        Ok(Err(e)) => return Err(io_reason(&e)),
        Ok(Ok(s)) => s,
    };
    stream.set_nodelay(true).map_err(|e| io_reason(&e))?;
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::new(),
        out: BytesMut::new(),
        decoder: Decoder::new_client(cfg.connect.version, cfg.max_packet),
        version: cfg.connect.version,
        idle,
        receive_maximum: None,
        tls: match &cfg.tls {
            Some(t) => Some(Box::new(t.connect()?)),
            None => None,
        },
    };
    conn.queue(&mqtt::connect_packet(&cfg.connect, &spec.client_id))?;
    let handshake = async {
        conn.flush().await?;
        match conn.recv().await? {
            Packet::ConnAck(ack) if !ack.reason.is_error() => {
                // MQTT 5: never have more QoS 1/2 messages in flight than the server accepts.
                Ok(ack.properties.as_ref().and_then(|p| p.receive_maximum))
            }
            Packet::ConnAck(ack) => Err(format!("connack:{:?}", ack.reason)),
            other => Err(format!(
                "protocol:expected CONNACK, got {:?}",
                other.packet_type()
            )),
        }
    };
    match timeout(cfg.connect_timeout, handshake).await {
        Err(_) => Err("connack_timeout".into()),
        Ok(r) => r.map(|receive_maximum| {
            conn.receive_maximum = receive_maximum;
            conn
        }),
    }
}

/// Runs one client to the end of the run; all outcomes land in `stats` and `shared`.
pub async fn run_client(
    spec: ClientSpec,
    cfg: Rc<ClientConfig>,
    shared: std::sync::Arc<Shared>,
    stats: Stats,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let t0 = now_ns();
    let idle = matches!(spec.role, Role::Idle);
    // Boxed so the long-lived task keeps only the state of the stage it is in, not the largest one.
    let opened = Box::pin(open(&cfg, &spec, idle)).await;
    drop(permit);
    let conn = match opened {
        Ok(c) => {
            let _ = stats
                .borrow_mut()
                .connect_latency
                .record(now_ns().saturating_sub(t0).max(1));
            shared.open.fetch_add(1, Relaxed);
            c
        }
        Err(reason) => {
            fail(&shared, &stats, &spec.role, format!("connect:{reason}"));
            return;
        }
    };
    let result = match &spec.role {
        Role::Idle => {
            shared.ready.fetch_add(1, Relaxed);
            Box::pin(idle_loop(conn, &cfg, &shared)).await
        }
        Role::Publisher {
            index,
            pub_id,
            topic,
            limit,
        } => {
            Box::pin(publisher(
                conn, &cfg, &shared, &stats, *index, *pub_id, topic, *limit,
            ))
            .await
        }
        Role::Subscriber { index, filter } => {
            Box::pin(subscriber(conn, &cfg, &shared, &stats, *index, filter)).await
        }
    };
    shared.open.fetch_sub(1, Relaxed);
    if let Err(reason) = result {
        let what = match spec.role {
            Role::Idle => "idle",
            Role::Publisher { .. } => "publisher",
            Role::Subscriber { .. } => "subscriber",
        };
        shared.errors.fetch_add(1, Relaxed);
        stats.borrow_mut().error(format!("{what}:{reason}"));
    }
}

fn fail(shared: &Shared, stats: &Stats, role: &Role, reason: String) {
    shared.failed.fetch_add(1, Relaxed);
    shared.errors.fetch_add(1, Relaxed);
    let mut st = stats.borrow_mut();
    st.error(reason);
    match role {
        Role::Publisher { index, .. } => {
            // A publisher that never started will send nothing more: it counts as done.
            shared.pubs_done.fetch_add(1, Relaxed);
            st.pubs.push(PubResult {
                index: *index,
                ..Default::default()
            })
        }
        Role::Subscriber { index, .. } => st.subs.push(SubResult {
            index: *index,
            ..Default::default()
        }),
        Role::Idle => {}
    }
}

fn ping_interval(cfg: &ClientConfig) -> Option<u64> {
    (cfg.connect.keep_alive > 0).then(|| cfg.connect.keep_alive as u64 * 1_000_000_000 * 3 / 4)
}

/// Handles the packets every role may receive; returns the ones the role itself must look at.
fn common_packet(conn: &mut Conn, p: Packet) -> Result<Option<Packet>, String> {
    match p {
        Packet::PingResp => Ok(None),
        Packet::Disconnect(d) => Err(format!("disconnected_by_broker:{:?}", d.reason)),
        other => Ok(Some(other)),
    }
    .and_then(|p| {
        // A QoS 2 release for a message we received: complete it.
        if let Some(Packet::PubRel(r)) = &p {
            conn.queue(&Packet::PubComp(mqtt::resp(r.packet_id)))?;
            return Ok(None);
        }
        Ok(p)
    })
}

async fn idle_loop(mut conn: Conn, cfg: &ClientConfig, shared: &Shared) -> Result<(), String> {
    let mut phase = shared.phase.subscribe();
    let ping = ping_interval(cfg);
    let mut next_ping = ping.map(|p| now_ns() + p);
    loop {
        if *phase.borrow_and_update() == Phase::Close {
            conn.disconnect().await;
            return Ok(());
        }
        tokio::select! {
            r = phase.changed() => if r.is_err() { return Ok(()) },
            r = conn.stream.readable() => {
                r.map_err(|e| io_reason(&e))?;
                if conn.try_fill()? {
                    while let Some(p) = conn.next_packet()? {
                        if let Some(p) = common_packet(&mut conn, p)? {
                            return Err(format!("protocol:unexpected {:?}", p.packet_type()));
                        }
                    }
                }
            }
            _ = sleep_until(instant_at(next_ping.unwrap_or(u64::MAX / 2))), if next_ping.is_some() => {
                conn.queue(&Packet::PingReq)?;
                next_ping = ping.map(|p| now_ns() + p);
            }
        }
        conn.try_flush()?;
    }
}

/// QoS 1/2 packet ids in flight, bounded by the window: a ring of slots indexed by the id's low bits (ids are
/// handed out in sequence, so they rarely collide; a colliding id is skipped), not a hash map: the load generator
/// must cost far less per message than the brokers it measures.
struct Inflight {
    /// QoS 0: nothing to track, the window never closes (TCP backpressure and OUT_CAP still bound it).
    unbounded: bool,
    /// Slot `id & mask`: (packet id, when its PUBLISH was queued on the run clock, ns); id 0 = free.
    slots: Vec<(u16, u64)>,
    mask: usize,
    len: usize,
    next: u16,
    window: usize,
}

impl Inflight {
    fn new(window: usize) -> Self {
        let window = window.min(65_000);
        // Twice the window, so sequential ids find their slot free unless an acknowledgement is far behind.
        let cap = if window == 0 {
            1
        } else {
            (window * 2).next_power_of_two().min(65_536)
        };
        Inflight {
            unbounded: window == 0,
            slots: vec![(0, 0); cap],
            mask: cap - 1,
            len: 0,
            next: 0,
            window,
        }
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn has_room(&self) -> bool {
        self.unbounded || self.len < self.window
    }
    fn alloc(&mut self, sent_ns: u64) -> u16 {
        // `has_room` holds, so fewer than 65,000 ids are taken: this finds a free one.
        loop {
            self.next = self.next % u16::MAX + 1;
            let slot = &mut self.slots[self.next as usize & self.mask];
            if slot.0 == 0 {
                *slot = (self.next, sent_ns);
                self.len += 1;
                return self.next;
            }
        }
    }
    /// When the completed message was sent, or None for an id we did not use.
    fn complete(&mut self, id: u16) -> Option<u64> {
        let slot = &mut self.slots[id as usize & self.mask];
        if id == 0 || slot.0 != id {
            return None;
        }
        let sent = slot.1;
        *slot = (0, 0);
        self.len -= 1;
        Some(sent)
    }
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    mut conn: Conn,
    cfg: &ClientConfig,
    shared: &Shared,
    stats: &Stats,
    index: usize,
    pub_id: u32,
    topic: &str,
    limit: u64,
) -> Result<(), String> {
    let template = PublishTemplate::new(topic, cfg.qos, cfg.size, cfg.connect.version)?;
    let mut phase = shared.phase.subscribe();
    shared.ready.fetch_add(1, Relaxed);
    let mut result = PubResult {
        index,
        ..Default::default()
    };
    let outcome = publish_loop(
        &mut conn,
        cfg,
        shared,
        stats,
        &template,
        &mut phase,
        pub_id,
        index,
        limit,
        &mut result,
    )
    .await;
    if !result.finished {
        // Failed or closed early: it will send nothing more either way.
        shared.pubs_done.fetch_add(1, Relaxed);
    }
    stats.borrow_mut().pubs.push(result);
    outcome?;
    conn.disconnect().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    conn: &mut Conn,
    cfg: &ClientConfig,
    shared: &Shared,
    stats: &Stats,
    template: &PublishTemplate,
    phase: &mut watch::Receiver<Phase>,
    pub_id: u32,
    index: usize,
    limit: u64,
    result: &mut PubResult,
) -> Result<(), String> {
    let ping = ping_interval(cfg);
    let mut last_write = now_ns();
    // Wait for the start signal (all subscribers have their SUBACK), answering pings meanwhile.
    let (mut schedule, ack_latency_from_ns) = loop {
        match *phase.borrow_and_update() {
            Phase::Close => return Ok(()),
            Phase::Run { start_ns, end_ns } => {
                let schedule = Schedule::new(
                    start_ns,
                    end_ns,
                    cfg.total_rate,
                    cfg.publishers,
                    index,
                    limit,
                );
                break (schedule, start_ns + cfg.warmup_ns);
            }
            Phase::Setup => {}
        }
        tokio::select! {
            r = phase.changed() => if r.is_err() { return Ok(()) },
            r = conn.stream.readable() => {
                r.map_err(|e| io_reason(&e))?;
                conn.try_fill()?;
                while let Some(p) = conn.next_packet()? { common_packet(conn, p)?; }
            }
            _ = sleep_until(instant_at(last_write + ping.unwrap_or(u64::MAX / 4))), if ping.is_some() => {
                conn.queue(&Packet::PingReq)?;
                last_write = now_ns();
            }
        }
        conn.try_flush()?;
    };
    let qos = cfg.qos;
    let mut inflight = Inflight::new(if qos == QoS::AtMostOnce {
        0
    } else {
        cfg.inflight
    });
    let mut done = false;
    loop {
        // Acks first: they free window slots.
        while conn.try_fill()? {}
        while let Some(p) = conn.next_packet()? {
            match common_packet(conn, p)? {
                None => {}
                Some(Packet::PubAck(r)) | Some(Packet::PubComp(r)) => {
                    if let Some(sent_ns) = inflight.complete(r.packet_id) {
                        result.acked += 1;
                        shared.acked.fetch_add(1, Relaxed);
                        if sent_ns >= ack_latency_from_ns {
                            // PUBACK (QoS 1) or PUBCOMP (QoS 2) back at the publisher: what it waits for.
                            let ns = now_ns().saturating_sub(sent_ns);
                            stats.borrow_mut().ack_latency.saturating_record(ns.max(1));
                        }
                        if r.reason.is_error() {
                            stats
                                .borrow_mut()
                                .error(format!("publisher:ack:{:?}", r.reason));
                        }
                    } else {
                        stats
                            .borrow_mut()
                            .error("publisher:ack_for_unknown_packet_id");
                    }
                }
                Some(Packet::PubRec(r)) => {
                    if r.reason.is_error() {
                        inflight.complete(r.packet_id);
                        stats
                            .borrow_mut()
                            .error(format!("publisher:pubrec:{:?}", r.reason));
                    } else {
                        conn.queue(&Packet::PubRel(mqtt::resp(r.packet_id)))?;
                    }
                }
                Some(other) => stats
                    .borrow_mut()
                    .error(format!("publisher:unexpected_{:?}", other.packet_type())),
            }
        }
        let now = now_ns();
        // Messages due within the timer slack go out with this wake-up.
        let due = schedule.due_count(now + crate::timer::slack_ns());
        let mut batch = 0u64;
        if !done {
            while result.sent < due
                && batch < BATCH
                && conn.out.len() < OUT_CAP
                && inflight.has_room()
            {
                // Late (backlog): the intended time, so queueing counts as latency. Early (slack): the
                // actual time, so sending early never makes latency look better than it is.
                let sent_ns = if schedule.is_max_rate() {
                    now
                } else {
                    schedule.due_ns(result.sent).min(now)
                };
                let packet_id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    inflight.alloc(sent_ns)
                };
                template.write(
                    &mut conn.out,
                    packet_id,
                    &Stamp {
                        publisher: pub_id,
                        seq: result.sent,
                        sent_ns,
                    },
                );
                result.sent += 1;
                batch += 1;
            }
        }
        if batch > 0 {
            shared.sent.fetch_add(batch, Relaxed);
            shared.pub_sent[index].fetch_add(batch, Relaxed);
            stats.borrow_mut().last_send_ns = now;
        }
        let before = conn.out.len();
        conn.try_flush()?;
        if conn.out.len() != before {
            last_write = now;
        }
        if !done
            && schedule.finished(result.sent, now)
            && inflight.is_empty()
            && !conn.write_pending()
        {
            done = true;
            result.finished = true;
            shared.pubs_done.fetch_add(1, Relaxed);
        }
        let current = *phase.borrow_and_update();
        if let Phase::Run { end_ns, .. } = current {
            // The run was cut short (Ctrl-C): stop offering load at the new end, then finish normally.
            schedule.shorten(end_ns);
        }
        if current == Phase::Close {
            if !done {
                // Cut off by the grace period: say what was still owed.
                let mut st = stats.borrow_mut();
                st.error("publisher:unfinished_at_close");
                if !inflight.is_empty() {
                    *st.errors
                        .entry("publisher:unacked_at_close".into())
                        .or_default() += inflight.len as u64;
                }
                // Messages still in our own buffer never reached the broker: they are not "sent" (and so
                // not counted as lost). A partly written QoS 0 message counts as unsent too.
                let unflushed = if qos == QoS::AtMostOnce {
                    conn.out.len().div_ceil(template.len())
                } else {
                    conn.out.len() / template.len()
                } as u64;
                if unflushed > 0 {
                    let unflushed = unflushed.min(result.sent);
                    result.sent -= unflushed;
                    shared.sent.fetch_sub(unflushed, Relaxed);
                    shared.pub_sent[index].fetch_sub(unflushed, Relaxed);
                    *st.errors
                        .entry("publisher:unflushed_at_close".into())
                        .or_default() += unflushed;
                }
            }
            return Ok(());
        }
        let can_send_now =
            !done && result.sent < due && inflight.has_room() && conn.out.len() < OUT_CAP;
        if can_send_now {
            // Max rate (or catching up): let the other connections on this thread run, then go on.
            tokio::task::yield_now().await;
            continue;
        }
        // Wake for the next due message unless something else must happen first (acks, a drained socket).
        let blocked = !inflight.has_room() || conn.out.len() >= OUT_CAP;
        let next_due = if done || blocked || schedule.finished(result.sent, now) {
            None
        } else {
            Some(schedule.due_ns(result.sent))
        };
        let next_ping = ping.map(|p| last_write + p);
        let wake = match (next_due, next_ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            r = phase.changed() => if r.is_err() { return Ok(()) },
            r = conn.stream.readable() => r.map_err(|e| io_reason(&e))?,
            r = conn.stream.writable(), if conn.write_pending() => r.map_err(|e| io_reason(&e))?,
            _ = crate::timer::sleep_until_ns(wake.unwrap_or(u64::MAX / 4)), if wake.is_some() => {
                if next_ping.is_some_and(|p| p <= now_ns()) && conn.out.is_empty() {
                    conn.queue(&Packet::PingReq)?;
                    last_write = now_ns();
                }
            }
        }
    }
}

async fn subscriber(
    mut conn: Conn,
    cfg: &ClientConfig,
    shared: &Shared,
    stats: &Stats,
    index: usize,
    filter: &str,
) -> Result<(), String> {
    let mut result = SubResult {
        index,
        ..Default::default()
    };
    // A persistent session that already exists gets its queued messages right after CONNACK, possibly before the
    // SUBACK: keep them and count them once subscribed.
    let mut early = Vec::new();
    let subscribed = async {
        conn.queue(&mqtt::subscribe_packet(1, filter, cfg.qos))?;
        conn.flush().await?;
        loop {
            match conn.recv().await? {
                Packet::Publish(p) => early.push(p),
                Packet::SubAck(ack) if ack.packet_id == 1 => {
                    return match ack.reasons.first() {
                        Some(r) if !r.is_error() => Ok(()),
                        Some(r) => Err(format!("suback:{r:?}")),
                        None => Err("suback:empty".to_string()),
                    };
                }
                Packet::PingResp => {}
                other => {
                    return Err(format!(
                        "protocol:expected SUBACK, got {:?}",
                        other.packet_type()
                    ))
                }
            }
        }
    };
    match timeout(cfg.connect_timeout, subscribed).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            fail(
                shared,
                stats,
                &Role::Subscriber {
                    index,
                    filter: String::new(),
                },
                format!("subscribe:{reason}"),
            );
            return Ok(());
        }
        Err(_) => {
            fail(
                shared,
                stats,
                &Role::Subscriber {
                    index,
                    filter: String::new(),
                },
                "subscribe:suback_timeout".into(),
            );
            return Ok(());
        }
    }
    result.subscribed = true;
    if !early.is_empty() {
        let mut now = 0;
        let mut got = 0;
        for p in &early {
            got += record_publish(
                &mut conn,
                &mut stats.borrow_mut(),
                &mut result,
                p,
                (0, 0),
                &mut now,
            )?;
        }
        shared.received.fetch_add(got, Relaxed);
    }
    shared.sub_ok[index].store(true, Relaxed);
    shared.ready.fetch_add(1, Relaxed);
    let outcome = receive_loop(&mut conn, cfg, shared, stats, index, &mut result).await;
    stats.borrow_mut().subs.push(result);
    match outcome {
        Ok(true) => {
            conn.disconnect().await;
            Ok(())
        }
        // Injected fault: drop the socket without DISCONNECT, like a crashed client.
        Ok(false) => Err("injected_disconnect".into()),
        Err(e) => Err(e),
    }
}

/// Ok(true) on a normal close, Ok(false) on an injected disconnect.
async fn receive_loop(
    conn: &mut Conn,
    cfg: &ClientConfig,
    shared: &Shared,
    stats: &Stats,
    index: usize,
    result: &mut SubResult,
) -> Result<bool, String> {
    let mut phase = shared.phase.subscribe();
    let ping = ping_interval(cfg);
    let mut last_write = now_ns();
    let mut drop_at: Option<u64> = None;
    // Stamps older than this are leftovers of an earlier run still queued in the broker: not ours to count.
    let mut oldest_ns = if cfg.stale_filter { u64::MAX } else { 0 };
    let mut latency_from_ns = 0;
    loop {
        match *phase.borrow_and_update() {
            Phase::Close => return Ok(true),
            Phase::Run { start_ns, .. } => {
                latency_from_ns = start_ns + cfg.warmup_ns;
                if cfg.stale_filter {
                    oldest_ns = start_ns.saturating_sub(STALE_SLACK_NS);
                }
                if let Some((i, secs)) = cfg.drop_subscriber {
                    if i == index && drop_at.is_none() {
                        drop_at = Some(start_ns + (secs * 1e9) as u64);
                    }
                }
            }
            Phase::Setup => {}
        }
        let wake = match (drop_at, ping.map(|p| last_write + p)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            r = phase.changed() => if r.is_err() { return Ok(true) },
            r = conn.stream.readable() => {
                r.map_err(|e| io_reason(&e))?;
                let mut got = 0u64;
                while conn.try_fill()? {
                    got += drain_publishes(conn, stats, result, (oldest_ns, latency_from_ns))?;
                    if conn.rbuf.len() > READ_CHUNK * 4 { break; }
                }
                got += drain_publishes(conn, stats, result, (oldest_ns, latency_from_ns))?;
                if got > 0 {
                    shared.received.fetch_add(got, Relaxed);
                }
            }
            r = conn.stream.writable(), if conn.write_pending() => r.map_err(|e| io_reason(&e))?,
            _ = sleep_until(instant_at(wake.unwrap_or(u64::MAX / 4))), if wake.is_some() => {
                let now = now_ns();
                if drop_at.is_some_and(|d| d <= now) {
                    return Ok(false);
                }
                if ping.is_some_and(|p| last_write + p <= now) {
                    conn.queue(&Packet::PingReq)?;
                }
            }
        }
        if conn.write_pending() {
            conn.try_flush()?;
            last_write = now_ns();
        }
    }
}

/// Decodes every complete packet, records each PUBLISH and queues its ack. Returns new unique messages.
fn drain_publishes(
    conn: &mut Conn,
    stats: &Stats,
    result: &mut SubResult,
    window: (u64, u64),
) -> Result<u64, String> {
    let mut unique = 0;
    let mut st = stats.borrow_mut();
    let mut now = 0;
    while let Some(p) = conn.next_packet()? {
        let Some(p) = common_packet(conn, p)? else {
            continue;
        };
        let Packet::Publish(publish) = p else {
            st.error(format!("subscriber:unexpected_{:?}", p.packet_type()));
            continue;
        };
        unique += record_publish(conn, &mut st, result, &publish, window, &mut now)?;
    }
    if now != 0 {
        st.last_recv_ns = now;
    }
    Ok(unique)
}

/// Acknowledges one PUBLISH and tracks its sequence number; 1 if it was new.
fn record_publish(
    conn: &mut Conn,
    st: &mut WorkerStats,
    result: &mut SubResult,
    publish: &mqtt::Publish,
    (oldest_ns, latency_from_ns): (u64, u64),
    now: &mut u64,
) -> Result<u64, String> {
    match publish.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => conn.queue(&Packet::PubAck(mqtt::resp(publish.packet_id)))?,
        QoS::ExactlyOnce => conn.queue(&Packet::PubRec(mqtt::resp(publish.packet_id)))?,
    }
    let Some(stamp) = read_stamp(&publish.payload) else {
        st.foreign += 1;
        return Ok(0);
    };
    if stamp.sent_ns < oldest_ns {
        st.stale += 1;
        return Ok(0);
    }
    if *now == 0 {
        *now = now_ns();
    }
    let streams = result.streams.len();
    let tracker = match result.streams.get_mut(&stamp.publisher) {
        Some(t) => t,
        None if streams >= MAX_STREAMS_PER_SUBSCRIBER => {
            st.foreign += 1;
            return Ok(0);
        }
        None => result.streams.entry(stamp.publisher).or_default(),
    };
    use crate::seqtrack::Arrival;
    if tracker.record(stamp.seq) != Arrival::Duplicate {
        if stamp.sent_ns >= latency_from_ns {
            st.latency
                .saturating_record(now.saturating_sub(stamp.sent_ns).max(1));
        }
        return Ok(1);
    }
    Ok(0)
}
