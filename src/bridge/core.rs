//! The bridge proper, sans-io: two client links (the local broker and the remote one) and a flow each way.
//!
//! - `out`: the local link's subscriptions (the `out` rules) feed PUBLISHes to the remote link; a QoS 1
//!   message is acknowledged to the local broker only once the remote acknowledged it (an acknowledgement is a
//!   promise), so until then the local broker still owns it: in flight in the bridge's persistent session,
//!   replayed if either side drops.
//! - `in`: the remote link's subscriptions (the `in` rules) feed PUBLISHes to the local broker, acknowledged to
//!   the remote once the local broker acknowledged them.
//!
//! The local link is only connected while the remote one is up (and once at start, to create the session and
//! its subscriptions): while the remote is down the local session is offline, so the local broker queues the
//! outbound messages in its log like for any persistent session, with its bounds, drop counters and
//! crash safety. Reconnects to the remote back off exponentially with jitter, over the addresses in order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;

use super::link::{Link, LinkError, LinkEvent};
use super::status::BridgeStatus;
use super::topic_map::TopicMap;
use crate::codec::QoS;

/// Bytes a link may have waiting to be written before a flow stops feeding it.
const OUT_LIMIT: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
}

/// A message on its way through the bridge.
#[derive(Debug, Clone)]
struct Held {
    /// The source's packet id to acknowledge once the destination did (0: nothing to acknowledge).
    src_pid: u16,
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
}

/// One direction: messages taken from the source, waiting for the destination's window or acknowledgement.
#[derive(Debug, Default)]
struct Flow {
    pending: VecDeque<Held>,
    /// Sent on the destination, by its packet id, oldest first.
    inflight: VecDeque<(u16, Held)>,
}

impl Flow {
    fn pump(&mut self, from: &mut Link, to: &mut Link, now: u64) -> u64 {
        let mut sent = 0;
        while to.is_up() && to.out.len() < OUT_LIMIT {
            let Some(front) = self.pending.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && !to.has_window() {
                break;
            }
            let h = self.pending.pop_front().expect("front exists");
            let pid = to.publish(&h.topic, &h.payload, h.qos, h.retain, now);
            sent += 1;
            if pid != 0 {
                self.inflight.push_back((pid, h));
            } else if h.src_pid != 0 {
                // Downgraded to QoS 0 by the rule: nothing more to wait for.
                from.ack(h.src_pid, now);
            }
        }
        sent
    }

    fn acked(&mut self, pid: u16, from: &mut Link, now: u64) {
        if let Some(i) = self.inflight.iter().position(|(p, _)| *p == pid) {
            let (_, h) = self.inflight.remove(i).expect("position is in range");
            if h.src_pid != 0 {
                from.ack(h.src_pid, now);
            }
        }
    }

    /// The destination dropped: what was in flight goes out again when it is back (at least once).
    fn destination_down(&mut self) {
        while let Some((_, h)) = self.inflight.pop_back() {
            self.pending.push_front(h);
        }
    }

    /// The source dropped: it will send its unacknowledged QoS 1 messages again, so the copies not yet sent
    /// are dropped, and those in flight are no longer acknowledged to it.
    fn source_down(&mut self) {
        self.pending.retain(|h| h.src_pid == 0);
        for (_, h) in self.inflight.iter_mut() {
            h.src_pid = 0;
        }
    }

    fn len(&self) -> usize {
        self.pending.len() + self.inflight.len()
    }
}

/// Reconnect timing: `base * 2^n` capped, with the upper half jittered (so many bridges do not reconnect in step).
#[derive(Debug)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base_ms: u64, cap_ms: u64, seed: u64) -> Backoff {
        Backoff {
            base_ms: base_ms.max(1),
            cap_ms: cap_ms.max(base_ms.max(1)),
            attempt: 0,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay in milliseconds.
    pub fn next_delay(&mut self) -> u64 {
        let full = self
            .base_ms
            .saturating_mul(1u64 << self.attempt.min(20))
            .min(self.cap_ms);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        full / 2 + self.rng % (full / 2 + 1)
    }
}

