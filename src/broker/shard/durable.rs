//! When output must wait for the log: end of round, held output, log congestion, store maintenance.

use bytes::BytesMut;

use super::Shard;
use crate::broker::message::ConnKey;
use crate::codec::{self, Packet, ProtocolVersion, PubResp, ReasonCode};
use crate::store::StoreError;

/// Rounds that may wait for the disk (or a peer's disk) before the shard stops reading its sockets: at one
/// round per ~10 µs under load that is ~40 ms of work ahead of a 10 ms fsync interval, and the bound on the
/// durability bookkeeping (~100 bytes a round) when the disk stalls.
pub(super) const MAX_UNDURABLE_ROUNDS: usize = 4096;

/// Bytes of compaction work per clock second (bounded so a second's round stays short).
const COMPACT_BUDGET: usize = 4 << 20;

impl Shard {
    /// End of an I/O round: commit what the round appended (one group) and close the round's holds.
    pub fn end_round(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let committed = match store.commit() {
            Ok(l) => l,
            Err(e) => {
                self.stats.persist_errors += 1;
                tracing::error!(error = %e, "log commit failed");
                store.committed_lsn()
            }
        };
        let mesh = &mut self.mesh_out;
        self.dur.end_round(committed, |peer, upto, written| {
            mesh.push((peer, super::MeshMsg::Handled { upto, written }))
        });
        self.poll_durable();
    }

    /// Release output and peer confirmations that became durable.
    pub fn poll_durable(&mut self) {
        let Some(store) = self.store.as_ref() else {
            return;
        };
        let durable = store.durable_lsn();
        let mesh = &mut self.mesh_out;
        let conns = &mut self.conns;
        let dirty = &mut self.dirty;
        self.dur.poll(
            durable,
            |peer, seq| mesh.push((peer, super::MeshMsg::Durable { seq })),
            |key| {
                if let Some(c) = conns.get_mut(key) {
                    if !c.dirty {
                        c.dirty = true;
                        dirty.push(key);
                    }
                }
            },
        );
        self.flush_shared_acks();
    }

    /// Output or a peer waits for the log to sync (the I/O layer wakes on sync, or polls soon).
    pub fn durability_waiting(&self) -> bool {
        self.store.is_some() && self.dur.waiting()
    }

    /// A numbered (QoS>0) message from peer `from` was handled; `before` is (persist errors, records appended)
    /// from just before. If part of it did not reach our log, the publisher's shard is told before our
    /// confirmation, so its held acknowledgement never leaves. If it wrote nothing, the confirmation waits for
    /// no sync.
    pub(super) fn peer_msg_done(
        &mut self,
        from: u16,
        seq: u64,
        origin: Option<crate::broker::message::Origin>,
        (failures_before, appends_before): (u64, u64),
    ) {
        if seq == 0 {
            return;
        }
        if self.refusals() != failures_before {
            if let Some(o) = origin {
                self.mesh_out.push((
                    from,
                    super::MeshMsg::LogRefused {
                        conn: o.conn,
                        packet_id: o.packet_id,
                    },
                ));
            }
        }
        let appended = self.dur.appends() != appends_before;
        self.dur.on_peer_msg(from, seq, appended);
    }

