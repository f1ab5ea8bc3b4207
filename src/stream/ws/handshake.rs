//! The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 §4.2): the request checks, the 101 answer, and the
//! HTTP error answers a refused request gets before the connection closes.

use base64::Engine as _;
use bytes::BytesMut;
use sha1::{Digest, Sha1};

/// Most bytes of request head (request line and headers) buffered before the end of the head must be seen.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines parsed; a request with more is refused with 431.
pub const MAX_HEADERS: usize = 32;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// MQTT §6: the subprotocols an MQTT server answers with, preferred first.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Which request paths a listener upgrades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    /// Exactly this path (the query string is ignored).
    Exact(String),
    /// Any path (`path = "*"`: what mosquitto does).
    Any,
}

impl PathRule {
    pub fn from_config(path: &str) -> Self {
        if path == "*" {
            PathRule::Any
        } else {
            PathRule::Exact(path.to_string())
        }
    }

    fn allows(&self, target: &str) -> bool {
        match self {
            PathRule::Any => true,
            PathRule::Exact(p) => target.split('?').next() == Some(p.as_str()),
        }
    }
}

/// A request that may upgrade: what the 101 answer carries.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub accept: String,
    /// The subprotocol chosen, spelt as the client offered it; `None` when the client offered none.
    pub protocol: Option<String>,
}

/// A refused request: the HTTP status it is answered with and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: String,
}

impl Refusal {
    fn new(status: u16, why: impl Into<String>) -> Self {
        Refusal {
            status,
            why: why.into(),
        }
    }
}

/// Where the head ends (the index just past its blank line), searching `buf` from `from` on.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

/// Checks a complete request head (through its blank line).
pub fn check(head: &[u8], rule: &PathRule) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::new(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                format!("more than {MAX_HEADERS} request headers"),
            ))
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed HTTP request: {e}"))),
    }
    let method = req.method.unwrap_or_default();
    if method != "GET" {
        return Err(Refusal::new(
            405,
            format!("method {method}: a WebSocket upgrade is a GET"),
        ));
    }
    if req.version != Some(1) {
        return Err(Refusal::new(400, "a WebSocket upgrade needs HTTP/1.1"));
    }
    let target = req.path.unwrap_or_default();
    if !rule.allows(target) {
        return Err(Refusal::new(
            404,
            format!("no WebSocket endpoint at {target}"),
        ));
    }

    let mut host = false;
    let mut upgrade = false;
    let mut connection = false;
    let mut version: Option<&str> = None;
    let mut key: Option<&str> = None;
    let mut offered: Vec<&str> = Vec::new();
    for h in req.headers.iter() {
        let name = h.name;
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Refusal::new(400, format!("header {name} is not UTF-8")))?
            .trim();
        if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= tokens(value).any(|t| t.eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= tokens(value).any(|t| t.eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(Refusal::new(400, "more than one Sec-WebSocket-Key"));
            }
            key = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            offered.extend(tokens(value));
        }
    }
    if !host {
        return Err(Refusal::new(400, "no Host header"));
    }
    if !upgrade {
        return Err(Refusal::new(400, "no `Upgrade: websocket` header"));
    }
    if !connection {
        return Err(Refusal::new(400, "no `Connection: upgrade` header"));
    }
    match version {
        Some("13") => {}
        Some(v) => {
            return Err(Refusal::new(
                426,
                format!("Sec-WebSocket-Version {v}, only 13 is supported"),
            ))
        }
        None => return Err(Refusal::new(426, "no Sec-WebSocket-Version header")),
    }
    let key = key.ok_or_else(|| Refusal::new(400, "no Sec-WebSocket-Key header"))?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => {
            return Err(Refusal::new(
                400,
                "Sec-WebSocket-Key is not 16 bytes in base64",
            ))
        }
    }
    let protocol = if offered.is_empty() {
        None
    } else {
        let chosen = SUBPROTOCOLS
            .iter()
            .find_map(|want| offered.iter().find(|o| o.eq_ignore_ascii_case(want)));
        match chosen {
            Some(p) => Some(p.to_string()),
            None => {
                return Err(Refusal::new(
                    400,
                    format!(
                        "subprotocols offered ({}) include neither mqtt nor mqttv3.1",
                        offered.join(", ")
                    ),
                ))
            }
        }
    };
    Ok(Upgrade {
        accept: accept_key(key),
        protocol,
    })
}

/// A comma-separated header value's tokens, trimmed, empty ones skipped.
fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The 101 answer.
pub fn write_accept(u: &Upgrade, out: &mut BytesMut) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    out.extend_from_slice(b"Sec-WebSocket-Accept: ");
    out.extend_from_slice(u.accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = &u.protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The error answer: status, the reason as a plain-text body, and `Connection: close`.
pub fn write_refusal(r: &Refusal, out: &mut BytesMut) {
    let phrase = match r.status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let extra = match r.status {
        405 => "Allow: GET\r\n",
        426 => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
        _ => "",
    };
    let body = format!("{}\n", r.why);
    let head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
        r.status,
        phrase,
        body.len(),
        extra
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}
