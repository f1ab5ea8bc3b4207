//! Delivery to subscribers: enqueue with overflow policies, pump, in-flight windows, replay, resume.

use super::*;

/// Why a queue could not take a QoS 1/2 message (counted per reason in `Stats::full_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueueFull {
    /// An online session past `max_queued_messages + max_in_transit`.
    OnlineHard,
    /// An offline session at `max_offline_messages_per_session` references (or, not in the log,
    /// `max_queued_messages`).
    SessionMessages,
    /// A persistent session at `max_offline_bytes_per_session`.
    SessionBytes,
    /// The shard's persistent queues at `max_offline_bytes_per_shard`.
    ShardBytes,
}

/// Log bytes a message body costs (its record: topic, payload, properties and framing).
pub(super) fn message_log_bytes(m: &Message) -> u32 {
    let props = m.properties.as_ref().map_or(0, |_| 64);
    (m.topic.len() + m.payload.len() + props + 32).min(u32::MAX as usize) as u32
}

fn queued_log_bytes(q: &Queued) -> u32 {
    q.msg.as_ref().map_or(0, |m| message_log_bytes(m))
}

impl Shard {
    /// Put a message in a session's queue, applying the bounds and the overflow policies.
    ///
    /// QoS 1/2 for a persistent session is bounded by log bytes (per session and per shard) and, offline, by the
    /// count of references; the message count bound (`max_queued_messages`) is for memory: online queues and QoS 0.
    /// A queue that is truly full follows `persistent_queue_full` (see `queue_full`). False if this message was
    /// not queued (refused or dropped, counted).
    pub(super) fn enqueue(&mut self, sidx: u32, mut q: Queued, origin: Option<Origin>) -> bool {
        let soft = self.cfg.max_queued_messages.max(1);
        let hard = soft + self.cfg.max_in_transit;
        let waiting_bound = self.waiting_bound();
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let online = s.conn.is_some();
        let qos0 = q.qos == QoS::AtMostOnce;
        let in_log = !qos0 && s.persisted && self.store.is_some();
        if !qos0 {
            if let Some(reason) = self.full_reason(sidx, &q, online, in_log, hard) {
                if !self.queue_full(sidx, &q, origin, in_log, reason) {
                    return false;
                }
            }
        }
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        let mut dropped = None;
        if s.backlog() >= soft && (online || qos0) {
            let policy = match (qos0, online) {
                (true, true) => self.cfg.qos0_overflow,
                (true, false) => OverflowPolicy::DropNewest,
                (false, _) => self.cfg.overflow,
            };
            // A QoS 0 drop behind a socket that still takes data is a burst we failed to write out in time.
            let writable = s.conn.is_some_and(|c| !self.send_full.get(c.idx));
            let count_drop = |s: &mut Session, stats: &mut Stats| {
                s.dropped += 1;
                if qos0 {
                    stats.dropped_qos0 += 1;
                    stats.dropped_qos0_writable += u64::from(writable);
                } else {
                    stats.dropped_qos12 += 1
                }
            };
            match policy {
                OverflowPolicy::DropNewest => {
                    count_drop(s, &mut self.stats);
                    return false;
                }
                OverflowPolicy::DropOldest => {
                    // Everything in flight: the newest gives way instead.
                    let Some(oldest) = s.queue.pop_front() else {
                        count_drop(s, &mut self.stats);
                        return false;
                    };
                    dropped = Some(oldest);
                    count_drop(s, &mut self.stats);
                }
                OverflowPolicy::Backpressure => self.pause_publisher(sidx, origin),
            }
        } else if online && s.queue.len() >= waiting_bound {
            // Bounded queueing: more waiting than one window behind the in-flight ones is latency, not
            // throughput. A publisher under backpressure waits in the kernel (TCP, its own window) instead.
            let backpressure = match qos0 {
                true => self.cfg.qos0_overflow,
                false => self.cfg.overflow,
            } == OverflowPolicy::Backpressure;
            if backpressure {
                self.pause_publisher(sidx, origin);
            }
        }
        if let Some(old) = dropped {
            self.persist_done(sidx, &old);
        }
        self.persist_enqueue(sidx, &mut q);
        if in_log && q.msg_id != 0 {
            q.log_bytes = queued_log_bytes(&q);
            self.account(sidx, q.log_bytes);
        }
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        s.queue.push_back(q);
        true
    }