    /// A peer's log could not take the message published on `key` with `packet_id`, or a full session there
    /// refused it. Its acknowledgement is still held in the connection's output (the peer's confirmation comes
    /// after this): v5 gets that PUBACK/PUBREC turned into Quota exceeded (0x97) in place and the connection
    /// stays; 3.1.1 has no negative acknowledgement, so the output is dropped from its first hold on and the
    /// connection closed, and the client sends the message again after reconnecting. Either way a QoS 2 packet id
    /// is released, so the client's retry is routed again instead of being taken for a retransmission of a
    /// message already delivered. Counted as a refused publish.
    pub(super) fn refuse_held(&mut self, key: ConnKey, packet_id: u16) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let (sidx, closing) = (conn.session, conn.closing);
        let from = self.dur.writable(key, conn.out_len());
        let acks = held_acks(
            conn.out.as_deref().map_or(&[][..], |o| &o[from..]),
            packet_id,
        );
        self.stats.publishes_refused += 1;
        // A closing connection may point at a clean session already destroyed: its session is the one at `sidx`
        // only while attached to it, or offline and persistent (left by this connection's close).
        let session = self.sessions.get(sidx as usize).and_then(|s| s.as_ref());
        let attached = session.is_some_and(|s| s.conn == Some(key));
        let left = closing && session.is_some_and(|s| s.conn.is_none() && !s.is_clean());
        if (attached || left)
            && acks.iter().any(|a| a.pubrec)
            && self.session_mut(sidx).inbound_qos2_release(packet_id)
        {
            self.persist_qos2_in(sidx, packet_id, false);
        }
        let v5 = attached && self.session(sidx).protocol == ProtocolVersion::V5;
        if v5 && !closing && !acks.is_empty() {
            let out = self.conns.get_mut(key).expect("looked up above").out_mut();
            // From the last one back, so the offsets of the earlier ones stay valid.
            for a in acks.iter().rev() {
                let make = if a.pubrec {
                    Packet::PubRec
                } else {
                    Packet::PubAck
                };
                let mut refusal = BytesMut::new();
                let resp = PubResp {
                    packet_id,
                    reason: ReasonCode::QuotaExceeded,
                    properties: None,
                };
                codec::encode(&make(resp), ProtocolVersion::V5, &mut refusal)
                    .expect("an acknowledgement always encodes");
                let at = from + a.offset;
                let tail = out.split_off(at + a.len);
                out.truncate(at);
                out.extend_from_slice(&refusal);
                out.extend_from_slice(&tail);
                self.dur
                    .shift(key, at, refusal.len() as isize - a.len as isize);
            }
            tracing::warn!(
                shard = self.cfg.shard_id,
                conn = ?key,
                packet_id,
                "a peer shard's log or a full session there refused a publish: acknowledged with 0x97 Quota exceeded"
            );
            return;
        }
        let conn = self.conns.get_mut(key).expect("looked up above");
        let keep = self.dur.writable(key, conn.out_len());
        if let Some(out) = conn.out.as_mut() {
            out.truncate(keep);
        }
        self.dur.forget(key);
        tracing::warn!(
            shard = self.cfg.shard_id,
            conn = ?key,
            packet_id,
            "a peer shard's log or a full session there refused a publish: closing the publisher unacknowledged"
        );
        self.close(key, true, Some(ReasonCode::QuotaExceeded));
    }

    /// Too many rounds are waiting for the log (a slow or stalled disk): the I/O layer stops reading sockets
    /// until it catches up, so publishers wait for their acknowledgements instead of growing our bookkeeping.
    /// Counted and logged once per episode; reading resumes below half the bound.
    pub fn log_congested(&mut self) -> bool {
        let backlog = self.dur.backlog();
        if !self.log_stalled && backlog >= MAX_UNDURABLE_ROUNDS {
            self.log_stalled = true;
            self.stats.log_stalls += 1;
            tracing::warn!(
                shard = self.cfg.shard_id,
                rounds = backlog,
                "log is not keeping up (slow disk?): reading paused until it catches up"
            );
        } else if self.log_stalled && backlog < MAX_UNDURABLE_ROUNDS / 2 {
            self.log_stalled = false;
            tracing::info!(shard = self.cfg.shard_id, "log caught up: reading resumed");
        }
        self.log_stalled
    }

    /// Everything written to this connection from now on waits until what the current round sent to peers is
    /// confirmed and, if `local`, until the round is durable in our log.
    pub(super) fn hold_output(&mut self, key: ConnKey, local: bool) {
        if self.store.is_none() {
            return;
        }
        if let Some(c) = self.conns.get(key) {
            self.dur.hold(key, c.out_len(), local);
        }
    }

    /// The connection's output and how many leading bytes of it may be written now.
    pub fn out_writable(&mut self, key: ConnKey) -> Option<(&mut BytesMut, usize)> {
        let c = self.conns.get_mut(key)?;
        let n = self.dur.writable(key, c.out_len());
        Some((c.out_mut(), n))
    }

    /// The I/O layer wrote (and removed) `n` bytes from the front of the connection's output.
    pub fn consumed(&mut self, key: ConnKey, n: usize) {
        if let Some(out) = self.conns.get_mut(key).and_then(|c| c.out.as_mut()) {
            bytes::Buf::advance(&mut **out, n);
        }
        self.dur.consumed(key, n);
    }

    /// Once a second: bounded compaction, and dropping read pages of the log from memory.
    pub(super) fn store_maintenance(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.compact_step(COMPACT_BUDGET) {
            Ok(p) if p.deleted_segments > 0 => {
                tracing::debug!(
                    shard = self.cfg.shard_id,
                    deleted = p.deleted_segments,
                    "log compacted"
                )
            }
            Ok(_) => {}
            Err(StoreError::SyncFailed(_)) => {}
            Err(e) => {
                self.stats.persist_errors += 1;
                tracing::error!(error = %e, "log compaction failed");
            }
        }
        store.release_cached_pages();
    }

    /// Refuse a QoS>0 publish when the log cannot take it (disk full, budget exhausted, sync failed).
    pub(super) fn log_refuses(&mut self, bytes: usize) -> Option<StoreError> {
        let store = self.store.as_mut()?;
        store.check_capacity(bytes).err()
    }

    /// The log synced past what the last `poll_durable` saw, with something waiting on it.
    pub fn durable_progress(&self) -> bool {
        match self.store.as_ref() {
            Some(st) => self.dur.waiting() && st.durable_lsn() > self.dur.polled(),
            None => false,
        }
    }
}

