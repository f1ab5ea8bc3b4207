//! Shared subscriptions (`$share/GROUP/FILTER`, MQTT 5 section 4.8.2; also accepted from 3.1.1 clients): each
//! matching message goes to exactly one member of each group, wherever the members live.
//!
//! Design, for a thread-per-core broker where a session lives on the shard that owns hash(client id), so members
//! of one group sit on different shards:
//! - Every shard keeps, per group, its own members and every other shard's announced `Counts` (members, online
//!   members) in `SharedGroups` (`broker/shared_group.rs`). A shard announces its counts with
//!   `MeshMsg::SharedCount` when a member subscribes, unsubscribes, connects or disconnects. A SUBSCRIBE that adds
//!   a member waits for every shard's `InterestAck` (like plain filters), so a message published anywhere after
//!   the SUBACK can reach it.
//! - The publishing shard picks the member *shard* (weighted round-robin by online members, so every member gets
//!   an even share whatever shard it is on; shards with no online member are skipped) and sends the message there
//!   once (`MeshMsg::SharedPublish`), or handles it itself. No shard knows another shard's sessions, so nothing
//!   per-session crosses the mesh.
//! - The chosen shard picks the member: round-robin over its members, skipping offline ones and those whose queue
//!   is at `max_queued_messages`. If none can take it, it forwards the message to another shard with members
//!   (at most min(`MAX_HOPS`, shards) hops, never straight back to itself); at the last hop, or when no other
//!   shard has a member, it queues it on a local member anyway (the usual overflow policy applies: backpressure to the publisher, or
//!   queued for an offline persistent member). It is dropped (counted in `dropped_shared`) only when the group has
//!   no member left on the shard it reached.
//! - Strategy: round-robin rather than least-inflight: it needs no cross-shard load information (which would be
//!   stale by the time it arrives), and skipping full members already steers messages away from slow ones. So
//!   there is no `shared_strategy` setting.
//! - A member that disconnects gives up its queued messages and its unacknowledged QoS 1/2 PUBLISHes (a QoS 2
//!   message whose PUBREC arrived is delivered and stays): they are dispatched again to the group as if newly
//!   published (round-robin, skipping this member). A group whose only member left keeps them for it.
//! - Retained messages are never sent on a shared subscription [MQTT-4.8.2]; No Local on one is a protocol error
//!   [MQTT-3.8.3-4] (refused by the decoder).
//! - Persistence: the subscription record keeps the `$share/GROUP/FILTER` form; recovery files it here and peers
//!   learn of it through `add_peer_interest` (as one offline member).
//!
//! Guarantees and limits:
//! - The publisher's write-ahead acknowledgement covers the copy: it waits for the shard the weighted pick sent
//!   it to (numbered like any peer copy). A copy the publisher waits for is not forwarded on when that shard's
//!   members are full (a further hop could not be vouched for): it is queued on a local member under the usual
//!   overflow policy (backpressure by default). So with persistence on a QoS 1/2 message makes at most the one
//!   hop of the weighted pick, and skipping full members works within a shard; only messages nobody waits for
//!   (QoS 0, or persistence off) are forwarded to other member shards.
//! - Re-dispatch of a departing member's messages: taken on the same shard, the new entry and the old one's
//!   acknowledgement are in one log group (atomic across a crash). Taken by a peer, the old entry's
//!   acknowledgement is written only once the peer confirmed the copy (`DeferredAck`): a crash in between leaves
//!   it with both members (at worst delivered twice), never lost. A copy a full peer session refuses is not
//!   reported back (no publisher to tell).
//! - Messages restored from the log stay the group's: once a restored entry's body is read, it is marked shared
//!   if only a shared subscription matches it; a member restored offline gives its queue to the online members
//!   as soon as the group has one (`redispatch_restored`, checked every tick while any is left).
//! - Counts from other shards are as old as the last announcement, so a message may reach a shard whose members
//!   just went away (queued for them there, or forwarded when nobody waits for it).

