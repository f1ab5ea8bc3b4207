//! Feeds arbitrary bytes, in arbitrary read sizes, to the WebSocket layer: as a raw connection (the upgrade parser),
//! after a valid upgrade (the frame reader), and as the payload of well-formed masked frames, which must come out
//! as exactly the same MQTT bytes. Nothing may panic, nothing may grow past its bound.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// What `src/stream/ws.rs` needs from `src/stream/mod.rs` (its `super`) and `src/config.rs`, which pull in the
/// broker's runtime. The trait must stay in step with `stream::Layer`: ws.rs implements it, so a drift fails to
/// compile here.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("stream protocol error: {0}")]
    Protocol(String),
}

pub trait Layer: Send {
    fn read_wire(
        &mut self,
        wire: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<(), LayerError>;
    fn write_app(&mut self, app: &[u8], wire_out: &mut BytesMut) -> Result<(), LayerError>;
    fn close(&mut self, wire_out: &mut BytesMut);
    fn established(&self) -> bool;
    fn peer_closed(&self) -> bool;
    fn peer_identity(&self) -> Option<&str> {
        None
    }
    fn shrink(&mut self) {}
}

pub trait LayerFactory: Send + Sync {
    fn new_layer(&self) -> Result<Box<dyn Layer>, LayerError>;
}

#[allow(dead_code, unused_imports)]
#[path = "../../src/stream/ws.rs"]
mod ws;

#[allow(dead_code)]
mod config {
    pub struct ListenerConfig {
        pub path: String,
    }
}

use ws::{PathRule, WsConfig, WsLayer, MAX_HEAD};

const MAX_FRAME: usize = 4096;
const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

fn new_layer() -> WsLayer {
    WsLayer::new(std::sync::Arc::new(WsConfig {
        path: PathRule::Exact("/mqtt".into()),
        max_frame: MAX_FRAME,
    }))
}

/// Feeds `wire` in reads of the sizes `sizes` cycles through; returns the MQTT bytes and whether it failed.
fn feed(layer: &mut WsLayer, wire: &[u8], sizes: &[u8]) -> (Vec<u8>, bool) {
    let mut app = BytesMut::new();
    let mut at = 0;
    let mut i = 0;
    while at < wire.len() {
        let n = (sizes.get(i % sizes.len().max(1)).copied().unwrap_or(255) as usize)
            .max(1)
            .min(wire.len() - at);
        let mut out = BytesMut::new();
        let before = app.len();
        let r = layer.read_wire(&wire[at..at + n], &mut app, &mut out);
        // A read yields at most its own bytes as MQTT bytes, and a bounded answer: the 101 or an HTTP error
        // (short), pongs and close frames (at most a header per 2 wire bytes plus the payload echoed).
        assert!(app.len() - before <= n);
        assert!(
            out.len() <= 1024 + 64 * n,
            "answer of {} bytes to a read of {n}",
            out.len()
        );
        if r.is_err() {
            assert!(!layer.established());
            let mut again = BytesMut::new();
            assert!(layer.read_wire(b"x", &mut again, &mut out).is_err());
            return (app.to_vec(), true);
        }
        if layer.peer_closed() {
            let mut after = BytesMut::new();
            layer.read_wire(&wire[at..], &mut after, &mut out).unwrap();
            assert!(after.is_empty(), "nothing after the peer's close");
            return (app.to_vec(), false);
        }
        at += n;
        i += 1;
    }
    (app.to_vec(), false)
}

/// A masked client binary frame (own encoder: the layer is checked against the RFC, not itself).
fn frame(out: &mut Vec<u8>, payload: &[u8], fin: bool, first: bool, mask: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | if first { 2 } else { 0 });
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend(mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (ctl, rest) = data.split_at(6);
    let sizes = &ctl[..2];
    let mask = [ctl[2], ctl[3], ctl[4], ctl[5]];
    match ctl[0] % 3 {
        // Arbitrary bytes as the whole connection.
        0 => {
            let mut l = new_layer();
            feed(&mut l, rest, sizes);
            assert!(l.buffered_bytes() <= MAX_HEAD);
        }
        // A valid upgrade, then arbitrary frames.
        1 => {
            let mut l = new_layer();
            let wire = [UPGRADE, rest].concat();
            let (app, _) = feed(&mut l, &wire, sizes);
            assert!(app.len() <= rest.len());
            let mut out = BytesMut::new();
            if l.established() && !l.peer_closed() {
                l.write_app(rest, &mut out).unwrap();
                assert!(out.len() <= rest.len() + 10);
            }
        }
        // Arbitrary MQTT bytes in well-formed frames split where the input says: must come out unchanged.
        _ => {
            let mut wire = UPGRADE.to_vec();
            let mut at = 0;
            let mut first = true;
            let step = (ctl[1] as usize % 64) + 1;
            while at < rest.len() {
                let end = (at + step * (1 + rest[at] as usize % 7)).min(rest.len());
                let fin = end == rest.len() || rest[at] % 2 == 0;
                frame(&mut wire, &rest[at..end], fin, first, mask);
                first = fin;
                at = end;
            }
            let mut l = new_layer();
            let (app, failed) = feed(&mut l, &wire, sizes);
            assert!(!failed);
            assert_eq!(app, rest);
        }
    }
});