impl Shard {
    /// Block until everything committed is durable (shutdown, tests). Never on the hot path.
    pub fn sync_log(&mut self) {
        if let Some(st) = self.store.as_mut() {
            if let Err(e) = st.sync() {
                tracing::error!(error = %e, "log sync failed");
            }
        }
        self.poll_durable();
    }
}

/// A successful PUBACK or PUBREC for one packet id in held output.
#[derive(Debug, PartialEq)]
struct HeldAck {
    offset: usize,
    len: usize,
    pubrec: bool,
}

/// The successful PUBACKs/PUBRECs for `packet_id` in `out`: whole packets the broker encoded, starting at a
/// packet boundary (a hold always marks one). A QoS 2 retransmission may have been acknowledged again behind
/// the first, so there can be more than one.
fn held_acks(out: &[u8], packet_id: u16) -> Vec<HeldAck> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < out.len() {
        // Fixed header: type byte, then the remaining length as a variable byte integer.
        let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
        loop {
            let Some(&b) = out.get(i) else {
                return found;
            };
            len |= ((b & 0x7f) as usize) << shift;
            i += 1;
            if b & 0x80 == 0 || shift >= 21 {
                break;
            }
            shift += 7;
        }
        let body = &out[i.min(out.len())..(i + len).min(out.len())];
        let kind = out[at] >> 4;
        let success = body.len() < 3 || body[2] == 0;
        if matches!(kind, 4 | 5)
            && body.len() >= 2
            && body[..2] == packet_id.to_be_bytes()
            && success
        {
            found.push(HeldAck {
                offset: at,
                len: i - at + len,
                pubrec: kind == 5,
            });
        }
        at = i + len;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_acks_finds_the_packet_ids_acknowledgements_among_other_packets() {
        let mut out = BytesMut::new();
        let ack = |make: fn(PubResp) -> Packet, id, reason| {
            make(PubResp {
                packet_id: id,
                reason,
                properties: None,
            })
        };
        let v5 = ProtocolVersion::V5;
        codec::encode(&ack(Packet::PubAck, 7, ReasonCode::Success), v5, &mut out).unwrap();
        let big = Packet::Publish(codec::Publish {
            dup: false,
            qos: codec::QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 0,
            properties: None,
            // A payload that looks like a PUBACK for id 9, and a remaining length of two bytes.
            payload: bytes::Bytes::from([[0x40u8, 0x02, 0, 9]; 64].concat()),
        });
        codec::encode(&big, v5, &mut out).unwrap();
        let second = out.len();
        codec::encode(&ack(Packet::PubRec, 9, ReasonCode::Success), v5, &mut out).unwrap();
        codec::encode(
            &ack(Packet::PubAck, 9, ReasonCode::QuotaExceeded),
            v5,
            &mut out,
        )
        .unwrap();
        let third = out.len();
        codec::encode(&ack(Packet::PubRec, 9, ReasonCode::Success), v5, &mut out).unwrap();
        let found = held_acks(&out, 9);
        assert_eq!(
            found,
            vec![
                HeldAck {
                    offset: second,
                    len: 4,
                    pubrec: true
                },
                HeldAck {
                    offset: third,
                    len: 4,
                    pubrec: true
                }
            ]
        );
        assert_eq!(held_acks(&out, 7).len(), 1);
        assert!(held_acks(&out, 8).is_empty());
        // A truncated tail is not read past.
        assert_eq!(held_acks(&out[..out.len() - 1], 9).len(), 1);
    }
}
