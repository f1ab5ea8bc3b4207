//! One MQTT client connection of a bridge, sans-io: the runtime hands it bytes and the clock (milliseconds) and
//! writes what it puts in `out`. It sends CONNECT, then SUBSCRIBE once CONNACK arrives, tracks the packet ids of
//! its own QoS 1 PUBLISHes until PUBACK, answers and sends keep-alive pings, and reports what happened as
//! `LinkEvent`s. Reconnect timing belongs to the caller (`Bridge`).

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::codec::{
    self, Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, SubscribeFilter, SubscriptionOptions,
};

/// A peer that accepts the TCP connection but never answers CONNECT is given up on after this.
const CONNACK_TIMEOUT_MS: u64 = 10_000;

/// Who the link is and what it subscribes to.
#[derive(Debug, Clone)]
pub struct LinkParams {
    pub version: ProtocolVersion,
    /// 3.1.1 / 3.1: send the protocol level as 0x80 | level (mosquitto's `try_private`).
    pub bridge_flag: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub clean_start: bool,
    /// Seconds; 0 = no keep-alive.
    pub keep_alive: u16,
    /// Unacknowledged QoS 1 PUBLISHes the peer may send us (v5 Receive Maximum), and our own send window cap.
    pub receive_maximum: u16,
    /// (filter, QoS), subscribed with No Local and Retain As Published on v5.
    pub subscriptions: Vec<(String, QoS)>,
    pub max_packet_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No connection (the runtime decides when to open one).
    Down,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    /// CONNACK accepted; SUBSCRIBE (if any) sent.
    Up,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Up {
        session_present: bool,
    },
    /// SUBACK for our subscriptions: every filter granted, or not.
    Subscribed {
        all_granted: bool,
    },
    /// A PUBLISH from the peer; a QoS 1 one is acknowledged only when the caller calls `ack`.
    Message(Publish),
    /// The peer acknowledged our QoS 1 PUBLISH with this packet id.
    Acked(u16),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("connection refused by the peer: {0:?}")]
    Refused(ReasonCode),
    #[error("bad packet from the peer: {0}")]
    Decode(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("no PINGRESP within the keep-alive")]
    KeepAliveTimeout,
    #[error("the peer sent DISCONNECT ({0:?})")]
    Disconnected(ReasonCode),
}

#[derive(Debug)]
pub struct Link {
    pub params: LinkParams,
    state: LinkState,
    decoder: Decoder,
    /// Encoded packets for the runtime to write (it drains this).
    pub out: BytesMut,
    next_pid: u16,
    /// Packet ids of our QoS 1 PUBLISHes not yet acknowledged.
    inflight: Vec<u16>,
    /// Send window: min(our cap, the peer's v5 Receive Maximum).
    window: u16,
    keep_alive_ms: u64,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
    sub_pid: Option<u16>,
}

