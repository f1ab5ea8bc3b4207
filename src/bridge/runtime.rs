//! The thin runtime of a bridge: one thread, two non-blocking sockets (the local broker over loopback and the
//! remote, plain or TLS) and poll(2). Everything it decides comes from `Bridge`; it only moves bytes and time.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::ServerName;

use super::core::{Bridge, Side};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest poll wait: the shutdown flag is checked at least this often.
const MAX_WAIT_MS: u64 = 100;
const READ_CHUNK: usize = 64 * 1024;

/// TLS settings for the remote side.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    /// Overrides the host of the address as the name verified in the remote's certificate.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::ClientConnection>, TcpStream),
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Transport {
    fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) | Transport::Tls(_, s) => s,
        }
    }

    /// Reads what is there into `buf`; `Ok(false)` at end of stream.
    fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        match self {
            Transport::Plain(s) => loop {
                match s.read(&mut chunk) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if n < chunk.len() {
                            return Ok(true);
                        }
                    }
                    Err(e) if would_block(&e) => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
            Transport::Tls(c, s) => {
                let mut open = true;
                loop {
                    match c.read_tls(s) {
                        Ok(0) => {
                            open = false;
                            break;
                        }
                        Ok(_) => {
                            c.process_new_packets().map_err(io::Error::other)?;
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                loop {
                    match c.reader().read(&mut chunk) {
                        Ok(0) => return Ok(false),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(open)
            }
        }
    }

    /// Writes as much of `out` as the socket takes (the rest stays in `out`).
    fn write_from(&mut self, out: &mut BytesMut) -> io::Result<()> {
        match self {
            Transport::Plain(s) => {
                while !out.is_empty() {
                    match s.write(out) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            let _ = out.split_to(n);
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            Transport::Tls(c, s) => {
                if !out.is_empty() {
                    // rustls buffers up to its limit and says how much it took.
                    let n = c.writer().write(out)?;
                    let _ = out.split_to(n);
                }
                while c.wants_write() {
                    match c.write_tls(s) {
                        Ok(_) => {}
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    fn wants_write(&self, out: &BytesMut) -> bool {
        !out.is_empty()
            || match self {
                Transport::Plain(_) => false,
                Transport::Tls(c, _) => c.wants_write(),
            }
    }
}

fn open(addr: &str, tls: Option<&TlsClient>) -> io::Result<Transport> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                return Ok(match tls {
                    None => Transport::Plain(s),
                    Some(t) => {
                        let host = match &t.server_name {
                            Some(n) => n.clone(),
                            None => addr
                                .rsplit_once(':')
                                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                                .unwrap_or_default(),
                        };
                        let name = ServerName::try_from(host.clone()).map_err(|e| {
                            io::Error::other(format!("TLS server name {host:?}: {e}"))
                        })?;
                        let c = rustls::ClientConnection::new(t.config.clone(), name)
                            .map_err(io::Error::other)?;
                        Transport::Tls(Box::new(c), s)
                    }
                });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The bridge's thread: runs until `shutdown`, then sends DISCONNECT on both links.
pub fn run(mut b: Bridge, local: SocketAddr, tls: Option<TlsClient>, shutdown: Arc<AtomicBool>) {
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let sides = [Side::Local, Side::Remote];
    let mut conns: [Option<Transport>; 2] = [None, None];
    // Per side: bytes of a frame that is not complete yet stay until the rest arrives.
    let mut rbufs = [BytesMut::new(), BytesMut::new()];
    let local_addr = local.to_string();

    let close = |b: &mut Bridge, conns: &mut [Option<Transport>; 2], i: usize, t: u64| {
        conns[i] = None;
        b.on_closed(sides[i], t);
    };

    while !shutdown.load(Ordering::Relaxed) {
        let t = now();
        // Open what is wanted.
        for (i, side) in sides.into_iter().enumerate() {
            if conns[i].is_some() || !b.wants_connect(side, t) {
                continue;
            }
            let (addr, tls) = match side {
                Side::Local => (local_addr.clone(), None),
                Side::Remote => (b.remote_address().to_string(), tls.as_ref()),
            };
            match open(&addr, tls) {
                Ok(tr) => {
                    conns[i] = Some(tr);
                    rbufs[i].clear();
                    b.on_connected(side, now());
                }
                Err(e) => {
                    tracing::warn!(bridge = %b.name, side = ?side, %addr, "bridge: cannot connect: {e}");
                    b.on_connect_failed(side, now());
                }
            }
        }
        // The local link rests while the remote is down: the local broker then queues for the session.
        if conns[0].is_some() && !b.local_wanted() {
            let t = now();
            b.local.disconnect(t);
            if let Some(tr) = conns[0].as_mut() {
                let _ = tr.write_from(&mut b.local.out);
            }
            close(&mut b, &mut conns, 0, t);
        }

        // Wait for input, room to write, or the next deadline.
        let mut fds = Vec::with_capacity(2);
        let mut which = Vec::with_capacity(2);
        for (i, side) in sides.into_iter().enumerate() {
            if let Some(tr) = &conns[i] {
                let out = match side {
                    Side::Local => &b.local.out,
                    Side::Remote => &b.remote.out,
                };
                let mut events = 0;
                if b.wants_read(side) {
                    events |= libc::POLLIN;
                }
                if tr.wants_write(out) {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: tr.socket().as_raw_fd(),
                    events,
                    revents: 0,
                });
                which.push(i);
            }
        }
        let t = now();
        let wait = b
            .next_deadline(conns[0].is_some(), conns[1].is_some())
            .map_or(MAX_WAIT_MS, |d| d.saturating_sub(t).min(MAX_WAIT_MS));
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !would_block(&e) {
                tracing::error!(bridge = %b.name, "bridge: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(MAX_WAIT_MS));
            }
            continue;
        }
        let t = now();
        for (fd, &i) in fds.iter().zip(&which) {
            let readable = fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            if !readable || conns[i].is_none() {
                continue;
            }
            let side = sides[i];
            let rbuf = &mut rbufs[i];
            let r = conns[i].as_mut().expect("open").read_into(rbuf);
            let mut failed = match r {
                Ok(true) => None,
                Ok(false) => Some("closed by the peer".to_string()),
                Err(e) => Some(e.to_string()),
            };
            if !rbuf.is_empty() {
                if let Err(e) = b.on_bytes(side, rbuf, t) {
                    failed = Some(e.to_string());
                }
            }
            if let Some(why) = failed {
                rbuf.clear();
                tracing::warn!(bridge = %b.name, side = ?side, "bridge: connection lost: {why}");
                close(&mut b, &mut conns, i, t);
            }
        }
        for (side, e) in b.tick(t) {
            tracing::warn!(bridge = %b.name, side = ?side, "bridge: {e}");
            let i = side as usize;
            if conns[i].is_some() {
                close(&mut b, &mut conns, i, t);
            }
        }
        // Write, let the flows move into the room that made, write again.
        for _ in 0..2 {
            for (i, side) in sides.into_iter().enumerate() {
                let Some(tr) = conns[i].as_mut() else {
                    continue;
                };
                let out = match side {
                    Side::Local => &mut b.local.out,
                    Side::Remote => &mut b.remote.out,
                };
                if let Err(e) = tr.write_from(out) {
                    tracing::warn!(bridge = %b.name, side = ?side, "bridge: write failed: {e}");
                    close(&mut b, &mut conns, i, t);
                }
            }
            b.pump(t);
        }
    }
    let t = now();
    for (i, side) in sides.into_iter().enumerate() {
        if let Some(tr) = conns[i].as_mut() {
            let link = match side {
                Side::Local => &mut b.local,
                Side::Remote => &mut b.remote,
            };
            link.disconnect(t);
            let _ = tr.write_from(&mut link.out);
        }
    }
}