    /// Messages waiting (not yet sent) in an online session's queue past which its publishers are paused under
    /// backpressure: one in-flight window (`max_inflight`, at least 16), at most the soft bound.
    pub(super) fn waiting_bound(&self) -> usize {
        let soft = self.cfg.max_queued_messages.max(1);
        (self.cfg.max_inflight as usize).clamp(16, 1024).min(soft)
    }

    /// Pause the publisher feeding this session, unless it is the session's own connection (a client that stops
    /// reading while it writes would deadlock with itself). Past the hard bound, see `full_reason`.
    fn pause_publisher(&mut self, sidx: u32, origin: Option<Origin>) {
        let Some(o) = origin else { return };
        // One waiter per publisher connection, whichever of its packets filled the queue.
        let o = Origin { packet_id: 0, ..o };
        let shard_id = self.cfg.shard_id;
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        let own = o.shard == shard_id && Some(o.conn) == s.conn;
        if own || s.waiters.contains(&o) || s.waiters.len() >= 4096 {
            return;
        }
        s.waiters.push(o);
        self.stats.pauses += 1;
        tracing::debug!(shard = shard_id, publisher = ?o, "queue full: pausing publisher");
        if o.shard == shard_id {
            if let Some(c) = self.conns.get_mut(o.conn) {
                c.pause_count += 1;
            }
        } else {
            self.mesh_out.push((o.shard, MeshMsg::Pause(o.conn)));
        }
    }

    /// Why a QoS 1/2 message cannot be queued for this session without breaking a bound, if it cannot.
    fn full_reason(
        &self,
        sidx: u32,
        q: &Queued,
        online: bool,
        in_log: bool,
        hard: usize,
    ) -> Option<QueueFull> {
        let s = self.session(sidx);
        if online && s.backlog() >= hard {
            // Publishers overshot the soft bound by more than the pause could stop: bounded memory wins.
            return Some(QueueFull::OnlineHard);
        }
        if !online {
            // Offline: references only, bounded by their own (larger) count.
            let max = if in_log {
                self.cfg.max_offline_messages_per_session
            } else {
                // Not in the log (persistence off): the bodies stay in memory, so the memory bound applies.
                self.cfg.max_queued_messages
            };
            if s.backlog() >= max.max(1) {
                return Some(QueueFull::SessionMessages);
            }
        }
        if in_log {
            let size = q.msg.as_ref().map_or(0, |m| message_log_bytes(m)) as u64;
            if s.log_bytes as u64 + size > self.cfg.max_offline_bytes_per_session {
                return Some(QueueFull::SessionBytes);
            }
            let total = self.cfg.max_offline_bytes_per_shard;
            if total > 0 && self.stats.queued_log_bytes + size > total {
                return Some(QueueFull::ShardBytes);
            }
        }
        None
    }

    /// A QoS 1/2 message meets a truly full queue. `refuse`: the publish is not acknowledged (the caller sees
    /// `refusals()` change and refuses it, or tells the publisher's shard with `LogRefused`); a message with no
    /// publisher waiting for an acknowledgement (a will, a retained copy) can only be dropped. `drop`: dropped for
    /// this session, counted, logged with the client id at once (then at every power of two of its drops). True
    /// if the message should be queued anyway (`drop` with `offline_overflow = "drop-oldest"` made room).
    fn queue_full(
        &mut self,
        sidx: u32,
        q: &Queued,
        origin: Option<Origin>,
        in_log: bool,
        reason: QueueFull,
    ) -> bool {
        match reason {
            QueueFull::OnlineHard => self.stats.full_online_hard += 1,
            QueueFull::SessionMessages => self.stats.full_session_messages += 1,
            QueueFull::SessionBytes => self.stats.full_session_bytes += 1,
            QueueFull::ShardBytes => self.stats.full_shard_bytes += 1,
        }
        let waits_for_ack = q.msg.as_ref().is_some_and(|m| m.origin.is_some()) && origin.is_some();
        if self.cfg.persistent_queue_full == QueueFullPolicy::Refuse && waits_for_ack {
            self.stats.refused_queue_full += 1;
            tracing::debug!(shard = self.cfg.shard_id, client = %self.session(sidx).client_id, ?reason,
                "session queue full: refusing the publish");
            return false;
        }
        let online = self.session(sidx).conn.is_some();
        if !online
            && self.cfg.offline_overflow == OverflowPolicy::DropOldest
            && reason != QueueFull::ShardBytes
        {
            if let Some(old) = self.session_mut(sidx).queue.pop_front() {
                self.persist_done(sidx, &old);
                self.count_full_drop(sidx, online, reason);
                if self
                    .full_reason(sidx, q, online, in_log, usize::MAX)
                    .is_none()
                {
                    return true;
                }
            }
        }
        self.count_full_drop(sidx, online, reason);
        false
    }