impl Link {
    pub fn new(params: LinkParams) -> Link {
        Link {
            decoder: Decoder::new_client(params.version, params.max_packet_size),
            state: LinkState::Down,
            out: BytesMut::new(),
            next_pid: 0,
            inflight: Vec::new(),
            window: params.receive_maximum.max(1),
            keep_alive_ms: params.keep_alive as u64 * 1000,
            last_sent_ms: 0,
            ping_sent_ms: None,
            sub_pid: None,
            params,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    /// Room for another QoS 1 PUBLISH.
    pub fn has_window(&self) -> bool {
        self.inflight.len() < self.window as usize
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    fn send(&mut self, p: &Packet, now_ms: u64) {
        // Our own packets are well-formed; an encode error can only be a too-large PUBLISH, which the caller
        // checked against max_packet_size before.
        if let Err(e) = codec::encode(p, self.params.version, &mut self.out) {
            tracing::warn!("bridge link: cannot encode {:?}: {e}", p.packet_type());
        }
        self.last_sent_ms = now_ms;
    }

    /// The TCP (or TLS) connection is open: send CONNECT.
    pub fn on_connected(&mut self, now_ms: u64) {
        let p = &self.params;
        let v5 = p.version.is_v5();
        let properties = v5.then(|| {
            Box::new(Properties {
                // A persistent session never expires on its own; a clean one ends with the connection.
                session_expiry_interval: Some(if p.clean_start { 0 } else { u32::MAX }),
                receive_maximum: Some(p.receive_maximum.max(1)),
                maximum_packet_size: Some(p.max_packet_size),
                ..Properties::default()
            })
        });
        let connect = Connect {
            protocol: p.version,
            bridge: p.bridge_flag && !v5,
            clean_start: p.clean_start,
            keep_alive: p.keep_alive,
            client_id: ByteString::from(p.client_id.as_str()),
            will: None,
            username: p.username.as_deref().map(ByteString::from),
            password: p
                .password
                .as_deref()
                .map(|s| Bytes::copy_from_slice(s.as_bytes())),
            properties,
        };
        self.decoder = Decoder::new_client(self.params.version, self.params.max_packet_size);
        self.out.clear();
        self.inflight.clear();
        self.window = self.params.receive_maximum.max(1);
        self.keep_alive_ms = self.params.keep_alive as u64 * 1000;
        self.ping_sent_ms = None;
        self.sub_pid = None;
        self.state = LinkState::Connecting;
        self.send(&Packet::Connect(Box::new(connect)), now_ms);
    }

    /// The connection closed (or the runtime closed it after an error). Unacknowledged PUBLISHes are the
    /// caller's to resend; their ids are forgotten.
    pub fn on_closed(&mut self) {
        self.state = LinkState::Down;
        self.out.clear();
        self.inflight.clear();
        self.sub_pid = None;
        self.ping_sent_ms = None;
    }

    /// Queue a DISCONNECT (the runtime writes it and then closes).
    pub fn disconnect(&mut self, now_ms: u64) {
        if self.state != LinkState::Down {
            self.send(
                &Packet::Disconnect(Disconnect {
                    reason: ReasonCode::Success,
                    properties: None,
                }),
                now_ms,
            );
        }
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains(&self.next_pid) && Some(self.next_pid) != self.sub_pid {
                return self.next_pid;
            }
        }
    }

    /// Send a PUBLISH; returns its packet id for QoS 1 (0 for QoS 0). The caller checks `is_up` and, for QoS 1,
    /// `has_window`. QoS 2 is sent as QoS 1 (the topic rules refuse QoS 2, so only a peer's QoS 2 gets here).
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        now_ms: u64,
    ) -> u16 {
        let qos = qos.min(QoS::AtLeastOnce);
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            let pid = self.alloc_pid();
            self.inflight.push(pid);
            pid
        };
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: ByteString::from(topic),
            packet_id,
            properties: None,
            payload: payload.clone(),
        };
        self.send(&Packet::Publish(p), now_ms);
        packet_id
    }

    /// Acknowledge the peer's QoS 1 PUBLISH `packet_id` (after the other side took it).
    pub fn ack(&mut self, packet_id: u16, now_ms: u64) {
        if self.state == LinkState::Up {
            self.send(
                &Packet::PubAck(PubResp {
                    packet_id,
                    reason: ReasonCode::Success,
                    properties: None,
                }),
                now_ms,
            );
        }
    }

    /// Bytes from the peer: decoded packets become events; anything the peer may not send is an error (the
    /// runtime then closes the connection).
    pub fn on_bytes(
        &mut self,
        buf: &mut BytesMut,
        now_ms: u64,
        events: &mut Vec<LinkEvent>,
    ) -> Result<(), LinkError> {
        while let Some(p) = self
            .decoder
            .decode(buf)
            .map_err(|e| LinkError::Decode(e.to_string()))?
        {
            self.on_packet(p, now_ms, events)?;
        }
        Ok(())
    }

    fn on_packet(
        &mut self,
        p: Packet,
        now_ms: u64,
        events: &mut Vec<LinkEvent>,
    ) -> Result<(), LinkError> {
        // Any packet from the peer shows the connection is alive.
        self.ping_sent_ms = None;
        match (self.state, p) {
            (LinkState::Connecting, Packet::ConnAck(a)) => {
                if a.reason.is_error() {
                    return Err(LinkError::Refused(a.reason));
                }
                if let Some(props) = a.properties.as_deref() {
                    if let Some(rm) = props.receive_maximum {
                        self.window = self.window.min(rm.max(1));
                    }
                    if let Some(ka) = props.server_keep_alive {
                        self.keep_alive_ms = ka as u64 * 1000;
                    }
                }
                self.state = LinkState::Up;
                events.push(LinkEvent::Up {
                    session_present: a.session_present,
                });
                self.subscribe(now_ms);
            }
            (LinkState::Connecting, _) => return Err(LinkError::Protocol("packet before CONNACK")),
            (LinkState::Up, Packet::Publish(p)) => {
                if p.qos == QoS::ExactlyOnce {
                    return Err(LinkError::Protocol(
                        "QoS 2 PUBLISH on a bridge (subscriptions are at most QoS 1)",
                    ));
                }
                events.push(LinkEvent::Message(p));
            }
            (LinkState::Up, Packet::PubAck(a)) => {
                if let Some(i) = self.inflight.iter().position(|&x| x == a.packet_id) {
                    self.inflight.swap_remove(i);
                    // A v5 error reason code still ends the flow: the peer will not take the message, and
                    // resending it would be refused again.
                    if a.reason.is_error() {
                        tracing::warn!(
                            client_id = %self.params.client_id,
                            "bridge: peer refused a message: {:?}",
                            a.reason
                        );
                    }
                    events.push(LinkEvent::Acked(a.packet_id));
                }
            }
            (LinkState::Up, Packet::SubAck(a)) => {
                if self.sub_pid == Some(a.packet_id) {
                    self.sub_pid = None;
                    events.push(LinkEvent::Subscribed {
                        all_granted: a.reasons.iter().all(|r| !r.is_error()),
                    });
                }
            }
            (LinkState::Up, Packet::PingResp) => {}
            (LinkState::Up, Packet::PingReq) => self.send(&Packet::PingResp, now_ms),
            (LinkState::Up, Packet::Disconnect(d)) => {
                return Err(LinkError::Disconnected(d.reason))
            }
            (LinkState::Up, Packet::UnsubAck(_)) => {}
            (LinkState::Up, _) => return Err(LinkError::Protocol("unexpected packet")),
            (LinkState::Down, _) => {}
        }
        Ok(())
    }

    fn subscribe(&mut self, now_ms: u64) {
        if self.params.subscriptions.is_empty() {
            return;
        }
        let v5 = self.params.version.is_v5();
        let filters = self
            .params
            .subscriptions
            .iter()
            .map(|(f, q)| SubscribeFilter {
                filter: ByteString::from(f.as_str()),
                options: SubscriptionOptions {
                    qos: *q,
                    // 3.1.1 has neither: there the bridge flag asks the peer for the same.
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            })
            .collect();
        let packet_id = self.alloc_pid();
        self.sub_pid = Some(packet_id);
        self.send(
            &Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: None,
            }),
            now_ms,
        );
    }

    /// Keep-alive: a PINGREQ after `keep_alive` seconds without sending; an error when no packet came back
    /// within half a keep-alive more.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), LinkError> {
        if self.state == LinkState::Connecting && now_ms >= self.last_sent_ms + CONNACK_TIMEOUT_MS {
            return Err(LinkError::Protocol("no CONNACK within 10 s"));
        }
        if self.state != LinkState::Up || self.keep_alive_ms == 0 {
            return Ok(());
        }
        if let Some(sent) = self.ping_sent_ms {
            if now_ms >= sent + self.keep_alive_ms / 2 + 1000 {
                return Err(LinkError::KeepAliveTimeout);
            }
        } else if now_ms >= self.last_sent_ms + self.keep_alive_ms {
            self.send(&Packet::PingReq, now_ms);
            self.ping_sent_ms = Some(now_ms);
        }
        Ok(())
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.state == LinkState::Connecting {
            return Some(self.last_sent_ms + CONNACK_TIMEOUT_MS);
        }
        if self.state != LinkState::Up || self.keep_alive_ms == 0 {
            return None;
        }
        Some(match self.ping_sent_ms {
            Some(sent) => sent + self.keep_alive_ms / 2 + 1000,
            None => self.last_sent_ms + self.keep_alive_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: ProtocolVersion) -> LinkParams {
        LinkParams {
            version: v,
            bridge_flag: true,
            client_id: "b".into(),
            username: None,
            password: None,
            clean_start: false,
            keep_alive: 10,
            receive_maximum: 2,
            subscriptions: vec![("in/#".into(), QoS::AtLeastOnce)],
            max_packet_size: 1 << 20,
        }
    }

    /// What the link wrote, decoded as a server would.
    /// `d` is the server's decoder for this link (it learns the version from CONNECT).
    fn sent(link: &mut Link, d: &mut Decoder) -> Vec<Packet> {
        let mut out = std::mem::take(&mut link.out);
        std::iter::from_fn(|| d.decode(&mut out).unwrap()).collect()
    }

    fn feed(link: &mut Link, p: Packet, now: u64) -> Result<Vec<LinkEvent>, LinkError> {
        let mut b = BytesMut::new();
        codec::encode(&p, link.params.version, &mut b).unwrap();
        let mut ev = Vec::new();
        link.on_bytes(&mut b, now, &mut ev).map(|()| ev)
    }

    fn connack(reason: ReasonCode, present: bool) -> Packet {
        Packet::ConnAck(codec::ConnAck {
            session_present: present,
            reason,
            properties: None,
        })
    }

    #[test]
    fn connects_with_the_bridge_flag_then_subscribes_and_tracks_acks() {
        let mut l = Link::new(params(ProtocolVersion::V3_1_1));
        let mut d = Decoder::new_server(1 << 20);
        l.on_connected(0);
        match &sent(&mut l, &mut d)[..] {
            [Packet::Connect(c)] => {
                assert!(c.bridge && !c.clean_start);
                assert_eq!(&*c.client_id, "b");
            }
            other => panic!("{other:?}"),
        }
        let ev = feed(&mut l, connack(ReasonCode::Success, true), 1).unwrap();
        assert_eq!(
            ev,
            vec![LinkEvent::Up {
                session_present: true
            }]
        );
        let sub_pid = match &sent(&mut l, &mut d)[..] {
            [Packet::Subscribe(s)] => {
                assert_eq!(&*s.filters[0].filter, "in/#");
                s.packet_id
            }
            other => panic!("{other:?}"),
        };
        let p1 = l.publish("t", &Bytes::from_static(b"x"), QoS::AtLeastOnce, false, 2);
        let p2 = l.publish("t", &Bytes::from_static(b"y"), QoS::AtLeastOnce, false, 2);
        assert!(p1 != p2 && p1 != sub_pid && p2 != sub_pid);
        assert!(!l.has_window(), "window of 2 is full");
        let ack = Packet::PubAck(PubResp {
            packet_id: p1,
            reason: ReasonCode::Success,
            properties: None,
        });
        assert_eq!(feed(&mut l, ack, 3).unwrap(), vec![LinkEvent::Acked(p1)]);
        assert!(l.has_window());
    }

    #[test]
    fn v5_subscribes_with_no_local_and_takes_the_peers_receive_maximum() {
        let mut l = Link::new(LinkParams {
            receive_maximum: 100,
            ..params(ProtocolVersion::V5)
        });
        let mut d = Decoder::new_server(1 << 20);
        l.on_connected(0);
        match &sent(&mut l, &mut d)[..] {
            [Packet::Connect(c)] => {
                assert!(!c.bridge, "v5 has no bridge flag");
                let p = c.properties.as_deref().unwrap();
                assert_eq!(p.session_expiry_interval, Some(u32::MAX));
            }
            other => panic!("{other:?}"),
        }
        let ca = Packet::ConnAck(codec::ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: Some(Box::new(Properties {
                receive_maximum: Some(1),
                ..Properties::default()
            })),
        });
        feed(&mut l, ca, 1).unwrap();
        match &sent(&mut l, &mut d)[..] {
            [Packet::Subscribe(s)] => {
                assert!(s.filters[0].options.no_local);
                assert!(s.filters[0].options.retain_as_published);
            }
            other => panic!("{other:?}"),
        }
        l.publish("t", &Bytes::new(), QoS::AtLeastOnce, false, 1);
        assert!(!l.has_window(), "peer's receive maximum 1");
    }

    #[test]
    fn a_refused_connect_and_a_silent_peer_are_errors() {
        let mut l = Link::new(params(ProtocolVersion::V3_1_1));
        l.on_connected(0);
        assert_eq!(
            feed(&mut l, connack(ReasonCode::NotAuthorized, false), 1),
            Err(LinkError::Refused(ReasonCode::NotAuthorized))
        );
        let mut l = Link::new(params(ProtocolVersion::V3_1_1));
        let mut d = Decoder::new_server(1 << 20);
        l.on_connected(0);
        feed(&mut l, connack(ReasonCode::Success, false), 0).unwrap();
        sent(&mut l, &mut d);
        l.tick(9_000).unwrap();
        assert!(sent(&mut l, &mut d).is_empty(), "not idle long enough");
        l.tick(10_000).unwrap();
        assert_eq!(sent(&mut l, &mut d), vec![Packet::PingReq]);
        assert_eq!(l.next_deadline(), Some(16_000));
        l.tick(15_000).unwrap();
        assert_eq!(l.tick(16_000), Err(LinkError::KeepAliveTimeout));
    }

    #[test]
    fn packets_before_connack_are_a_protocol_error() {
        let mut l = Link::new(params(ProtocolVersion::V3_1_1));
        l.on_connected(0);
        assert!(matches!(
            feed(&mut l, Packet::PingResp, 1),
            Err(LinkError::Protocol(_))
        ));
    }
}
