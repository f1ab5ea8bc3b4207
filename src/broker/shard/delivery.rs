//! Delivery to subscribers: enqueue with overflow policies, pump, in-flight windows, replay, resume.

use super::*;

impl Shard {
    /// Put a message in a session's queue, applying the bound and the overflow policy.
    pub(super) fn enqueue(&mut self, sidx: u32, mut q: Queued, origin: Option<Origin>) {
        let soft = self.cfg.max_queued_messages.max(1);
        let hard = soft + self.cfg.max_in_transit;
        let shard_id = self.cfg.shard_id;
        let cfg = &self.cfg;
        let stats = &mut self.stats;
        let mut dropped = None;
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        let online = s.conn.is_some();
        let qos0 = q.qos == QoS::AtMostOnce;
        // Which counter a drop of this message goes to.
        let mut count_drop = |s: &mut Session| {
            s.dropped += 1;
            match (qos0, online) {
                (true, _) => stats.dropped_qos0 += 1,
                (false, true) => stats.dropped_qos12 += 1,
                (false, false) => stats.dropped_offline += 1,
            }
        };
        if s.backlog() >= soft {
            let policy = match (qos0, online) {
                (true, true) => cfg.qos0_overflow,
                (true, false) => OverflowPolicy::DropNewest,
                (false, true) => cfg.overflow,
                (false, false) => cfg.offline_overflow,
            };
            match policy {
                OverflowPolicy::DropNewest => {
                    count_drop(s);
                    return;
                }
                OverflowPolicy::DropOldest => {
                    // Everything in flight: the newest gives way instead.
                    let Some(oldest) = s.queue.pop_front() else {
                        count_drop(s);
                        return;
                    };
                    dropped = Some(oldest);
                    count_drop(s);
                }
                OverflowPolicy::Backpressure => {
                    if s.backlog() >= hard {
                        // Publishers overshot the soft bound by more than the pause could stop: bounded memory wins.
                        count_drop(s);
                        return;
                    }
                    // Pause the publisher feeding us, unless it is this session's own connection (a client that
                    // stops reading while it writes would deadlock with itself).
                    if let Some(o) = origin {
                        let own = o.shard == shard_id && Some(o.conn) == s.conn;
                        if !own && !s.waiters.contains(&o) && s.waiters.len() < 4096 {
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
                    }
                }
            }
        }
        if let Some(old) = dropped {
            self.persist_done(sidx, &old);
        }
        self.persist_enqueue(sidx, &mut q);
        let s = self.sessions[sidx as usize].as_mut().expect("live session");
        s.queue.push_back(q);
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
        let mut wrote = false;
        loop {
            let s = self.sessions[sidx as usize].as_ref().expect("live session");
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            if conn.closing {
                return;
            }
            if conn.out.len() >= max_out {
                break;
            }
            let Some(front) = s.queue.front() else { break };
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
            let Some(publish) = build_publish(&q, packet_id, false, version) else {
                continue;
            };
            if client_max_packet > 0
                && codec::encoded_len(&Packet::Publish(publish.clone()), version)
                    > client_max_packet as usize
            {
                // [MQTT-3.1.2-25]: a packet over the client's maximum is discarded as if delivered.
                self.stats.dropped_too_large += 1;
                self.persist_done(sidx, &q);
                continue;
            }
            let persisted = q.msg_id != 0
                && q.qos != QoS::AtMostOnce
                && self.persist_sent(sidx, &mut q, packet_id);
            if persisted && q.qos == QoS::ExactlyOnce {
                // A QoS 2 PUBLISH leaves only once its packet id is durable: after a restart it is resent with
                // the same id, so the client can tell it is the same message.
                self.hold_output(key, true);
            }
            let conn = self.conns.get_mut(key).expect("connection checked above");
            if codec::encode_publish(&publish, version, &mut conn.out).is_err() {
                self.stats.dropped_too_large += 1;
                self.persist_done(sidx, &q);
                continue;
            }
            self.stats.publishes_out += 1;
            wrote = true;
            if q.qos == QoS::AtMostOnce {
                // Restored message whose subscription was downgraded to QoS 0: sent, so done.
                self.persist_done(sidx, &q);
            } else {
                let state = if q.qos == QoS::AtLeastOnce {
                    InflightState::AwaitPubAck
                } else {
                    InflightState::AwaitPubRec
                };
                self.session_mut(sidx).inflight.push_back(Inflight {
                    packet_id,
                    state,
                    q,
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
        let s = self.session(sidx);
        if !s.waiters.is_empty() && s.backlog() <= soft / 2 {
            self.release_waiters(sidx);
        }
    }

    /// Reconnect of a persistent session: resend unacknowledged PUBLISHes with DUP, and PUBRELs.
    pub(super) fn replay_inflight(&mut self, sidx: u32, key: ConnKey) {
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let version = s.protocol;
        let mut packets = Vec::with_capacity(s.inflight.len());
        for f in &s.inflight {
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
