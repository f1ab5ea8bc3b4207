//! Reading and writing connections that have a stream layer (TLS, WebSocket): wire bytes go through the
//! layer, the core sees only MQTT bytes, and what the socket does not take waits in the layer's wire buffer.

use super::*;

/// What became of a layered connection's pending wire bytes.
pub(super) enum WireFlush {
    Drained,
    /// The socket is full.
    Blocked,
    /// An earlier send is still in flight (io_uring).
    Busy,
    Failed,
}

/// Send a layered connection's pending wire bytes, in order, until the socket stops taking them.
pub(super) fn flush_wire(
    net: &RefCell<Net>,
    token: u64,
    fd: RawFd,
    cs: &mut ConnStream,
    sent: &Cell<u64>,
) -> WireFlush {
    while !cs.wire_out.is_empty() {
        let r = net.borrow_mut().send(token, fd, &cs.wire_out);
        match r {
            SendResult::Done(n) => {
                sent.set(sent.get() + n as u64);
                cs.wire_out.advance(n)
            }
            SendResult::WouldBlock => return WireFlush::Blocked,
            SendResult::Busy => return WireFlush::Busy,
            SendResult::Failed => return WireFlush::Failed,
        }
    }
    // Idle layered connections hold no output buffer.
    cs.wire_out = BytesMut::new();
    WireFlush::Drained
}

/// Before a close: what `flush_wire` can send, and (io_uring) the rest queued behind the send in flight.
pub(super) fn flush_wire_last(
    net: &RefCell<Net>,
    token: u64,
    fd: RawFd,
    cs: &mut ConnStream,
    sent: &Cell<u64>,
) {
    if let WireFlush::Busy = flush_wire(net, token, fd, cs, sent) {
        let n = net.borrow_mut().send_last(token, fd, &cs.wire_out);
        sent.set(sent.get() + n as u64);
    }
}

impl ShardIo {
    pub(super) fn set_stream(&self, key: ConnKey, stream: Option<Box<ConnStream>>) {
        let mut streams = self.streams.borrow_mut();
        let i = key.idx as usize;
        if stream.is_none() && i >= streams.len() {
            return;
        }
        if i >= streams.len() {
            streams.resize_with(i + 1, || None);
        }
        streams[i] = stream;
    }

    pub(super) fn take_stream(&self, key: ConnKey) -> Option<Box<ConnStream>> {
        self.streams
            .borrow_mut()
            .get_mut(key.idx as usize)
            .and_then(Option::take)
    }

    pub(super) fn is_layered(&self, key: ConnKey) -> bool {
        self.streams
            .borrow()
            .get(key.idx as usize)
            .is_some_and(Option::is_some)
    }

