//! MQTT over WebSocket (RFC 6455, MQTT §6) as a stream layer, server side, sans-io.
//!
//! Wire bytes in: first the HTTP/1.1 upgrade request (bounded: [`handshake::MAX_HEAD`] bytes of head, at most
//! [`handshake::MAX_HEADERS`] headers), answered with 101 or an HTTP error; then masked client frames whose binary
//! payload is the MQTT byte stream (packets may be split across frames or share one; frame boundaries mean
//! nothing). Payload bytes are unmasked and passed on as they arrive, so a frame is never buffered whole.
//! MQTT bytes out: one unmasked binary frame per `write_app` call.
//!
//! Paths: the listener's `path` (default `/mqtt`) must match exactly (query ignored), anything else is a 404, so a
//! mistyped URL fails loudly and a reverse proxy can route on the path; `path = "*"` accepts every path, as
//! mosquitto does.

// Explicit paths so the fuzz target can compile this file on its own (see fuzz/fuzz_targets/ws_layer.rs).
#[path = "ws/frame.rs"]
mod frame;
#[path = "ws/handshake.rs"]
mod handshake;
#[cfg(test)]
#[path = "ws/tests.rs"]
mod tests;

use std::sync::Arc;

use bytes::BytesMut;

use self::frame::{Control, FrameReader};
pub use self::frame::{CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA};
pub use self::handshake::{accept_key, PathRule, MAX_HEAD, MAX_HEADERS};
use super::{Layer, LayerError, LayerFactory};

/// A listener's WebSocket settings, shared by its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    pub path: PathRule,
    /// Largest client frame payload accepted; a larger one is closed with 1009.
    pub max_frame: usize,
}

/// The default frame bound: the largest MQTT packet plus room for a client that packs a few small packets into
/// the same frame. Frames are streamed, so the bound costs no memory.
pub fn default_max_frame(max_packet_size: u32) -> usize {
    (max_packet_size as usize).saturating_add(64 * 1024)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the upgrade request.
    Handshake,
    /// Frames flow both ways.
    Open,
    /// Refused or broken; the answer (HTTP error or close frame) has been written.
    Failed,
}

/// One WebSocket connection, server side.
pub struct WsLayer {
    cfg: Arc<WsConfig>,
    phase: Phase,
    /// The request head read so far (empty and unallocated once the handshake is over).
    head: Vec<u8>,
    frames: FrameReader,
    /// We have sent a close frame: nothing may follow it.
    close_sent: bool,
    /// The peer sent a close frame.
    peer_closed: bool,
}

impl WsLayer {
    pub fn new(cfg: Arc<WsConfig>) -> Self {
        let frames = FrameReader::new(cfg.max_frame);
        WsLayer {
            cfg,
            phase: Phase::Handshake,
            head: Vec::new(),
            frames,
            close_sent: false,
            peer_closed: false,
        }
    }

    /// An orderly close with a status code of our choosing and a short reason (cut to fit a control frame).
    pub fn close_with(&mut self, code: u16, reason: &str, wire_out: &mut BytesMut) {
        if self.phase == Phase::Open && !self.close_sent {
            frame::write_close(wire_out, code, reason);
            self.close_sent = true;
        }
    }

    /// Bytes held for a partial request head or control frame (0 when idle; a partial frame header sits in a
    /// fixed array and is not counted).
    pub fn buffered_bytes(&self) -> usize {
        self.head.len() + self.frames.control.len()
    }