    /// Count (and log, loudly, with the client id) a message dropped for a full session.
    fn count_full_drop(&mut self, sidx: u32, online: bool, reason: QueueFull) {
        if online {
            self.stats.dropped_qos12 += 1;
        } else {
            self.stats.dropped_offline += 1;
        }
        let shard = self.cfg.shard_id;
        let s = self.session_mut(sidx);
        s.dropped += 1;
        if s.dropped.is_power_of_two() {
            tracing::warn!(shard, client = %s.client_id, ?reason, dropped = s.dropped,
                "ACKNOWLEDGED QoS 1/2 MESSAGE DROPPED for a full session (persistent_queue_full = \"drop\")");
        }
    }

    /// The largest backlog (queued + in flight) of any session: for tests and the simulation, which check that
    /// every queue stays within its bound. O(sessions).
    pub fn max_session_backlog(&self) -> usize {
        self.sessions
            .iter()
            .flatten()
            .map(Session::backlog)
            .max()
            .unwrap_or(0)
    }

    /// Failures and refusals so far: a publish whose routing changed this must not be acknowledged.
    pub(super) fn refusals(&self) -> u64 {
        self.stats.persist_errors + self.stats.refused_queue_full
    }

    /// `bytes` of log now count against the session's and the shard's bounds.
    pub(super) fn account(&mut self, sidx: u32, bytes: u32) {
        let s = self.session_mut(sidx);
        s.log_bytes = s.log_bytes.saturating_add(bytes);
        self.stats.queued_log_bytes += bytes as u64;
    }

    /// A queued entry left its session (acknowledged, dropped, discarded): its bytes no longer count.
    pub(super) fn unaccount(&mut self, sidx: u32, q: &Queued) {
        if q.log_bytes == 0 {
            return;
        }
        let s = self.session_mut(sidx);
        s.log_bytes = s.log_bytes.saturating_sub(q.log_bytes);
        self.stats.queued_log_bytes = self
            .stats
            .queued_log_bytes
            .saturating_sub(q.log_bytes as u64);
    }

    /// Move messages from a session's queue into its connection's output buffer, within the in-flight window
    /// and the output buffer bound. Bodies of persisted messages are read back from the log here, as they go.
    pub(super) fn pump(&mut self, sidx: u32) {
        let max_out = self.cfg.max_out_buffer;
        let soft = self.cfg.max_queued_messages.max(1);
        let Some(key) = self
            .sessions
            .get(sidx as usize)
            .and_then(Option::as_ref)
            .and_then(|s| s.conn)
        else {
            return;
        };
        self.resend_deferred(sidx, key);
        let mut wrote = false;
        let mut out_full = false;
        loop {
            let s = self.sessions[sidx as usize].as_ref().expect("live session");
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            if conn.closing {
                return;
            }
            if conn.out_len() >= max_out {
                out_full = !s.queue.is_empty();
                break;
            }
            let Some(front) = s.queue.front() else { break };
            // Expiry first: an expired body is not read back from the log.
            if self.queued_expired(front) {
                let q = self
                    .session_mut(sidx)
                    .queue
                    .pop_front()
                    .expect("front exists");
                self.drop_expired(sidx, &q);
                continue;
            }
            if front.msg.is_none() {
                let mut q = self
                    .session_mut(sidx)
                    .queue
                    .pop_front()
                    .expect("front exists");
                if self.load_body(sidx, &mut q) {
                    self.session_mut(sidx).queue.push_front(q);
                }
                continue;
            }
            // A QoS 0 message behind a blocked QoS 1/2 one waits too: order per topic is preserved.
            if front.qos != QoS::AtMostOnce && !s.window_open() {
                break;
            }
            let s = self.sessions[sidx as usize].as_mut().expect("live session");
            let version = s.protocol;
            let client_max_packet = s.client_max_packet;
            let mut q = s.queue.pop_front().expect("front exists");
            let packet_id = if q.qos == QoS::AtMostOnce {
                0
            } else {
                s.alloc_packet_id()
            };
            if !self.write_queued(sidx, key, &mut q, packet_id, version, client_max_packet) {
                continue;
            }
            self.stats.publishes_out += 1;
            wrote = true;
            if q.qos == QoS::AtMostOnce {
                // Restored message whose subscription was downgraded to QoS 0: sent, so done.
                self.persist_done(sidx, &q);
            } else {
                // A clean session never sends an in-flight message again (it ends with its connection), unless
                // a shared group takes it back when the member leaves: its body goes now, while still in cache,
                // not when the acknowledgement comes (a cache miss per message at high rates).
                if q.shared.is_none() && self.session(sidx).is_clean() {
                    q.msg = None;
                }
                let state = if q.qos == QoS::AtLeastOnce {
                    InflightState::AwaitPubAck
                } else {
                    InflightState::AwaitPubRec
                };
                self.session_mut(sidx).inflight.push_back(Inflight {
                    packet_id,
                    state,
                    q,
                    deferred: false,
                });
            }
        }
        if wrote {
            if let Some(conn) = self.conns.get_mut(key) {
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
            }
        }
        if out_full {
            self.want_flush(key);
        }
        let s = self.session(sidx);
        if !s.waiters.is_empty()
            && s.backlog() <= soft / 2
            && s.queue.len() <= self.waiting_bound() / 2
        {
            self.release_waiters(sidx);
        }
    }