    /// `read_conn` for a connection with a stream layer: wire bytes go through the layer, the core sees only the
    /// application bytes it decoded.
    pub(super) fn read_layered(&self, key: ConnKey, scratch: &mut BytesMut) -> bool {
        let Some(fd) = self.core.borrow().conn_io(key).map(|io| io as RawFd) else {
            return false;
        };
        let mut did = false;
        for _ in 0..READS_PER_CONN {
            if !self.core.borrow().can_read(key) {
                return did;
            }
            scratch.clear();
            let got = self.net.borrow_mut().recv(token(key), fd, scratch, SCRATCH);
            let n = match got {
                IoResult::Done(0) => continue,
                IoResult::Done(n) => {
                    self.bytes_in.set(self.bytes_in.get() + n as u64);
                    n
                }
                IoResult::WouldBlock => {
                    self.set_flags(key, |f| *f &= !F_READABLE);
                    return did;
                }
                IoResult::Closed | IoResult::Error(_) => {
                    self.core.borrow_mut().on_io_closed(key);
                    return true;
                }
            };
            did = true;
            let mut app = self.app.borrow_mut();
            app.clear();
            let (result, flushed, peer_closed) = {
                let mut streams = self.streams.borrow_mut();
                let Some(cs) = streams.get_mut(key.idx as usize).and_then(|s| s.as_mut()) else {
                    return did;
                };
                let r = cs.layer.read_wire(scratch, &mut app, &mut cs.wire_out);
                if !cs.identity_reported {
                    if let Some(id) = cs.layer.peer_identity() {
                        cs.identity_reported = true;
                        self.core.borrow_mut().set_peer_identity(key, id);
                    }
                }
                // Handshake answers, alerts and pongs leave now, ahead of anything the core adds.
                (
                    r,
                    flush_wire(&self.net, token(key), fd, cs, &self.bytes_out),
                    cs.layer.peer_closed(),
                )
            };
            let mut core = self.core.borrow_mut();
            if let Err(e) = result {
                tracing::debug!(shard = self.id, error = %e, "stream layer closed the connection");
                core.on_io_closed(key);
                return true;
            }
            match flushed {
                WireFlush::Drained => {}
                WireFlush::Blocked | WireFlush::Busy => {
                    self.set_flags(key, |f| *f |= F_WANT_WRITE);
                }
                WireFlush::Failed => {
                    core.on_io_closed(key);
                    return true;
                }
            }
            let outcome = if app.is_empty() {
                ReadOutcome::Continue
            } else {
                let connecting = (!core.is_established(key)).then(Instant::now);
                let (c, outcome) = self.feed(core, key, &mut app);
                core = c;
                if let Some(t) = connecting {
                    self.connect_timed(&core, key, &outcome, t);
                }
                outcome
            };
            if peer_closed && outcome != ReadOutcome::HandedOff {
                core.on_io_closed(key);
                return true;
            }
            match outcome {
                ReadOutcome::Continue
                    if self.net.borrow().drained(token(key), n, SCRATCH)
                        && self.flags_of(key) & F_HUP == 0 =>
                {
                    self.set_flags(key, |f| *f &= !F_READABLE);
                    return did;
                }
                ReadOutcome::Continue => {}
                ReadOutcome::Paused | ReadOutcome::Close | ReadOutcome::Yield => return did,
                ReadOutcome::HandedOff => {
                    drop(core);
                    self.handed_off(key, fd);
                    return did;
                }
            }
        }
        let f = self.flags_of(key);
        if f & F_READABLE != 0 && f & F_IN_READY == 0 {
            self.set_flags(key, |f| *f |= F_IN_READY);
            self.ready.borrow_mut().push_back(key);
        }
        did
    }

    /// `write_conn` for a connection with a stream layer: the core's bytes are encoded by the layer, and what the
    /// socket does not take stays in the layer's wire buffer (sent first next time, so nothing is reordered).
    pub(super) fn write_layered(&self, key: ConnKey) {
        let mut core = self.core.borrow_mut();
        let Some(fd) = core.conn_io(key).map(|io| io as RawFd) else {
            return;
        };
        let mut streams = self.streams.borrow_mut();
        let Some(cs) = streams.get_mut(key.idx as usize).and_then(|s| s.as_mut()) else {
            return;
        };
        loop {
            match flush_wire(&self.net, token(key), fd, cs, &self.bytes_out) {
                WireFlush::Drained => {}
                WireFlush::Blocked => {
                    drop(streams);
                    core.send_blocked(key);
                    self.set_flags(key, |f| *f |= F_WANT_WRITE);
                    return;
                }
                WireFlush::Busy => {
                    drop(streams);
                    self.set_flags(key, |f| *f |= F_WANT_WRITE);
                    return;
                }
                WireFlush::Failed => {
                    core.on_io_closed(key);
                    return;
                }
            }
            if !cs.layer.established() {
                // The shard has no output before CONNECT, which comes only after the handshake.
                break;
            }
            let Some((out, writable)) = core.out_writable(key) else {
                return;
            };
            if writable == 0 {
                break;
            }
            if let Err(e) = cs.layer.write_app(&out[..writable], &mut cs.wire_out) {
                tracing::debug!(shard = self.id, error = %e, "stream layer failed on output");
                core.on_io_closed(key);
                return;
            }
            core.consumed(key, writable);
        }
        cs.layer.shrink();
        core.flushed(key);
    }
}
