//! The metrics and health HTTP/1.1 endpoint, on its own std threads (never on a shard): `GET /metrics`,
//! `/healthz` (200 while the process runs), `/readyz` (200 once ready, 503 before), 404 otherwise. One request
//! per connection (`Connection: close`), requests bounded in size and time, at most `MAX_CONNECTIONS` served at
//! once (more are answered 503 and closed).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Metrics;

/// Request head bytes accepted (a scrape's is ~200).
pub const MAX_REQUEST: usize = 8 * 1024;
pub const MAX_CONNECTIONS: usize = 4;
/// For the whole request head, and for each write of the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks at the shutdown flag.
const SHUTDOWN_POLL_MS: i32 = 200;

pub struct MetricsServer {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the accept loop to see the shutdown flag (connections in service finish on their own).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` now (so a taken port refuses the start with the reason) and serves until `shutdown` is set.
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("metrics_listen: cannot listen on {addr}: {e}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let thread = std::thread::Builder::new()
        .name("coremq-metrics".into())
        .spawn(move || accept_loop(listener, metrics, shutdown))?;
    tracing::info!(address = %bound, "metrics and health endpoint listening");
    Ok(MetricsServer {
        addr: bound,
        thread: Some(thread),
    })
}

fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, shutdown: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    while !shutdown.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, SHUTDOWN_POLL_MS) } <= 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            // Best effort, never blocking the accept loop: the answer fits in any socket buffer.
            let mut s = stream;
            let _ = s.set_nonblocking(true);
            let _ = s.write_all(&response(503, "text/plain", b"busy\n", false));
            continue;
        }
        let (m, a) = (metrics.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("coremq-metrics-conn".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &m) {
                    tracing::debug!(error = %e, "metrics endpoint: connection failed");
                }
                a.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "metrics endpoint: cannot start a connection thread");
        }
    }
}

fn serve(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let answer = loop {
        if len == buf.len() {
            break response(431, "text/plain", b"request head too large\n", false);
        }
        if std::time::Instant::now() >= deadline {
            break response(408, "text/plain", b"request timeout\n", false);
        }
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break response(408, "text/plain", b"request timeout\n", false)
            }
            Err(e) => return Err(e),
        };
        len += n;
        match parse_request(&buf[..len]) {
            Ok(None) => continue,
            Ok(Some((method, path))) => break route(metrics, &method, &path),
            Err(why) => break response(400, "text/plain", format!("{why}\n").as_bytes(), false),
        }
    };
    stream.write_all(&answer)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// `Ok(None)`: the head is incomplete, read more.
pub fn parse_request(buf: &[u8]) -> Result<Option<(String, String)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or_default().to_string();
            let path = req.path.unwrap_or_default();
            let path = path.split('?').next().unwrap_or_default().to_string();
            Ok(Some((method, path)))
        }
        Err(e) => Err(format!("bad request: {e}")),
    }
}

/// The whole answer to one request, head and body.
pub fn route(metrics: &Metrics, method: &str, path: &str) -> Vec<u8> {
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return response(405, "text/plain", b"only GET and HEAD\n", false);
    }
    match path {
        "/metrics" => {
            let body = super::render::render(metrics);
            response(200, super::render::CONTENT_TYPE, body.as_bytes(), head_only)
        }
        "/healthz" => response(200, "text/plain", b"ok\n", head_only),
        "/readyz" if metrics.is_ready() => response(200, "text/plain", b"ready\n", head_only),
        "/readyz" => response(503, "text/plain", b"recovering\n", head_only),
        _ => response(404, "text/plain", b"not found\n", head_only),
    }
}

fn response(code: u16, ctype: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}
