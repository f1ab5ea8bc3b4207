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
//!   no member left on the shard it reached and nobody waits for it; a numbered copy is refused instead (below).
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
//! - Re-dispatch of a departing member's messages (its queue, and its QoS 1 in flight; a QoS 2 PUBLISH already
//!   sent stays with that member, as the spec requires): taken on the same shard, the new entry and the old one's
//!   acknowledgement are in one log group (atomic across a crash). Taken by a peer, the old entry's
//!   acknowledgement is written only once the peer confirmed the copy (`DeferredAck`): a crash in between leaves
//!   it with both members (at worst delivered twice), never lost. A departing member's message goes only to an
//!   online member with room below its hard bound (here or on the peer): if there is none, or the chosen queue
//!   does not take it, the peer answers `SharedRefused` (before its confirmation) and the message goes back to
//!   the member that left, as it was: its log entry was never acknowledged, it survives a restart, and it is
//!   tried again every tick while another member is online (`shared_kept` counts each time). A session that is
//!   gone meanwhile (clean, expired) hands it to a member here, or it is dropped, counted and logged.
//! - A publisher's numbered copy that reaches a shard whose members all left is refused to the publisher
//!   (`LogRefused`: v5 PUBACK/PUBREC 0x97, 3.1.1 closed unacknowledged), as a full persistent session refuses a
//!   plain copy; a full session there follows `persistent_queue_full` like any copy.
//! - With persistence off nothing is numbered: a re-dispatched copy a peer cannot take is dropped there
//!   (counted), as everything in memory is lost on a crash anyway.
//! - Messages restored from the log stay the group's: once a restored entry's body is read, it is marked shared
//!   if only a shared subscription matches it; a member restored offline gives its queue to the online members
//!   as soon as the group has one (`redispatch_restored`, checked every tick while any is left).
//! - Counts from other shards are as old as the last announcement, so a message may reach a shard whose members
//!   just went away (queued for them there, or forwarded when nobody waits for it).

use super::*;
use crate::broker::shared_group::{Counts, Member};

/// Bodies `redispatch_restored` reads back from the log per call, for offline members' queues.
pub(super) const REDISPATCH_PER_TICK: usize = 4096;

/// Forwards of one message between shards when the chosen shard's members cannot take it.
const MAX_HOPS: u8 = 4;

/// A message a departing member gave up, sent to the peer shard that was picked for it: its log entry is
/// acknowledged once that peer confirmed the copy (handled, and durable if it wrote records), so a crash in
/// between leaves the message with both members (delivered twice at worst), never with neither. If the peer
/// could not take it (`MeshMsg::SharedRefused`), the entry goes back to the member that left.
pub(super) struct DeferredAck {
    peer: u16,
    seq: u64,
    /// The member that gave it up, while its session lives (`forget_handovers` clears it when destroyed).
    session: Option<u32>,
    q: Queued,
    /// Packet id and state if it was in flight.
    sent: Option<(u16, InflightState)>,
    /// `q` is in the member's log, unacknowledged (its log bytes were unaccounted when it was sent).
    in_log: bool,
}

