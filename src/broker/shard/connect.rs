//! CONNECT: validation, client-id generation, establishing or taking over a session, CONNACK errors.

use super::*;

impl Shard {
    pub(super) fn on_connect(
        &mut self,
        key: ConnKey,
        mut connect: Box<Connect>,
        rest: &mut BytesMut,
    ) -> ReadOutcome {
        let v = connect.protocol;
        if connect
            .properties
            .as_ref()
            .is_some_and(|p| p.authentication_method.is_some())
        {
            self.connack_error(key, ReasonCode::BadAuthenticationMethod);
            return ReadOutcome::Close;
        }
        if self.redirect(key, v) {
            return ReadOutcome::Close;
        }
        let mut assigned = false;
        if connect.client_id.is_empty() {
            if !connect.clean_start && v != ProtocolVersion::V5 {
                // 3.1.1 [MQTT-3.1.3-8]: a zero-byte client id requires CleanSession = 1.
                self.connack_error(key, ReasonCode::ClientIdentifierNotValid);
                return ReadOutcome::Close;
            }
            connect.client_id = self.generate_client_id();
            assigned = true;
        }
        if let Some(outcome) = self.authenticate(key, &mut connect, assigned) {
            return outcome;
        }
        self.connect_admitted(key, connect, assigned, rest)
    }

    /// An authenticated CONNECT: hand the connection to the shard that owns its client id, or establish it here.
    pub(super) fn connect_admitted(
        &mut self,
        key: ConnKey,
        connect: Box<Connect>,
        assigned: bool,
        rest: &mut BytesMut,
    ) -> ReadOutcome {
        let owner = owner_shard(&connect.client_id, self.cfg.shards);
        if owner != self.cfg.shard_id {
            let conn = self.conns.remove(key).expect("connection present");
            self.stats.handoffs_out += 1;
            let leftover = rest.split();
            self.mesh_out.push((
                owner,
                MeshMsg::Adopt(Box::new(Adopt {
                    io: conn.io,
                    connect,
                    leftover,
                    assigned_id: assigned,
                    stream: None,
                })),
            ));
            self.auth_forget(key);
            return ReadOutcome::HandedOff;
        }
        self.establish(key, *connect, assigned)
    }

    /// A client id that hashes to this shard, so the connection needs no hand-off.
    pub(super) fn generate_client_id(&mut self) -> ByteString {
        loop {
            self.next_generated_id += 1;
            let id = format!("coremq-{}-{}", self.cfg.shard_id, self.next_generated_id);
            if owner_shard(&id, self.cfg.shards) == self.cfg.shard_id {
                return id.into();
            }
        }
    }

