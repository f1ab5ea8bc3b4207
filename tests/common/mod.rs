//! Shared test support: run the real `coremq` binary on a free port, and a raw blocking MQTT client built on our
//! codec for checks that need byte-level control (malformed input, retransmissions, silence).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod certs;
pub mod resilient;
pub mod tools;

pub use resilient::Recv;

use bytes::BytesMut;
use coremq::codec::{
    self, Connect, Decoder, Packet, ProtocolVersion, Publish, QoS, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};

pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
    /// The data directory of a broker started with `start` (removed with the broker).
    pub data: Option<tempfile::TempDir>,
}

impl Broker {
    /// Start the broker with 2 shards (so cross-shard paths run) and a fresh data directory, plus `extra`
    /// arguments.
    pub fn start(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("data dir");
        let mut b = Self::start_in(dir.path(), extra);
        b.data = Some(dir);
        b
    }

    /// Start the broker with 2 shards on the data directory `dir` (which outlives it: restart tests).
    pub fn start_in(dir: &std::path::Path, extra: &[&str]) -> Broker {
        let level = std::env::var("COREMQ_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let dir = dir.to_str().expect("utf-8 path").to_string();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--log-level",
            &level,
            "--data-dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        Self::start_args(&args)
    }

    /// kill -9: no shutdown path runs.
    pub fn kill9(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Start the broker with exactly `args`, plus `--io $COREMQ_IO` when that is set (CI runs the broker tests
    /// once per socket backend) and `args` do not choose one.
    pub fn start_args(args: &[&str]) -> Broker {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Ok(io) = std::env::var("COREMQ_IO") {
            if !io.is_empty() && !args.iter().any(|a| a == "--io") {
                args.extend(["--io".to_string(), io]);
            }
        }
        let (child, addrs) = spawn_listening(&args, 1);
        Broker {
            child,
            addr: addrs[0],
            data: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("broker did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs the broker binary with exactly `args` and reads the addresses of its first `listeners` listeners from
/// its stdout (one line each: `listen` first, then the `[[listeners]]` tables in order); stdout is drained from
/// then on so the broker never blocks on it. The caller owns (and must kill) the child.
pub fn spawn_listening<S: AsRef<OsStr>>(args: &[S], listeners: usize) -> (Child, Vec<SocketAddr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start coremq");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addrs = (0..listeners)
        .map(|_| {
            let line = lines
                .next()
                .expect("coremq exited before listening (see its stderr)")
                .expect("read stdout");
            line.strip_prefix("coremq listening on ")
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("unexpected line: {line}"))
                .parse()
                .unwrap()
        })
        .collect();
    std::thread::spawn(move || for _ in lines {});
    (child, addrs)
}

/// Writes `text` as `coremq.toml` in `dir`; its path, for `--config`.
pub fn write_config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("coremq.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().expect("utf-8 path").to_string()
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking MQTT client on a raw socket, speaking through coremq's codec.
pub struct Raw {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    decoder: Decoder,
    buf: BytesMut,
}

impl Raw {
    pub fn connect_tcp(addr: SocketAddr, version: ProtocolVersion) -> Raw {
        Self::from_stream(TcpStream::connect(addr).expect("tcp connect"), version)
    }

    /// A client on a socket the test connected itself (e.g. with its own buffer sizes).
    pub fn from_stream(stream: TcpStream, version: ProtocolVersion) -> Raw {
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            version,
            decoder: Decoder::new_client(version, 1 << 24),
            buf: BytesMut::new(),
        }
    }

    pub fn connect_packet(
        client_id: &str,
        clean: bool,
        keep_alive: u16,
        version: ProtocolVersion,
    ) -> Connect {
        Connect {
            protocol: version,
            bridge: false,
            clean_start: clean,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: None,
        }
    }

    /// TCP connect, send CONNECT, return the client and the CONNACK.
    pub fn connect(addr: SocketAddr, c: Connect) -> (Raw, codec::ConnAck) {
        let mut r = Raw::connect_tcp(addr, c.protocol);
        r.send(&Packet::Connect(Box::new(c)));
        match r.recv() {
            Some(Packet::ConnAck(a)) => (r, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.version, &mut out).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).unwrap();
    }

    /// Next packet, or None when the broker closed the connection (or nothing came within the timeout).
    pub fn recv(&mut self) -> Option<Packet> {
        match read_packet(&mut self.stream, &mut self.decoder, &mut self.buf) {
            Ok(Recv::Packet(p)) => Some(p),
            Ok(Recv::Timeout | Recv::Closed) => None,
            Err(e) => panic!("broker sent a bad packet: {e}"),
        }
    }

    pub fn set_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// True if the broker closes the connection within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        self.set_timeout(Duration::from_millis(100));
        while Instant::now() < deadline {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    pub fn subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) -> Vec<codec::ReasonCode> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: None,
        }));
        loop {
            match self.recv() {
                Some(Packet::SubAck(a)) => {
                    assert_eq!(a.packet_id, packet_id);
                    return a.reasons;
                }
                Some(_) => continue,
                None => panic!("no SUBACK"),
            }
        }
    }

    pub fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        payload: &[u8],
        retain: bool,
        dup: bool,
    ) {
        self.send(&Packet::Publish(Publish {
            dup,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            properties: None,
            payload: bytes::Bytes::copy_from_slice(payload),
        }));
    }
}

/// Next packet from `stream` through `decoder`, bytes read ahead kept in `buf`: `Timeout` when nothing came
/// within the socket's read timeout, `Closed` at EOF or an I/O error; Err when the broker sent bytes that do not
/// decode.
pub fn read_packet(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
) -> Result<Recv, codec::DecodeError> {
    loop {
        if let Some(p) = decoder.decode(buf)? {
            return Ok(Recv::Packet(p));
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Recv::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Recv::Timeout)
            }
            Err(_) => return Ok(Recv::Closed),
        }
    }
}

pub fn publish(p: Option<Packet>) -> Publish {
    match p {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// A client id that the broker places on the given shard (of `shards`), to steer cross-shard tests.
pub fn id_on_shard(prefix: &str, shard: u16, shards: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| coremq::broker::shard::owner_shard(id, shards) == shard)
        .unwrap()
}