    /// Reconnect of a persistent session: resend unacknowledged PUBLISHes with DUP, and PUBRELs, within the
    /// window (the client's Receive Maximum may be smaller than before): the rest is marked deferred and resent,
    /// with its packet id, as acknowledgements make room (`resend_deferred`).
    pub(super) fn replay_inflight(&mut self, sidx: u32, key: ConnKey) {
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        let window = s.window.max(1) as usize;
        let mut any_deferred = false;
        for (i, f) in s.inflight.iter_mut().enumerate() {
            f.deferred = i >= window;
            any_deferred |= f.deferred;
        }
        s.has_deferred = any_deferred;
        let n = s.inflight.len().min(window);
        self.resend_inflight(sidx, key, 0..n);
    }

    /// Resend deferred in-flight entries while the window has room.
    fn resend_deferred(&mut self, sidx: u32, key: ConnKey) {
        if self.conns.get(key).map_or(true, |c| c.closing) {
            return;
        }
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        if !s.has_deferred {
            return;
        }
        let mut room = (s.window.max(1) as usize).saturating_sub(s.inflight_sent());
        let mut picked = Vec::new();
        for (i, f) in s.inflight.iter_mut().enumerate() {
            if f.deferred && room > 0 {
                f.deferred = false;
                room -= 1;
                picked.push(i);
            }
        }
        s.has_deferred = s.inflight.iter().any(|f| f.deferred);
        for i in picked {
            self.resend_inflight(sidx, key, i..i + 1);
        }
    }

    /// PUBLISH with DUP (or PUBREL) for the in-flight entries in `range`.
    fn resend_inflight(&mut self, sidx: u32, key: ConnKey, range: std::ops::Range<usize>) {
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let version = s.protocol;
        let mut packets = Vec::with_capacity(range.len());
        for f in s.inflight.range(range) {
            packets.push(match f.state {
                InflightState::AwaitPubComp => Packet::PubRel(PubResp {
                    packet_id: f.packet_id,
                    reason: ReasonCode::Success,
                    properties: None,
                }),
                _ => match build_publish(&f.q, f.packet_id, true, version) {
                    Some(p) => Packet::Publish(p),
                    None => continue,
                },
            });
        }
        for p in packets {
            self.send(key, &p);
        }
    }

    pub(super) fn release_waiters(&mut self, sidx: u32) {
        let waiters = std::mem::take(&mut self.session_mut(sidx).waiters);
        for o in waiters {
            if o.shard == self.cfg.shard_id {
                self.resume(o.conn);
            } else {
                self.mesh_out.push((o.shard, MeshMsg::Resume(o.conn)));
            }
        }
    }

    pub(super) fn resume(&mut self, key: ConnKey) {
        tracing::debug!(shard = self.cfg.shard_id, conn = ?key, "resume publisher");
        if let Some(c) = self.conns.get_mut(key) {
            c.pause_count = c.pause_count.saturating_sub(1);
            if c.pause_count == 0 {
                self.resumed.push(key);
            }
        }
    }
}