    /// CONNECT on the owning shard: find or create the session, take over an older connection, answer CONNACK.
    pub(super) fn establish(
        &mut self,
        key: ConnKey,
        connect: Connect,
        assigned_id: bool,
    ) -> ReadOutcome {
        let acl = self.session_acl(&connect);
        let bridge = connect.bridge;
        let Connect {
            protocol,
            clean_start,
            keep_alive,
            client_id,
            will,
            properties,
            ..
        } = connect;
        // Everything kept past this packet gets its own exact-size allocation: decoded strings are slices of the
        // shard's shared 64 KiB read buffer, and keeping one would pin that whole buffer per connection.
        let mut client_id = ByteString::from(&*client_id);
        let will = will.map(|w| codec::Will {
            topic: ByteString::from(&*w.topic),
            payload: bytes::Bytes::copy_from_slice(&w.payload),
            properties: w.properties.map(|p| Box::new(owned_properties(&p))),
            ..w
        });
        let props = properties.as_deref();
        let expiry = if protocol == ProtocolVersion::V5 {
            match props.and_then(|p| p.session_expiry_interval).unwrap_or(0) {
                u32::MAX => None,
                n => Some(n),
            }
        } else if clean_start {
            Some(0)
        } else {
            None
        };

        let mut session_present = false;
        if let Some(&sidx) = self.by_client.get(&self.sessions, &client_id) {
            if let Some(old) = self.session(sidx).conn {
                // Closing the old connection may end a clean session, so look the session up again after.
                self.stats.takeovers += 1;
                self.close(old, true, Some(ReasonCode::SessionTakenOver));
            }
        }
        if let Some(&sidx) = self.by_client.get(&self.sessions, &client_id) {
            if clean_start {
                self.destroy_session(sidx);
            } else {
                session_present = true;
            }
        }
        let sidx = match self.by_client.get(&self.sessions, &client_id) {
            Some(&s) => s,
            None => {
                if self.by_client.len() >= self.cfg.max_sessions {
                    self.connack_error(key, ReasonCode::ServerUnavailable);
                    return ReadOutcome::Close;
                }
                // Moved, not cloned: cloning a freshly copied ByteString converts it to a shared buffer with a
                // 24-byte header, per idle connection (measured 403 -> 372 B/conn at 15k).
                let id = std::mem::take(&mut client_id);
                self.new_session(Session::new(id, protocol, expiry))
            }
        };

        let mut keep_alive = keep_alive;
        let mut server_keep_alive = None;
        if protocol == ProtocolVersion::V5
            && self.cfg.max_keepalive > 0
            && (keep_alive == 0 || keep_alive > self.cfg.max_keepalive)
        {
            keep_alive = self.cfg.max_keepalive;
            server_keep_alive = Some(keep_alive);
        }
        let receive_maximum = props.and_then(|p| p.receive_maximum).unwrap_or(u16::MAX);
        let client_max_packet = props.and_then(|p| p.maximum_packet_size).unwrap_or(0);
        let window = self.cfg.max_inflight.min(receive_maximum).max(1);
        self.unschedule_expiry(sidx);
        self.set_session_acl(sidx, acl);
        self.cancel_will(sidx);
        {
            let s = self.session_mut(sidx);
            s.protocol = protocol;
            s.expiry = expiry;
            s.conn = Some(key);
            s.will = will.map(Box::new);
            s.window = window;
            s.client_max_packet = client_max_packet;
        }
        self.shared_presence_changed(sidx);
        if self.store.is_some() {
            if expiry == Some(0) {
                self.unpersist_session(sidx);
            } else {
                self.persist_session(sidx);
            }
        }
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return ReadOutcome::Close;
        };
        conn.session = sidx;
        conn.keep_alive = keep_alive;
        conn.reason_strings = protocol == ProtocolVersion::V5
            && props.and_then(|p| p.request_problem_information) != Some(0);
        conn.last_seen = now;
        if bridge {
            self.bridge_conns.insert(key);
        }
        // The CONNECT-timeout entry filed at accept (due by `now + connect_timeout_secs`) re-files itself at the
        // keep-alive deadline when it fires: a second entry is needed only for a deadline earlier than that.
        let deadline = now + (keep_alive as u32 * 3).div_ceil(2);
        if keep_alive > 0 && deadline < now + self.cfg.connect_timeout_secs {
            self.wheel.insert(key, deadline, now);
        }

        if protocol == ProtocolVersion::V5 {
            self.setup_aliases(key, props.and_then(|p| p.topic_alias_maximum).unwrap_or(0));
        }
        let wants_response_info = props.and_then(|p| p.request_response_information) == Some(1);
        let response_information = (wants_response_info
            && !self.cfg.response_information.is_empty())
        .then(|| ByteString::from(self.cfg.response_information.as_str()));
        let properties = (protocol == ProtocolVersion::V5).then(|| {
            Box::new(Properties {
                receive_maximum: Some(self.cfg.max_inbound_qos2),
                maximum_packet_size: Some(self.cfg.max_packet_size),
                shared_subscription_available: Some(1),
                topic_alias_maximum: (self.cfg.topic_alias_maximum > 0)
                    .then_some(self.cfg.topic_alias_maximum),
                response_information,
                server_keep_alive,
                assigned_client_identifier: assigned_id
                    .then(|| self.session(sidx).client_id.clone()),
                ..Properties::default()
            })
        });
        self.send(
            key,
            &Packet::ConnAck(ConnAck {
                session_present,
                reason: ReasonCode::Success,
                properties,
            }),
        );

        if session_present {
            self.replay_inflight(sidx, key);
        }
        self.pump(sidx);
        ReadOutcome::Continue
    }

    pub(super) fn connack_error(&mut self, key: ConnKey, reason: ReasonCode) {
        let version = self
            .conns
            .get(key)
            .and_then(|c| c.decoder.version())
            .unwrap_or(ProtocolVersion::V3_1_1);
        self.send_raw(
            key,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties: None,
            }),
            version,
        );
        self.close(key, false, None);
    }
}
