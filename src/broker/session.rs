//! One client's session: what survives a disconnect when the session is persistent.
//!
//! Pure state: the shard decides when to call these methods and turns their results into packets. Outbound
//! messages wait in `queue` (bounded by the shard's policy) and move to `inflight` when sent with QoS > 0, where
//! they stay until acknowledged; on reconnect, `inflight` is replayed first (PUBLISH with DUP, or PUBREL).

use std::rc::Rc;

use bytestring::ByteString;
use thin_vec::ThinVec;

use crate::broker::lazy_deque::LazyDeque;

use crate::broker::message::{ConnKey, Message, Origin};
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions, Will};

/// A message waiting to be sent to this session.
#[derive(Debug, Clone)]
pub struct Queued {
    /// `None` while the body lives only in the log (offline persistent session, or restored at start); it is
    /// read back when the message is sent, so offline queues do not hold payloads in memory.
    pub msg: Option<Rc<Message>>,
    /// Id of the body in the shard's log; 0 = not persisted (QoS 0, or a session that is not persistent).
    pub msg_id: u64,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// RETAIN flag to send (true for retained-on-subscribe, or v5 retain-as-published).
    pub retain: bool,
    /// Restored from the log: QoS, RETAIN and subscription ids are derived from the body and the session's
    /// subscriptions when it is loaded.
    pub restored: bool,
    /// `msg_id` is set but its `Enqueue` record is not written yet: it is written with the packet id when the
    /// message is sent right away (one record for both facts), or just after the shard tried to send it.
    pub log_pending: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
    /// Log bytes this entry counts against its session's and shard's bounds (0 = not counted: not persisted).
    pub log_bytes: u32,
    /// Shard second its v5 Message Expiry Interval ends (`NO_DEADLINE`: never). Kept while the body lives only in
    /// the log, so an offline queue can be swept of expired messages without reading bodies back.
    pub deadline: u32,
    /// Delivered through this shared subscription (`$share/GROUP/FILTER`): given to another member of the group
    /// if this session goes offline before it is acknowledged.
    /// Boxed: most queued messages are not shared, and every queued reference pays for this field.
    pub shared: Option<Box<ByteString>>,
}

/// `Queued::deadline` of a message that never expires.
pub const NO_DEADLINE: u32 = u32::MAX;

/// Shard second a message's expiry interval ends, counted from when it reached this shard.
pub fn deadline_of(msg: &Message) -> u32 {
    match msg.expiry_interval() {
        Some(iv) => msg.received_at.saturating_add(iv).min(NO_DEADLINE - 1),
        None => NO_DEADLINE,
    }
}