/// Where a message for a group went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placed {
    /// Queued on a member of this shard.
    Here,
    /// Handed to another member shard, numbered `seq` (0: nobody waits for its confirmation).
    Sent { peer: u16, seq: u64 },
    /// The member picked here did not queue it (refused or dropped under the queue-full policies, counted there).
    Declined,
    /// No member here could take it: none left or, for a message that can go back to the member that gave it up
    /// (`returnable`), none online with room.
    NoMember,
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

    /// Online with room for `msg`: below the hard bound of its queue and, if it would go to the log, within the
    /// log-byte bounds (what `enqueue` takes without refusing or dropping it).
    fn member_has_room(&self, m: &Member, msg: &Message) -> bool {
        let hard = self.cfg.max_queued_messages.max(1) + self.cfg.max_in_transit;
        let Some(s) = self
            .sessions
            .get(m.session as usize)
            .and_then(Option::as_ref)
        else {
            return false;
        };
        let online = s
            .conn
            .and_then(|k| self.conns.get(k))
            .is_some_and(|c| !c.closing);
        if !online || s.backlog() >= hard {
            return false;
        }
        let in_log =
            self.store.is_some() && s.persisted && msg.qos.min(m.options.qos) != QoS::AtMostOnce;
        if !in_log {
            return true;
        }
        let size = super::delivery::message_log_bytes(msg) as u64;
        let shard_max = self.cfg.max_offline_bytes_per_shard;
        s.log_bytes as u64 + size <= self.cfg.max_offline_bytes_per_session
            && (shard_max == 0 || self.stats.queued_log_bytes + size <= shard_max)
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
    ) -> Placed {
        let me = self.cfg.shard_id;
        let online = self.shared_local_counts(group, filter).online;
        let Some(target) = self
            .shared
            .get_mut(group, filter)
            .and_then(|g| g.pick_shard(me, online, None))
        else {
            self.stats.dropped_shared += 1;
            return Placed::NoMember;
        };
        if target == me {
            return self.deliver_shared_here(msg, group, filter, 0, false, skip_session);
        }
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
        Placed::Sent { peer: target, seq }
    }

    /// A message for a group from another shard. A numbered copy this shard cannot take is never confirmed as
    /// taken: a re-dispatched one (no publisher) goes back to its shard (`SharedRefused`), which keeps it; a
    /// publisher's copy with no member left here is refused to its publisher (`LogRefused`: v5 0x97, as a full
    /// session refuses a plain copy). Both are sent before this round's confirmation (channels are FIFO).
    pub(super) fn on_shared_publish(
        &mut self,
        from: u16,
        msg: Message,
        share: &str,
        hops: u8,
        seq: u64,
    ) {
        let m = Rc::new(msg);
        let before = (self.refusals(), self.dur.appends());
        let placed = match parse_shared(share) {
            Ok(Some((group, filter))) => {
                self.deliver_shared_here(&m, group, filter, hops, seq != 0, None)
            }
            _ => {
                self.stats.dropped_shared += 1;
                Placed::NoMember
            }
        };
        if seq != 0 {
            match (placed, m.origin) {
                (Placed::Declined | Placed::NoMember, None) => {
                    self.mesh_out.push((from, MeshMsg::SharedRefused { seq }))
                }
                // A full session's refusal or drop follows `persistent_queue_full` (see `peer_msg_done`).
                (Placed::NoMember, Some(o)) => self.mesh_out.push((
                    from,
                    MeshMsg::LogRefused {
                        conn: o.conn,
                        packet_id: o.packet_id,
                    },
                )),
                _ => {}
            }
        }
        self.peer_msg_done(from, seq, m.origin, before);
    }

    /// This shard was chosen: a local member that can take it, else another member shard, else any local member.
    /// `waited`: the publisher's acknowledgement waits for this shard's confirmation of the message, which could
    /// not vouch for a copy forwarded further: such a message stays here (queued on a local member under the
    /// usual overflow policy, so a full member holds its publisher back instead of losing the message). The
    /// same holds on the publisher's own shard for a message its PUBACK covers: forwarding only there (not from
    /// the peers) would skew the spread towards the shards with more members.
    /// A message a departing member gave up (`returnable`: re-dispatched here, or numbered by the shard it came
    /// from) goes only to an online member with room for it (`member_has_room`): otherwise it stays with the member
    /// that left (`NoMember`), rather than being dropped by a full queue or held by an offline member.
    fn deliver_shared_here(
        &mut self,
        msg: &Rc<Message>,
        group: &str,
        filter: &str,
        hops: u8,
        waited: bool,
        skip_session: Option<u32>,
    ) -> Placed {
        let me = self.cfg.shard_id;
        // A copy the publisher's acknowledgement covers (numbered for a peer, or written here in the publisher's
        // round) stays on the shard the weighted pick chose.
        let pinned = waited || (hops == 0 && self.peer_seq_wanted(msg));
        let returnable = msg.origin.is_none() && (waited || skip_session.is_some());
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
            if returnable {
                return g
                    .pick_local(|m| Some(m.session) != skip_session && self.member_has_room(m, msg))
                    .map(Ok);
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
                let queued = self.enqueue(m.session, q, msg.origin);
                self.pump(m.session);
                self.log_pending_enqueues(m.session);
                if queued {
                    Placed::Here
                } else {
                    Placed::Declined
                }
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
                Placed::Sent { peer: t, seq }
            }
            None => {
                if !returnable {
                    self.stats.dropped_shared += 1;
                }
                Placed::NoMember
            }
        }
    }

    /// A member went offline: its queued messages and unacknowledged PUBLISHes go to the rest of its groups.
    /// What no other member can take now stays with it (in its queue and its log), counted in `shared_kept`,
    /// and is tried again every tick while another member is online (`redispatch_restored`).
    pub(super) fn redispatch_shared(&mut self, sidx: u32) {
        self.redispatch_shared_within(sidx, usize::MAX);
    }

    /// `redispatch_shared` reading at most `budget` bodies back from the log (an offline queue may hold a
    /// million): entries past it that need one stay as they are, in order, for a later call. Returns the bodies
    /// read and whether any entry was left for later; an offline member keeps only references to what stays
    /// (the log has the bodies). A body read once tells whether the entry is the group's, so it is not read
    /// again unless the entry is the group's and was kept.
    fn redispatch_shared_within(&mut self, sidx: u32, budget: usize) -> (usize, bool) {
        let s = self.session_mut(sidx);
        if !s
            .subs
            .iter()
            .any(|x| x.filter.starts_with(codec::topic::SHARE_PREFIX))
        {
            return (0, false);
        }
        let offline = s.conn.is_none();
        let mut moved = Vec::new();
        let (mut reads, mut left) = (0, false);
        let queue = std::mem::take(&mut s.queue);
        for mut q in queue {
            // Restored from the log, or given back while offline: the body is read back (and, if restored,
            // whether it came through the group is known once it is).
            if q.msg.is_none() && (q.restored || q.shared.is_some()) {
                if reads == budget {
                    left = true;
                    self.session_mut(sidx).queue.push_back(q);
                    continue;
                }
                reads += 1;
                if !self.load_body(sidx, &mut q) {
                    continue;
                }
            }
            if q.shared.is_some() && q.msg.is_some() {
                moved.push((q, None));
            } else {
                if offline && q.msg_id != 0 {
                    q.msg = None;
                }
                self.session_mut(sidx).queue.push_back(q);
            }
        }
        let s = self.session_mut(sidx);
        let inflight = std::mem::take(&mut s.inflight);
        for f in inflight {
            // Only QoS 1 in flight moves. A QoS 2 PUBLISH that was sent is the member's until its exchange
            // completes: the member may already hold it, so it is finished with that member when it reconnects
            // and never sent to another, even if the session ends first [MQTT-4.8.2-4], [MQTT-4.8.2-5].
            if f.q.shared.is_some() && f.q.msg.is_some() && f.state == InflightState::AwaitPubAck {
                moved.push((f.q, Some((f.packet_id, f.state))));
            } else {
                s.inflight.push_back(f);
            }
        }
        self.shared_presence_changed(sidx);
        let mut kept = false;
        for (q, sent) in moved {
            let (Some(name), Some(msg)) = (q.shared.as_deref().cloned(), q.msg.clone()) else {
                self.persist_done(sidx, &q);
                continue;
            };
            let Ok(Some((group, filter))) = parse_shared(&name) else {
                self.persist_done(sidx, &q);
                continue;
            };
            // A fresh message with no publisher: the publisher's acknowledgement is long gone.
            let msg = Rc::new(Message {
                origin: None,
                ..(*msg).clone()
            });
            match self.dispatch_shared(&msg, group, filter, Some(sidx)) {
                // Taken here: new entry and acknowledgement are in one log group (atomic).
                Placed::Here => {
                    self.stats.shared_redispatched += 1;
                    self.persist_done(sidx, &q);
                }
                // Taken by a peer: the acknowledgement waits for the peer's confirmation.
                Placed::Sent { peer, seq } if seq != 0 => {
                    self.stats.shared_redispatched += 1;
                    let in_log = !q.log_pending && q.msg_id != 0;
                    if in_log {
                        self.unaccount(sidx, &q);
                    } else {
                        self.persist_done(sidx, &q);
                    }
                    self.shared_acks.push(DeferredAck {
                        peer,
                        seq,
                        session: Some(sidx),
                        q,
                        sent,
                        in_log,
                    });
                }
                Placed::Sent { .. } => {
                    self.stats.shared_redispatched += 1;
                    self.persist_done(sidx, &q);
                }
                // A clean session ends now: nobody is left to keep it for.
                Placed::Declined | Placed::NoMember if self.session(sidx).is_clean() => {
                    self.stats.dropped_shared += 1;
                    self.persist_done(sidx, &q);
                }
                Placed::Declined | Placed::NoMember => {
                    self.stats.shared_kept += 1;
                    self.give_back(sidx, q, sent);
                    kept = true;
                }
            }
        }
        if kept {
            self.retry_later(sidx);
        }
        (reads, left)
    }

    /// An entry the group could not place goes back to the member that gave it up, as it was (in flight with its
    /// packet id while that is free and the member offline, else queued). Nothing changes in the log.
    fn give_back(&mut self, sidx: u32, mut q: Queued, sent: Option<(u16, InflightState)>) {
        let s = self.session_mut(sidx);
        if s.conn.is_none() && sent.is_none() && q.msg_id != 0 {
            // Offline, a queued entry's body lives in the log (in-flight ones stay for replay).
            q.msg = None;
        }
        match sent {
            Some((packet_id, state))
                if s.conn.is_none() && !s.inflight.iter().any(|f| f.packet_id == packet_id) =>
            {
                s.inflight.push_back(Inflight {
                    packet_id,
                    state,
                    q,
                    deferred: false,
                })
            }
            _ => s.queue.push_back(q),
        }
    }

    /// Try the group again for this offline member's kept messages on a later tick.
    fn retry_later(&mut self, sidx: u32) {
        if !self.shared_restored.contains(&sidx) {
            self.shared_restored.push(sidx);
        }
    }

    /// A peer could not take a re-dispatched message we numbered `seq` for it: the member that gave it up keeps
    /// it (its log entry was never acknowledged), to be tried again; if that session is gone, a member here
    /// takes it, else it is dropped (counted in `dropped_shared`, logged).
    pub(super) fn on_shared_refused(&mut self, from: u16, seq: u64) {
        let Some(i) = self
            .shared_acks
            .iter()
            .position(|a| a.peer == from && a.seq == seq)
        else {
            return;
        };
        let a = self.shared_acks.swap_remove(i);
        self.stats.shared_kept += 1;
        match a.session {
            Some(sidx) if a.in_log => {
                self.account(sidx, a.q.log_bytes);
                self.give_back(sidx, a.q, a.sent);
                if self.session(sidx).conn.is_some() {
                    self.pump(sidx);
                } else {
                    self.retry_later(sidx);
                }
            }
            Some(sidx) => {
                // Its old entry was not in the log (or already let go): queued again as a new one.
                let q = Queued {
                    msg_id: 0,
                    log_pending: false,
                    log_bytes: 0,
                    ..a.q
                };
                self.enqueue(sidx, q, None);
                self.pump(sidx);
                self.log_pending_enqueues(sidx);
                self.retry_later(sidx);
            }
            None => {
                let (Some(name), Some(msg)) = (a.q.shared.as_deref(), a.q.msg.as_ref()) else {
                    return;
                };
                let placed = match parse_shared(name) {
                    Ok(Some((group, filter))) => {
                        let (group, filter) = (group.to_owned(), filter.to_owned());
                        self.deliver_shared_here(
                            &msg.clone(),
                            &group,
                            &filter,
                            u8::MAX,
                            false,
                            None,
                        )
                    }
                    _ => Placed::NoMember,
                };
                if placed != Placed::Here {
                    tracing::warn!(shard = self.cfg.shard_id, group = %name,
                        "a re-dispatched shared message whose member is gone was refused by the other shard and no member here can take it: dropped");
                }
            }
        }
    }

    /// A session is destroyed: messages it gave up that wait for a peer's confirmation no longer belong to it.
    pub(super) fn forget_handovers(&mut self, sidx: u32) {
        for a in self.shared_acks.iter_mut() {
            if a.session == Some(sidx) {
                a.session = None;
            }
        }
    }

    /// The publisher waits for this message to be safe (persistence on, QoS 1/2, a client's publish).
    fn peer_seq_wanted(&self, msg: &Message) -> bool {
        self.store.is_some() && msg.qos != QoS::AtMostOnce && msg.origin.is_some()
    }

    /// Sequence number for a `SharedPublish` to `peer`: the publisher's (`peer_seq`), or for a re-dispatched
    /// message, one of our own (the old entry's acknowledgement waits for it).
    fn shared_seq(&mut self, peer: u16, msg: &Message, redispatch: bool) -> u64 {
        if redispatch && self.store.is_some() && msg.qos != QoS::AtMostOnce {
            self.dur.next_seq(peer)
        } else {
            self.peer_seq(peer, msg)
        }
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
            if let Some(sidx) = a.session.filter(|&s| a.in_log && self.session(s).persisted) {
                self.persist_ack(sidx, a.q.msg_id);
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
        let mut budget = REDISPATCH_PER_TICK;
        for sidx in std::mem::take(&mut self.shared_restored) {
            if budget == 0 {
                // Next tick.
                self.shared_restored.push(sidx);
                continue;
            }
            let Some(s) = self.sessions.get(sidx as usize).and_then(Option::as_ref) else {
                continue;
            };
            if s.conn.is_some() || s.backlog() == 0 {
                // Online again: it takes them itself (and gives them up if it leaves).
                continue;
            }
            let others_online = s
                .subs
                .iter()
                .filter_map(|x| parse_shared(&x.filter).ok().flatten())
                .any(|(g, f)| self.group_has_online(g, f));
            if others_online {
                let (reads, left) = self.redispatch_shared_within(sidx, budget);
                budget -= reads.min(budget);
                if left {
                    self.retry_later(sidx);
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
