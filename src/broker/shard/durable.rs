//! When output must wait for the log: end of round, held output, log congestion, store maintenance.

use bytes::BytesMut;

use super::Shard;
use crate::broker::message::ConnKey;
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
                self.mesh_out
                    .push((from, super::MeshMsg::LogRefused(o.conn)));
            }
        }
        let appended = self.dur.appends() != appends_before;
        self.dur.on_peer_msg(from, seq, appended);
    }

    /// A peer's log could not take a message published on `key`, or a full session there refused it: drop the connection's output from its first
    /// hold on (the acknowledgement that would vouch for it is there) and close it (v5: DISCONNECT 0x97), so the
    /// client sends the message again after reconnecting. Counted as a refused publish.
    pub(super) fn refuse_held(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let keep = self.dur.writable(key, conn.out_len());
        if let Some(out) = conn.out.as_mut() {
            out.truncate(keep);
        }
        self.dur.forget(key);
        self.stats.publishes_refused += 1;
        tracing::warn!(
            shard = self.cfg.shard_id,
            conn = ?key,
            "a peer shard's log or a full session there refused a publish: closing the publisher unacknowledged"
        );
        self.close(key, true, Some(crate::codec::ReasonCode::QuotaExceeded));
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
