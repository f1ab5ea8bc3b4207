//! The per-connection stream layer: what sits between a socket's bytes and the MQTT bytes a shard sees.
//!
//! Sans-io, bytes in and bytes out. The socket backend (epoll today, io_uring next) reads wire bytes and gives them
//! to the connection's layer, which yields MQTT bytes for the shard core; the core's MQTT output goes through the
//! layer, which yields wire bytes for the backend to send. Neither the core nor the backend knows whether a
//! connection is plain, TLS or WebSocket. A plain connection has no layer at all: nothing allocated, nothing copied.
//!
//! Layers stack: WebSocket over TLS is a [`Stacked`] of the TLS layer (next to the wire) and the WebSocket layer
//! (next to MQTT). A layer travels with its connection when the connection moves to the shard that owns its
//! client id, so it must be `Send`.
//!
//! Bounds: a layer never buffers more than one wire read plus one record or frame of its own, and its handshake
//! is bounded in size by the layer and in time by the core's CONNECT timeout (no CONNECT before the handshake).

use bytes::BytesMut;

pub mod tls;
pub mod ws;

/// Why a layer gave up on its connection. The connection is closed; nothing else is affected.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The handshake failed (bad certificate, not TLS, not a WebSocket upgrade, wrong path or subprotocol).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer broke the layer's protocol after the handshake (bad record, bad frame, frame too large).
    #[error("stream protocol error: {0}")]
    Protocol(String),
}

/// One connection's transformation between wire bytes and application (MQTT) bytes.
pub trait Layer: Send {
    /// Wire bytes from the peer. Decoded application bytes are appended to `app`; bytes the layer must send on
    /// its own (TLS handshake records and alerts, the WebSocket upgrade answer, pongs) are appended to
    /// `wire_out`. All of `wire` is consumed (a partial record or frame is kept inside the layer, bounded).
    fn read_wire(
        &mut self,
        wire: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<(), LayerError>;

    /// Application bytes to send, appended to `wire_out` in wire form. Called only once `established()`.
    fn write_app(&mut self, app: &[u8], wire_out: &mut BytesMut) -> Result<(), LayerError>;

    /// An orderly close from our side (TLS close_notify, a WebSocket close frame), appended to `wire_out`.
    fn close(&mut self, wire_out: &mut BytesMut);

    /// The handshake is done: application bytes can flow both ways.
    fn established(&self) -> bool;

    /// The peer ended the application stream (TLS close_notify, WebSocket close frame): treat as end of file.
    fn peer_closed(&self) -> bool;

    /// The verified client certificate's identity (its subject CN), for `use_identity_as_username`.
    fn peer_identity(&self) -> Option<&str> {
        None
    }

    /// Free buffers an idle connection does not need (called when the connection has nothing pending).
    fn shrink(&mut self) {}
}

/// Two layers: `outer` next to the wire (TLS), `inner` next to the application (WebSocket).
pub struct Stacked {
    pub outer: Box<dyn Layer>,
    pub inner: Box<dyn Layer>,
    /// Bytes between the two layers, reused: empty between calls.
    mid: BytesMut,
}

impl Stacked {
    pub fn new(outer: Box<dyn Layer>, inner: Box<dyn Layer>) -> Self {
        Stacked {
            outer,
            inner,
            mid: BytesMut::new(),
        }
    }
}

impl Layer for Stacked {
    fn read_wire(
        &mut self,
        wire: &[u8],
        app: &mut BytesMut,
        wire_out: &mut BytesMut,
    ) -> Result<(), LayerError> {
        let mut mid = std::mem::take(&mut self.mid);
        let r = self.outer.read_wire(wire, &mut mid, wire_out);
        let mut inner_out = BytesMut::new();
        let r = r.and_then(|_| self.inner.read_wire(&mid, app, &mut inner_out));
        let r = r.and_then(|_| {
            if inner_out.is_empty() {
                Ok(())
            } else {
                self.outer.write_app(&inner_out, wire_out)
            }
        });
        mid.clear();
        self.mid = mid;
        r
    }