use super::*;
use crate::broker::shared_group::{Counts, Member};

/// Forwards of one message between shards when the chosen shard's members cannot take it.
const MAX_HOPS: u8 = 4;

/// The log acknowledgement of a message a departing member gave up, written once the peer shard that took it
/// confirmed it (handled, and durable if it wrote records): a crash in between leaves the message with both
/// members (delivered twice at worst), never with neither.
pub(super) struct DeferredAck {
    peer: u16,
    seq: u64,
    client_id: ByteString,
    msg_id: u64,
}

/// `$share/GROUP/FILTER` of a group.
pub(super) fn share_name(group: &str, filter: &str) -> ByteString {
    ByteString::from(format!("{}{group}/{filter}", codec::topic::SHARE_PREFIX))
}

impl Shard {
    fn member_can_take(&self, m: &Member) -> bool {
        let soft = self.cfg.max_queued_messages.max(1);
        self.sessions
            .get(m.session as usize)
            .and_then(Option::as_ref)
            .is_some_and(|s| {
                s.backlog() < soft
                    && s.conn
                        .and_then(|k| self.conns.get(k))
                        .is_some_and(|c| !c.closing)
            })
    }

    fn member_online(&self, m: &Member) -> bool {
        self.sessions
            .get(m.session as usize)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.conn.is_some())
    }

    fn shared_local_counts(&self, group: &str, filter: &str) -> Counts {
        match self.shared.get(group, filter) {
            Some(g) => Counts {
                members: g.local.len() as u32,
                online: g.local.iter().filter(|m| self.member_online(m)).count() as u32,
            },
            None => Counts::default(),
        }
    }

    /// Tell every other shard this shard's counts for these groups (`$share/...` names); a non-zero token asks
    /// each for an `InterestAck`.
    pub(super) fn announce_shared(&mut self, names: &[ByteString], token: u64) {
        if self.cfg.shards <= 1 || names.is_empty() {
            return;
        }
        let mut groups = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(Some((group, filter))) = parse_shared(name) {
                groups.push((name.clone(), self.shared_local_counts(group, filter)));
            }
        }
        for peer in (0..self.cfg.shards).filter(|&p| p != self.cfg.shard_id) {
            self.mesh_out.push((
                peer,
                MeshMsg::SharedCount {
                    groups: groups.clone(),
                    token,
                },
            ));
        }
    }

    /// A SUBSCRIBE's `$share/...` filter: join (or update) the group. True if this shard's counts changed.
    pub(super) fn shared_subscribe(
        &mut self,
        sidx: u32,
        name: &str,
        options: codec::SubscriptionOptions,
        sub_id: Option<u32>,
    ) -> bool {
        let Ok(Some((group, filter))) = parse_shared(name) else {
            return false;
        };
        let m = Member {
            session: sidx,
            options,
            sub_id,
        };
        self.shared.add_local(group, filter, m)
    }

    /// Leave the group named by a `$share/...` filter (no-op for a plain filter) and announce it.
    pub(super) fn shared_unsubscribe(&mut self, sidx: u32, name: &ByteString) {
        let Ok(Some((group, filter))) = parse_shared(name) else {
            return;
        };
        if self.shared.remove_local(group, filter, sidx) {
            self.announce_shared(std::slice::from_ref(name), 0);
        }
    }

    /// A session came online or went offline: its groups' online counts changed.
    pub(super) fn shared_presence_changed(&mut self, sidx: u32) {
        let names: Vec<ByteString> = self
            .session(sidx)
            .subs
            .iter()
            .filter(|s| s.filter.starts_with(codec::topic::SHARE_PREFIX))
            .map(|s| s.filter.clone())
            .collect();
        self.announce_shared(&names, 0);
    }

    /// Another shard's counts.
    pub(super) fn on_shared_count(
        &mut self,
        from: u16,
        groups: Vec<(ByteString, Counts)>,
        token: u64,
    ) {
        for (name, counts) in &groups {
            if let Ok(Some((group, filter))) = parse_shared(name) {
                self.shared.set_remote(from, group, filter, *counts);
            }
        }
        if token != 0 {
            self.mesh_out.push((from, MeshMsg::InterestAck { token }));
        }
        self.redispatch_restored();
    }

    /// A routed message: one member of every matching group gets it.
    pub(super) fn route_shared(&mut self, msg: &Rc<Message>) {
        if self.shared.is_empty() {
            return;
        }
        let mut groups = Vec::new();
        self.shared.matching(&msg.topic, &mut groups);
        for (group, filter) in groups {
            self.dispatch_shared(msg, &group, &filter, None);
        }
    }

    /// Pick the member shard for a message of this group and hand it there (or deliver it here).
    fn dispatch_shared(
        &mut self,
        msg: &Rc<Message>,
        group: &str,
        filter: &str,
        skip_session: Option<u32>,
    ) {
        let me = self.cfg.shard_id;
        let online = self.shared_local_counts(group, filter).online;
        let Some(target) = self
            .shared
            .get_mut(group, filter)
            .and_then(|g| g.pick_shard(me, online, None))
        else {
            self.stats.dropped_shared += 1;
            return;
        };
        if target == me {
            self.deliver_shared_here(msg, group, filter, 0, false, skip_session);
        } else {
            let seq = self.shared_seq(target, msg, skip_session.is_some());
            self.mesh_out.push((
                target,
                MeshMsg::SharedPublish {
                    msg: Box::new((**msg).clone()),
                    share: share_name(group, filter),
                    hops: 1,
                    seq,
                },
            ));
        }
    }

    /// A message for a group from another shard.
    pub(super) fn on_shared_publish(
        &mut self,
        from: u16,
        msg: Message,
        share: &str,
        hops: u8,
        seq: u64,
    ) {
        let m = Rc::new(msg);
        let before = (self.stats.persist_errors, self.dur.appends());
        match parse_shared(share) {
            Ok(Some((group, filter))) => {
                self.deliver_shared_here(&m, group, filter, hops, seq != 0, None)
            }
            _ => self.stats.dropped_shared += 1,
        }
        self.peer_msg_done(from, seq, m.origin, before);
    }

    /// This shard was chosen: a local member that can take it, else another member shard, else any local member.
    /// `waited`: the publisher's acknowledgement waits for this shard's confirmation of the message, which could
    /// not vouch for a copy forwarded further: such a message stays here (queued on a local member under the
    /// usual overflow policy, so a full member holds its publisher back instead of losing the message). The
    /// same holds on the publisher's own shard for a message its PUBACK covers: forwarding only there (not from
    /// the peers) would skew the spread towards the shards with more members.
    fn deliver_shared_here(
        &mut self,
        msg: &Rc<Message>,
        group: &str,
        filter: &str,
        hops: u8,
        waited: bool,
        skip_session: Option<u32>,
    ) {
        let me = self.cfg.shard_id;
        // A copy the publisher's acknowledgement covers (numbered for a peer, or written here in the publisher's
        // round) stays on the shard the weighted pick chose.
        let pinned = waited || (hops == 0 && self.peer_seq_wanted(msg));
        let mut groups = std::mem::take(&mut self.shared);
        let picked = groups.get_mut(group, filter).and_then(|g| {
            if let Some(m) =
                g.pick_local(|m| Some(m.session) != skip_session && self.member_can_take(m))
            {
                return Some(Ok(m));
            }
            // With n shards, n hops reach every other member shard once; more would only bounce.
            if !pinned && hops < MAX_HOPS.min(self.cfg.shards.min(u8::MAX as u16) as u8) {
                if let Some(t) = g.pick_shard(me, 0, Some(me)) {
                    return Some(Err(t));
                }
            }
            g.pick_local(|m| Some(m.session) != skip_session)
                .or_else(|| g.pick_local(|_| true))
                .map(Ok)
        });
        self.shared = groups;
        match picked {
            Some(Ok(m)) => {
                let q = Queued {
                    shared: Some(Box::new(share_name(group, filter))),
                    ..Queued::new(
                        msg.clone(),
                        msg.qos.min(m.options.qos),
                        m.options.retain_as_published && msg.retain,
                        m.sub_id.into_iter().collect(),
                    )
                };
                self.enqueue(m.session, q, msg.origin);
                self.pump(m.session);
                self.log_pending_enqueues(m.session);
            }
            Some(Err(t)) => {
                // Only messages nobody waits for get here (see `pinned`), or a re-dispatched one at hop 0: that
                // one is numbered, so the old member's log entry waits for the peer's confirmation.
                let seq = if hops == 0 {
                    self.shared_seq(t, msg, skip_session.is_some())
                } else {
                    0
                };
                self.mesh_out.push((
                    t,
                    MeshMsg::SharedPublish {
                        msg: Box::new((**msg).clone()),
                        share: share_name(group, filter),
                        hops: hops + 1,
                        seq,
                    },
                ));
            }
            None => self.stats.dropped_shared += 1,
        }
    }

    /// A member went offline: its queued messages and unacknowledged PUBLISHes go to the rest of its groups.
    pub(super) fn redispatch_shared(&mut self, sidx: u32) {
        let s = self.session_mut(sidx);
        if !s
            .subs
            .iter()
            .any(|x| x.filter.starts_with(codec::topic::SHARE_PREFIX))
        {
            return;
        }
        let mut moved = Vec::new();
        let queue = std::mem::take(&mut s.queue);
        for mut q in queue {
            // Restored from the log: whether it came through the group is known once its body is read.
            if q.restored && !self.load_body(sidx, &mut q) {
                continue;
            }
            if q.shared.is_some() && q.msg.is_some() {
                moved.push(q);
            } else {
                self.session_mut(sidx).queue.push_back(q);
            }
        }
        let s = self.session_mut(sidx);
        let inflight = std::mem::take(&mut s.inflight);
        for f in inflight {
            // After PUBREC the QoS 2 message is the client's: only the PUBREL is left, it stays.
            if f.q.shared.is_some() && f.q.msg.is_some() && f.state != InflightState::AwaitPubComp {
                moved.push(f.q);
            } else {
                s.inflight.push_back(f);
            }
        }
        self.shared_presence_changed(sidx);
        for q in moved {
            let (Some(name), Some(msg)) = (q.shared.as_deref().cloned(), q.msg.clone()) else {
                self.persist_done(sidx, &q);
                continue;
            };
            let Ok(Some((group, filter))) = parse_shared(&name) else {
                self.persist_done(sidx, &q);
                continue;
            };
            self.stats.shared_redispatched += 1;
            // A fresh message with no publisher: the publisher's acknowledgement is long gone.
            let msg = Rc::new(Message {
                origin: None,
                ..(*msg).clone()
            });
            self.shared_forwarded = None;
            self.dispatch_shared(&msg, group, filter, Some(sidx));
            // Taken here: new entry and acknowledgement are in one log group (atomic). Taken by a peer: the
            // acknowledgement waits for the peer's confirmation.
            match self.shared_forwarded.take() {
                Some((peer, seq)) if !q.log_pending && q.msg_id != 0 => {
                    self.unaccount(sidx, &q);
                    let client_id = self.session(sidx).client_id.clone();
                    self.shared_acks.push(DeferredAck {
                        peer,
                        seq,
                        client_id,
                        msg_id: q.msg_id,
                    });
                }
                _ => self.persist_done(sidx, &q),
            }
        }
    }

    /// The publisher waits for this message to be safe (persistence on, QoS 1/2, a client's publish).
    fn peer_seq_wanted(&self, msg: &Message) -> bool {
        self.store.is_some() && msg.qos != QoS::AtMostOnce && msg.origin.is_some()
    }

    /// Sequence number for a `SharedPublish` to `peer`: the publisher's (`peer_seq`), or for a re-dispatched
    /// message whose old entry is in our log, one of our own (its acknowledgement waits for it). Noted in
    /// `shared_forwarded`.
    fn shared_seq(&mut self, peer: u16, msg: &Message, redispatch: bool) -> u64 {
        let seq = if redispatch && self.store.is_some() && msg.qos != QoS::AtMostOnce {
            self.dur.next_seq(peer)
        } else {
            self.peer_seq(peer, msg)
        };
        if seq != 0 {
            self.shared_forwarded = Some((peer, seq));
        }
        seq
    }

    /// Write the acknowledgements of re-dispatched messages whose peer confirmed them.
    pub(super) fn flush_shared_acks(&mut self) {
        if self.shared_acks.is_empty() {
            return;
        }
        for a in std::mem::take(&mut self.shared_acks) {
            if !self.dur.peer_covers(a.peer, a.seq) {
                self.shared_acks.push(a);
                continue;
            }
            let sidx = self.by_client.get(&self.sessions, &a.client_id).copied();
            if let Some(sidx) = sidx.filter(|&s| self.session(s).persisted) {
                self.persist_ack(sidx, a.msg_id);
            }
        }
    }

    /// Some member of the group is online, here or (as last announced) on another shard.
    fn group_has_online(&self, group: &str, filter: &str) -> bool {
        let me = self.cfg.shard_id as usize;
        self.shared.get(group, filter).is_some_and(|g| {
            g.local.iter().any(|m| self.member_online(m))
                || g.remote
                    .iter()
                    .enumerate()
                    .any(|(i, c)| i != me && c.online > 0)
        })
    }

    /// Members restored from the log that are still offline give their queued group messages to the members that
    /// are online (as a member that disconnects does), once one is: after a restart the group's backlog does not
    /// wait for one particular member to come back. Checked every tick and on peers' counts while any is left.
    pub(super) fn redispatch_restored(&mut self) {
        if self.shared_restored.is_empty() {
            return;
        }
        for sidx in std::mem::take(&mut self.shared_restored) {
            let Some(s) = self.sessions.get(sidx as usize).and_then(Option::as_ref) else {
                continue;
            };
            if s.conn.is_some() || s.queue.is_empty() {
                // Online again: it takes them itself (and gives them up if it leaves).
                continue;
            }
            let others_online = s
                .subs
                .iter()
                .filter_map(|x| parse_shared(&x.filter).ok().flatten())
                .any(|(g, f)| self.group_has_online(g, f));
            if others_online {
                self.redispatch_shared(sidx);
                // Offline, the log holds the bodies of what stayed (as after a disconnect).
                for q in self.session_mut(sidx).queue.iter_mut() {
                    if q.msg_id != 0 {
                        q.msg = None;
                    }
                }
            } else {
                self.shared_restored.push(sidx);
            }
        }
    }

    /// This shard's groups as `$share/...` names, for the other shards at start (see `restore`).
    pub(super) fn shared_names(&self) -> Vec<ByteString> {
        let mut v = Vec::new();
        self.shared.for_each(|filter, g| {
            if !g.local.is_empty() {
                v.push(share_name(&g.name, filter));
            }
        });
        v
    }

    /// A peer restored a group member from its log: count it as one offline member until it announces.
    pub(super) fn add_peer_shared(&mut self, peer: u16, name: &str) {
        if let Ok(Some((group, filter))) = parse_shared(name) {
            self.shared.set_remote(
                peer,
                group,
                filter,
                Counts {
                    members: 1,
                    online: 0,
                },
            );
        }
    }
}