impl Queued {
    pub fn new(msg: Rc<Message>, qos: QoS, retain: bool, sub_ids: Vec<u32>) -> Self {
        Queued {
            deadline: deadline_of(&msg),
            msg: Some(msg),
            msg_id: 0,
            qos,
            retain,
            restored: false,
            log_pending: false,
            sub_ids,
            log_bytes: 0,
            shared: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub state: InflightState,
    pub q: Queued,
    /// Not resent yet on this connection: a reconnect found more in flight than the client's Receive Maximum,
    /// so the rest waits (same packet id) until acknowledgements make room.
    pub deferred: bool,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: ByteString,
    pub options: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: ByteString,
    pub protocol: ProtocolVersion,
    /// Seconds the session outlives its connection: `Some(0)` ends it at disconnect (clean session), `None` never
    /// expires (3.1.1 persistent session, or v5 0xFFFFFFFF).
    pub expiry: Option<u32>,
    pub conn: Option<ConnKey>,
    /// Second (shard clock) the session went offline, for expiry.
    pub offline_since: u32,
    pub subs: ThinVec<Subscription>,
    pub queue: LazyDeque<Queued>,
    pub inflight: LazyDeque<Inflight>,
    /// Effective send window: min(server max in-flight, client's v5 receive maximum).
    pub window: u16,
    /// Some in-flight entry is `deferred`.
    pub has_deferred: bool,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids whose PUBLISH was routed and whose PUBREL has not arrived: a retransmitted
    /// PUBLISH with one of these ids is acknowledged again but not routed again (exactly once).
    pub inbound_qos2: ThinVec<u16>,
    pub will: Option<Box<Will>>,
    /// Publishers paused because this session's queue is over its soft limit; resumed when it drains.
    pub waiters: ThinVec<Origin>,
    /// v5 maximum packet size the client accepts (0 = protocol maximum).
    pub client_max_packet: u32,
    pub dropped: u64,
    /// Log bytes of the QoS 1/2 messages queued and in flight (sum of their `Queued::log_bytes`, saturating; u32
    /// keeps `Session` small, and the per-session bound is below 4 GiB).
    pub log_bytes: u32,
    /// The session is in the shard's log (persistent: it outlives its connection).
    pub persisted: bool,
}

impl Session {
    pub fn new(client_id: ByteString, protocol: ProtocolVersion, expiry: Option<u32>) -> Self {
        Session {
            client_id,
            protocol,
            expiry,
            conn: None,
            offline_since: 0,
            subs: ThinVec::new(),
            queue: LazyDeque::new(),
            inflight: LazyDeque::new(),
            window: 0,
            has_deferred: false,
            next_packet_id: 1,
            inbound_qos2: ThinVec::new(),
            will: None,
            waiters: ThinVec::new(),
            client_max_packet: 0,
            dropped: 0,
            log_bytes: 0,
            persisted: false,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.expiry == Some(0)
    }

    /// Messages held for this session: waiting plus unacknowledged.
    pub fn backlog(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// A packet id not used by any in-flight message. The window is far below 65,535, so this terminates fast.
    pub fn alloc_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    /// After in-flight messages were restored: continue packet ids after the highest one in use.
    pub fn resume_packet_ids(&mut self) {
        if let Some(max) = self.inflight.iter().map(|f| f.packet_id).max() {
            self.next_packet_id = if max == u16::MAX { 1 } else { max + 1 };
        }
    }

    /// Space in the in-flight window.
    pub fn window_open(&self) -> bool {
        self.inflight.len() < self.window.max(1) as usize
    }

    /// In-flight entries the client has on this connection (sent, or resent after the reconnect).
    pub fn inflight_sent(&self) -> usize {
        if self.has_deferred {
            self.inflight.iter().filter(|f| !f.deferred).count()
        } else {
            self.inflight.len()
        }
    }

    fn find_inflight(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|f| f.packet_id == packet_id)
    }

    /// PUBACK from the client: completes a QoS 1 delivery. Returns the completed delivery if the id was known.
    pub fn on_puback(&mut self, packet_id: u16) -> Option<Inflight> {
        match self.find_inflight(packet_id) {
            Some(i) if self.inflight[i].state == InflightState::AwaitPubAck => {
                self.inflight.remove(i)
            }
            _ => None,
        }
    }

    /// PUBREC from the client: the QoS 2 message is now the client's; we answer PUBREL. Returns the stored
    /// message id (0 if not persisted) if the packet id was known.
    pub fn on_pubrec(&mut self, packet_id: u16) -> Option<u64> {
        match self.find_inflight(packet_id) {
            Some(i) if self.inflight[i].state != InflightState::AwaitPubAck => {
                self.inflight[i].state = InflightState::AwaitPubComp;
                Some(self.inflight[i].q.msg_id)
            }
            _ => None,
        }
    }

    /// PUBCOMP from the client: completes a QoS 2 delivery.
    pub fn on_pubcomp(&mut self, packet_id: u16) -> Option<Inflight> {
        match self.find_inflight(packet_id) {
            Some(i) if self.inflight[i].state == InflightState::AwaitPubComp => {
                self.inflight.remove(i)
            }
            _ => None,
        }
    }

    /// Inbound QoS 2 PUBLISH: true if it is new (route it), false if it is a retransmission (do not route).
    pub fn inbound_qos2_first(&mut self, packet_id: u16) -> bool {
        if self.inbound_qos2.contains(&packet_id) {
            false
        } else {
            self.inbound_qos2.push(packet_id);
            true
        }
    }

    /// Inbound PUBREL: forget the id. Returns whether it was pending.
    pub fn inbound_qos2_release(&mut self, packet_id: u16) -> bool {
        match self.inbound_qos2.iter().position(|&p| p == packet_id) {
            Some(i) => {
                self.inbound_qos2.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn find_sub(&self, filter: &str) -> Option<usize> {
        self.subs.iter().position(|s| s.filter == filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn q() -> Queued {
        Queued::new(
            Rc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(b"x"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: None,
                origin: None,
                received_at: 0,
            }),
            QoS::ExactlyOnce,
            false,
            vec![],
        )
    }

    #[test]
    fn qos2_outbound_flow_and_wrong_acks() {
        let mut s = Session::new("c".into(), ProtocolVersion::V3_1_1, Some(0));
        s.window = 2;
        let id = s.alloc_packet_id();
        s.inflight.push_back(Inflight {
            packet_id: id,
            state: InflightState::AwaitPubRec,
            q: q(),
            deferred: false,
        });
        assert!(
            s.on_puback(id).is_none(),
            "PUBACK must not complete a QoS 2 delivery"
        );
        assert!(
            s.on_pubcomp(id).is_none(),
            "PUBCOMP before PUBREC is ignored"
        );
        assert!(s.on_pubrec(id).is_some());
        assert_eq!(s.inflight[0].state, InflightState::AwaitPubComp);
        assert!(s.on_pubcomp(id).is_some());
        assert!(s.inflight.is_empty());
    }

    #[test]
    fn packet_ids_skip_in_use_and_wrap() {
        let mut s = Session::new("c".into(), ProtocolVersion::V5, None);
        s.next_packet_id = u16::MAX;
        s.inflight.push_back(Inflight {
            packet_id: 1,
            state: InflightState::AwaitPubAck,
            q: q(),
            deferred: false,
        });
        assert_eq!(s.alloc_packet_id(), u16::MAX);
        assert_eq!(s.alloc_packet_id(), 2, "0 is never used and 1 is in flight");
    }

    #[test]
    fn inbound_qos2_is_exactly_once() {
        let mut s = Session::new("c".into(), ProtocolVersion::V3_1_1, None);
        assert!(s.inbound_qos2_first(7));
        assert!(
            !s.inbound_qos2_first(7),
            "a retransmitted PUBLISH must not be routed twice"
        );
        assert!(s.inbound_qos2_release(7));
        assert!(!s.inbound_qos2_release(7));
        assert!(
            s.inbound_qos2_first(7),
            "after PUBREL the id is free for a new message"
        );
    }
}