#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    map: TopicMap,
    pub local: Link,
    pub remote: Link,
    out: Flow,
    inb: Flow,
    /// Bound of each flow's waiting messages: past it the runtime stops reading that flow's source.
    max_pending: usize,
    pub backoff: Backoff,
    addresses: Vec<String>,
    addr_index: usize,
    remote_retry_at: u64,
    local_retry_at: u64,
    /// The local session and its subscriptions exist (SUBACK seen once since start).
    local_primed: bool,
    /// The remote was up at least once (later ups count as reconnects).
    remote_was_up: bool,
    pub status: Arc<BridgeStatus>,
}

impl Bridge {
    #[allow(clippy::too_many_arguments)] // one place builds it (`runtime::spawn`), from the config
    pub fn new(
        name: String,
        map: TopicMap,
        local: Link,
        remote: Link,
        addresses: Vec<String>,
        backoff: Backoff,
        max_pending: usize,
        status: Arc<BridgeStatus>,
    ) -> Bridge {
        Bridge {
            name,
            map,
            local,
            remote,
            out: Flow::default(),
            inb: Flow::default(),
            max_pending: max_pending.max(1),
            backoff,
            addresses,
            addr_index: 0,
            remote_retry_at: 0,
            local_retry_at: 0,
            local_primed: false,
            remote_was_up: false,
            status,
        }
    }

    fn link(&mut self, side: Side) -> &mut Link {
        match side {
            Side::Local => &mut self.local,
            Side::Remote => &mut self.remote,
        }
    }

    /// The remote address to try next.
    pub fn remote_address(&self) -> &str {
        &self.addresses[self.addr_index]
    }

    /// Whether the runtime should open a connection on `side` now.
    pub fn wants_connect(&self, side: Side, now: u64) -> bool {
        match side {
            Side::Remote => now >= self.remote_retry_at,
            Side::Local => self.local_wanted() && now >= self.local_retry_at,
        }
    }

    /// The local link is wanted while the remote is up, and at start until the session is subscribed.
    pub fn local_wanted(&self) -> bool {
        self.remote.is_up() || !self.local_primed
    }

    /// Read more from `side`? Not while the flow it feeds is full (TCP backpressure to that broker).
    pub fn wants_read(&self, side: Side) -> bool {
        match side {
            Side::Local => self.out.pending.len() < self.max_pending,
            Side::Remote => self.inb.pending.len() < self.max_pending,
        }
    }

    pub fn on_connected(&mut self, side: Side, now: u64) {
        self.link(side).on_connected(now);
    }

    /// A connection attempt failed before any MQTT exchange (resolve, TCP or TLS).
    pub fn on_connect_failed(&mut self, side: Side, now: u64) {
        self.on_closed(side, now);
    }

    pub fn on_closed(&mut self, side: Side, now: u64) {
        let was = self.link(side).state();
        self.link(side).on_closed();
        match side {
            Side::Remote => {
                self.out.destination_down();
                self.inb.source_down();
                self.status.connected.store(false, Relaxed);
                if was == super::link::LinkState::Up {
                    // A working connection dropped: start again at the primary address, soon.
                    self.addr_index = 0;
                    self.backoff.reset();
                    self.remote_retry_at = now + self.backoff.next_delay();
                } else {
                    self.status.connect_failures.fetch_add(1, Relaxed);
                    self.addr_index += 1;
                    if self.addr_index >= self.addresses.len() {
                        // Every address failed: back off before the next round.
                        self.addr_index = 0;
                        self.remote_retry_at = now + self.backoff.next_delay();
                    } else {
                        self.remote_retry_at = now;
                    }
                }
            }
            Side::Local => {
                self.inb.destination_down();
                self.out.source_down();
                self.local_retry_at = now + 1000;
            }
        }
        self.update_status();
    }