    fn read_handshake(
        &mut self,
        wire: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<(), LayerError> {
        let searched = self.head.len();
        let take = wire.len().min(MAX_HEAD - searched);
        self.head.extend_from_slice(&wire[..take]);
        let Some(end) = handshake::head_end(&self.head, searched) else {
            if self.head.len() >= MAX_HEAD {
                return Err(self.refuse(
                    handshake::Refusal {
                        status: 431,
                        why: format!("request head longer than {MAX_HEAD} bytes"),
                    },
                    wire_out,
                ));
            }
            return Ok(());
        };
        // Bytes after the head are the client's first frames (a client may send them without waiting).
        let early = self.head.split_off(end);
        let result = handshake::check(&self.head, &self.cfg.path);
        self.head = Vec::new();
        match result {
            Ok(upgrade) => {
                handshake::write_accept(&upgrade, wire_out);
                self.phase = Phase::Open;
                self.read_frames(&early, app, wire_out)?;
                self.read_frames(&wire[take..], app, wire_out)
            }
            Err(refusal) => Err(self.refuse(refusal, wire_out)),
        }
    }

    fn refuse(&mut self, refusal: handshake::Refusal, wire_out: &mut BytesMut) -> LayerError {
        handshake::write_refusal(&refusal, wire_out);
        self.phase = Phase::Failed;
        self.head = Vec::new();
        LayerError::Handshake(format!("{} {}", refusal.status, refusal.why))
    }

    fn read_frames(
        &mut self,
        mut wire: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<(), LayerError> {
        while !wire.is_empty() && !self.peer_closed {
            // After our close, the peer's data is not wanted: read on only to see its close.
            let mut discard = BytesMut::new();
            let sink = if self.close_sent {
                &mut discard
            } else {
                &mut *app
            };
            let (used, control) = match self.frames.read(wire, sink) {
                Ok(r) => r,
                Err(v) => {
                    self.close_with(v.code, &v.why, wire_out);
                    self.phase = Phase::Failed;
                    return Err(LayerError::Protocol(format!(
                        "WebSocket close {}: {}",
                        v.code, v.why
                    )));
                }
            };
            wire = &wire[used..];
            match control {
                None => {}
                Some(Control::Ping(payload)) if !self.close_sent => {
                    frame::write_frame(wire_out, frame::OP_PONG, &payload);
                }
                Some(Control::Ping(_)) => {}
                Some(Control::Close(code)) => {
                    self.peer_closed = true;
                    // Echo the peer's status (§5.5.1); bytes after a close frame are ignored.
                    self.close_with(code.unwrap_or(CLOSE_NORMAL), "", wire_out);
                }
            }
        }
        Ok(())
    }
}

impl Layer for WsLayer {
    fn read_wire(
        &mut self,
        wire: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<(), LayerError> {
        match self.phase {
            Phase::Handshake => self.read_handshake(wire, app, wire_out),
            Phase::Open => self.read_frames(wire, app, wire_out),
            Phase::Failed => Err(LayerError::Protocol(
                "WebSocket connection already failed".into(),
            )),
        }
    }

    fn write_app(&mut self, app: &[u8], wire_out: &mut BytesMut) -> Result<(), LayerError> {
        if self.phase != Phase::Open {
            return Err(LayerError::Protocol(
                "WebSocket not open: nothing can be sent".into(),
            ));
        }
        if self.close_sent {
            return Err(LayerError::Protocol(
                "WebSocket close already sent: nothing can follow it".into(),
            ));
        }
        if !app.is_empty() {
            frame::write_frame(wire_out, frame::OP_BINARY, app);
        }
        Ok(())
    }

    fn close(&mut self, wire_out: &mut BytesMut) {
        self.close_with(CLOSE_NORMAL, "", wire_out);
    }

    fn established(&self) -> bool {
        self.phase == Phase::Open
    }

    fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    fn shrink(&mut self) {
        self.frames.shrink();
        if self.head.is_empty() {
            self.head = Vec::new();
        }
    }
}

/// Makes a [`WsLayer`] for each connection of one WebSocket listener.
#[derive(Debug)]
pub struct WsFactory {
    cfg: Arc<WsConfig>,
}

impl WsFactory {
    pub fn new(cfg: WsConfig) -> Self {
        WsFactory { cfg: Arc::new(cfg) }
    }

    pub fn config(&self) -> &WsConfig {
        &self.cfg
    }
}

impl LayerFactory for WsFactory {
    fn new_layer(&self) -> Result<Box<dyn Layer>, LayerError> {
        Ok(Box::new(WsLayer::new(self.cfg.clone())))
    }
}

/// The factory for a WebSocket listener: its `path` (`"*"` for any path) and the frame bound (see
/// [`default_max_frame`]).
pub fn ws_factory(l: &crate::config::ListenerConfig, max_frame: usize) -> Arc<WsFactory> {
    Arc::new(WsFactory::new(WsConfig {
        path: PathRule::from_config(&l.path),
        max_frame,
    }))
}