    fn write_app(&mut self, app: &[u8], wire_out: &mut BytesMut) -> Result<(), LayerError> {
        let mut mid = std::mem::take(&mut self.mid);
        let r = self
            .inner
            .write_app(app, &mut mid)
            .and_then(|_| self.outer.write_app(&mid, wire_out));
        mid.clear();
        self.mid = mid;
        r
    }

    fn close(&mut self, wire_out: &mut BytesMut) {
        let mut mid = BytesMut::new();
        self.inner.close(&mut mid);
        if self.outer.established() && !mid.is_empty() {
            let _ = self.outer.write_app(&mid, wire_out);
        }
        self.outer.close(wire_out);
    }

    fn established(&self) -> bool {
        self.outer.established() && self.inner.established()
    }

    fn peer_closed(&self) -> bool {
        self.outer.peer_closed() || self.inner.peer_closed()
    }

    fn peer_identity(&self) -> Option<&str> {
        self.outer.peer_identity()
    }

    fn shrink(&mut self) {
        self.mid = BytesMut::new();
        self.outer.shrink();
        self.inner.shrink();
    }
}

/// Makes the layer for each new connection of one listener (holds the listener's TLS config, WebSocket path).
pub trait LayerFactory: Send + Sync {
    fn new_layer(&self) -> Result<Box<dyn Layer>, LayerError>;

    /// Read the listener's files again (SIGHUP); new connections use them, open ones keep theirs. On error the
    /// old ones stay.
    fn reload(&self, _l: &crate::config::ListenerConfig) -> Result<(), String> {
        Ok(())
    }
}

/// A layered connection's state in the I/O layer: the layer and the wire bytes it produced that the socket has
/// not taken yet (sent before anything else, in order).
pub struct ConnStream {
    pub layer: Box<dyn Layer>,
    pub wire_out: BytesMut,
    /// The layer's peer identity was given to the shard core.
    pub identity_reported: bool,
}

impl ConnStream {
    pub fn new(layer: Box<dyn Layer>) -> Self {
        ConnStream {
            layer,
            wire_out: BytesMut::new(),
            identity_reported: false,
        }
    }
}

impl std::fmt::Debug for ConnStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnStream")
            .field("established", &self.layer.established())
            .field("wire_out", &self.wire_out.len())
            .finish()
    }
}

/// `wss://`: TLS next to the wire, WebSocket inside it.
pub struct StackedFactory {
    pub outer: std::sync::Arc<dyn LayerFactory>,
    pub inner: std::sync::Arc<dyn LayerFactory>,
}

impl LayerFactory for StackedFactory {
    fn new_layer(&self) -> Result<Box<dyn Layer>, LayerError> {
        Ok(Box::new(Stacked::new(
            self.outer.new_layer()?,
            self.inner.new_layer()?,
        )))
    }

    fn reload(&self, l: &crate::config::ListenerConfig) -> Result<(), String> {
        self.outer.reload(l)
    }
}

/// The layer factory a listener needs: `None` for plain MQTT. Errors name the listener and why (bad certificate
/// file, ...), and refuse the start. `max_packet_size` bounds WebSocket frames (see `ws::default_max_frame`).
pub fn factory_for(
    l: &crate::config::ListenerConfig,
    max_packet_size: u32,
) -> Result<Option<std::sync::Arc<dyn LayerFactory>>, String> {
    use crate::config::ListenerProtocol;
    match (l.is_tls(), l.protocol) {
        (false, ListenerProtocol::Mqtt) => Ok(None),
        (true, ListenerProtocol::Mqtt) => Ok(Some(tls::tls_factory(l)?)),
        (true, ListenerProtocol::Websockets) => Ok(Some(std::sync::Arc::new(StackedFactory {
            outer: tls::tls_factory(l)?,
            inner: ws::ws_factory(l, ws::default_max_frame(max_packet_size)),
        }))),
        (false, ListenerProtocol::Websockets) => Ok(Some(ws::ws_factory(
            l,
            ws::default_max_frame(max_packet_size),
        ))),
    }
}