    /// Bytes from `side`. An error means the runtime closes that connection (then calls `on_closed`).
    pub fn on_bytes(
        &mut self,
        side: Side,
        buf: &mut bytes::BytesMut,
        now: u64,
    ) -> Result<(), LinkError> {
        let mut events = Vec::new();
        let r = self.link(side).on_bytes(buf, now, &mut events);
        for e in events {
            self.on_event(side, e, now);
        }
        self.pump(now);
        r
    }

    fn on_event(&mut self, side: Side, e: LinkEvent, now: u64) {
        match (side, e) {
            (Side::Remote, LinkEvent::Up { .. }) => {
                if self.remote_was_up {
                    self.status.reconnects.fetch_add(1, Relaxed);
                }
                self.remote_was_up = true;
                self.backoff.reset();
                self.status.connected.store(true, Relaxed);
                tracing::info!(bridge = %self.name, remote = %self.remote_address(), "bridge connected");
            }
            (Side::Local, LinkEvent::Up { .. }) => {}
            (s, LinkEvent::Subscribed { all_granted }) => {
                if s == Side::Local {
                    self.local_primed = true;
                }
                if !all_granted {
                    tracing::warn!(bridge = %self.name, side = ?s, "bridge: a subscription was refused");
                }
            }
            (Side::Local, LinkEvent::Message(p)) => {
                let src_pid = p.packet_id;
                match self.map.outbound(&p.topic) {
                    Some((topic, qos)) => self.out.pending.push_back(Held {
                        src_pid,
                        topic,
                        payload: p.payload,
                        qos: p.qos.min(qos),
                        retain: p.retain,
                    }),
                    // Matched a local subscription but no rule (cannot happen with our own filters): do not
                    // hold the local broker's window.
                    None if src_pid != 0 => self.local.ack(src_pid, now),
                    None => {}
                }
            }
            (Side::Remote, LinkEvent::Message(p)) => {
                let src_pid = p.packet_id;
                match self.map.inbound(&p.topic) {
                    Some((topic, qos)) => self.inb.pending.push_back(Held {
                        src_pid,
                        topic,
                        payload: p.payload,
                        qos: p.qos.min(qos),
                        retain: p.retain,
                    }),
                    None if src_pid != 0 => self.remote.ack(src_pid, now),
                    None => {}
                }
            }
            (Side::Remote, LinkEvent::Acked(pid)) => self.out.acked(pid, &mut self.local, now),
            (Side::Local, LinkEvent::Acked(pid)) => self.inb.acked(pid, &mut self.remote, now),
        }
    }

    /// Move what can move (after input, or after the runtime wrote output and links have room again).
    pub fn pump(&mut self, now: u64) {
        let out = self.out.pump(&mut self.local, &mut self.remote, now);
        let inb = self.inb.pump(&mut self.remote, &mut self.local, now);
        self.status.forwarded_out.fetch_add(out, Relaxed);
        self.status.forwarded_in.fetch_add(inb, Relaxed);
        self.update_status();
    }

    fn update_status(&self) {
        self.status.queued.store(self.out.len() as u64, Relaxed);
    }

    /// Keep-alive on both links; the sides whose connection must be closed.
    pub fn tick(&mut self, now: u64) -> Vec<(Side, LinkError)> {
        let mut dead = Vec::new();
        for side in [Side::Local, Side::Remote] {
            if let Err(e) = self.link(side).tick(now) {
                dead.push((side, e));
            }
        }
        dead
    }

    /// The earliest time something is due (a keep-alive or a reconnect), for the runtime's wait.
    pub fn next_deadline(&self, local_open: bool, remote_open: bool) -> Option<u64> {
        let mut d = [self.local.next_deadline(), self.remote.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        if !remote_open {
            d = Some(d.map_or(self.remote_retry_at, |x| x.min(self.remote_retry_at)));
        }
        if !local_open && self.local_wanted() {
            d = Some(d.map_or(self.local_retry_at, |x| x.min(self.local_retry_at)));
        }
        d
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
