//! SUBSCRIBE / UNSUBSCRIBE: pending SUBACKs waiting for other shards, interest broadcast.

use super::*;

pub(super) struct PendingSubAck {
    pub(super) conn: ConnKey,
    pub(super) session: u32,
    pub(super) remaining: u16,
    pub(super) packet_id: u16,
    pub(super) reasons: Vec<ReasonCode>,
    /// Filters (with options) whose retained messages go out after the SUBACK.
    pub(super) retained: Vec<(ByteString, codec::SubscriptionOptions, Option<u32>)>,
}

impl Shard {
    pub(super) fn on_subscribe(&mut self, key: ConnKey, sidx: u32, sub: Subscribe) -> ReadOutcome {
        if self.pending_subacks.len() >= MAX_PENDING_SUBACKS {
            // Peers answer interest updates within a round or two, so this only fills if they are stuck or one
            // client floods SUBSCRIBEs: bound the table, tell the client to come back later.
            self.stats.subscribes_refused += 1;
            return self.close_with(
                key,
                ReasonCode::ServerBusy,
                "too many SUBSCRIBEs waiting for other shards",
            );
        }
        let v5 = self.session(sidx).protocol == ProtocolVersion::V5;
        let bridge = self.bridge_conns.contains(&key);
        let sub_id = sub
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers.first().copied());
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut new_filters = Vec::new();
        let mut retained = Vec::new();
        let mut shared_new = Vec::new();
        for mut f in sub.filters {
            // Stored in the session: an exact-size copy, not a slice of the read buffer.
            f.filter = ByteString::from(&*f.filter);
            // (No Local on a shared subscription is refused by the decoder [MQTT-3.8.3-4].)
            let shared = parse_shared(&f.filter).ok().flatten().is_some();
            if !self.may_subscribe(sidx, &f.filter) {
                reasons.push(if v5 {
                    self.cfg.subscribe_denied_reason
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let existed = self.session(sidx).find_sub(&f.filter).is_some();
            if !existed && self.session(sidx).subs.len() >= self.cfg.max_subscriptions_per_session {
                reasons.push(if v5 {
                    ReasonCode::QuotaExceeded
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            let mut options = f.options;
            if bridge && !shared {
                // What mosquitto does for a bridge: what it published is not sent back (no loop), and the
                // RETAIN flag passes through so the other side's retained store stays in step.
                options.no_local = true;
                options.retain_as_published = true;
            }
            let entry = Subscriber {
                session: sidx,
                options,
                sub_id,
            };
            if shared {
                if self.shared_subscribe(sidx, &f.filter, options, sub_id) {
                    shared_new.push(f.filter.clone());
                }
            } else {
                let subs = self.subs.get_or_insert_with(&f.filter, Vec::new);
                let was_empty = subs.is_empty();
                match subs.iter_mut().find(|s| s.session == sidx) {
                    Some(s) => *s = entry,
                    None => subs.push(entry),
                }
                if was_empty {
                    new_filters.push(f.filter.clone());
                }
            }
            {
                let s = self.session_mut(sidx);
                let record = Subscription {
                    filter: f.filter.clone(),
                    options,
                    sub_id,
                };
                match s.find_sub(&f.filter) {
                    Some(i) => s.subs[i] = record,
                    None => s.subs.push(record),
                }
            }
            self.persist_sub(sidx, &f.filter, options.to_byte(), sub_id.unwrap_or(0));
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            // Retained messages are not sent on a shared subscription [MQTT-4.8.2].
            let send_retained = !shared
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained.push((f.filter, options, sub_id));
            }
        }
        let pending = PendingSubAck {
            conn: key,
            session: sidx,
            remaining: 0,
            packet_id: sub.packet_id,
            reasons,
            retained,
        };
        let peers = self.cfg.shards.saturating_sub(1);
        if (new_filters.is_empty() && shared_new.is_empty()) || peers == 0 {
            self.finish_suback(pending);
        } else {
            // Answer only once every shard knows of the new filters, so a message published anywhere after the
            // SUBACK reaches this subscriber.
            let token = self.next_token;
            self.next_token += 1;
            let waits = peers * (!new_filters.is_empty() as u16 + !shared_new.is_empty() as u16);
            self.announce_shared(&shared_new, token);
            for peer in
                (0..self.cfg.shards).filter(|&p| p != self.cfg.shard_id && !new_filters.is_empty())
            {
                self.mesh_out.push((
                    peer,
                    MeshMsg::InterestAdd {
                        filters: new_filters.clone(),
                        token,
                    },
                ));
            }
            self.pending_subacks.insert(
                token,
                PendingSubAck {
                    remaining: waits,
                    ..pending
                },
            );
        }
        ReadOutcome::Continue
    }

    pub(super) fn finish_suback(&mut self, p: PendingSubAck) {
        if !self
            .conns
            .get(p.conn)
            .is_some_and(|c| c.session == p.session && !c.closing)
        {
            return;
        }
        if self.session(p.session).persisted {
            // A persistent subscription is acknowledged once it is durable.
            self.hold_output(p.conn, true);
        }
        self.send(
            p.conn,
            &Packet::SubAck(SubAck {
                packet_id: p.packet_id,
                reasons: p.reasons,
                properties: None,
            }),
        );
        for (filter, options, sub_id) in p.retained {
            let mut found = Vec::new();
            self.retained
                .for_each_matched_by(&filter, |m| found.push(m.clone()));
            found.retain(|m| self.retained_alive(m));
            for m in found {
                if !self.may_read(p.session, &m.topic) {
                    continue;
                }
                let q = Queued::new(
                    m.clone(),
                    m.qos.min(options.qos),
                    true,
                    sub_id.into_iter().collect(),
                );
                self.enqueue(p.session, q, None);
            }
        }
        self.pump(p.session);
        self.log_pending_enqueues(p.session);
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        key: ConnKey,
        sidx: u32,
        u: Unsubscribe,
    ) -> ReadOutcome {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut gone = Vec::new();
        for f in &u.filters {
            let existed = match self.session(sidx).find_sub(f) {
                Some(i) => {
                    self.session_mut(sidx).subs.swap_remove(i);
                    self.persist_unsub(sidx, f);
                    true
                }
                None => false,
            };
            if existed && self.remove_subscriber(f, sidx) {
                gone.push(ByteString::from(&**f));
            }
            if existed {
                self.shared_unsubscribe(sidx, &ByteString::from(&**f));
            }
            reasons.push(if existed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.broadcast_interest_removed(gone);
        self.send(
            key,
            &Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons,
                properties: None,
            }),
        );
        ReadOutcome::Continue
    }

    /// Remove one session from a filter's subscriber list; true if the filter has no local subscriber left.
    pub(super) fn remove_subscriber(&mut self, filter: &str, sidx: u32) -> bool {
        if let Some(v) = self.subs.get_mut(filter) {
            v.retain(|s| s.session != sidx);
        }
        self.subs.remove_if(filter, |v| v.is_empty()).is_some()
    }

    pub(super) fn broadcast_interest_removed(&mut self, gone: Vec<ByteString>) {
        if gone.is_empty() {
            return;
        }
        for peer in (0..self.cfg.shards).filter(|&p| p != self.cfg.shard_id) {
            self.mesh_out.push((
                peer,
                MeshMsg::InterestRemove {
                    filters: gone.clone(),
                },
            ));
        }
    }
}
