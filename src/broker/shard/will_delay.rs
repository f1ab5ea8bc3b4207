//! v5 Will Delay Interval: after an abnormal close the will waits min(will delay, session expiry) seconds
//! [MQTT-3.1.3-9]; a reconnect of the session in time cancels it, and a session that ends first (expiry, or a
//! clean-start takeover) publishes it then.
//!
//! Pending wills live in the shard, not in the session (whose size every idle connection pays for): a map by
//! session plus an index ordered by deadline, so the tick costs per due will. Both are bounded by the number of
//! sessions. A persistent session's pending will is in the log (`WillPending`, due as a unix second, cleared by
//! `WillCleared`), so a restart keeps it; one whose session expired while the broker was down goes at the first
//! tick.

use std::collections::BTreeSet;

use super::persist::log;
use super::*;
use crate::codec::properties::{decode_publish_block, encode_publish_block};
use crate::store::{Record, RecoveredWill};

#[derive(Debug)]
struct Pending {
    deadline: u64,
    will: Box<codec::Will>,
    /// A `WillPending` record backs it (clear it with `WillCleared`).
    logged: bool,
}

#[derive(Debug, Default)]
pub(super) struct PendingWills {
    by_session: HashMap<u32, Pending>,
    due: BTreeSet<(u64, u32)>,
    /// Restored wills of sessions that expired while the broker was down: published at the first tick.
    orphans: Vec<codec::Will>,
}

impl PendingWills {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_session.len()
    }
}

impl Shard {
    /// The connection of session `sidx` closed abnormally: publish its will now or when its delay ends.
    pub(super) fn will_on_close(&mut self, sidx: u32, will: Box<codec::Will>) {
        let s = self.session(sidx);
        let will_delay = will
            .properties
            .as_ref()
            .and_then(|p| p.will_delay_interval)
            .unwrap_or(0);
        // The session ends at its expiry, and the will goes then at the latest (`None` = never expires).
        let delay = match s.expiry {
            Some(e) => will_delay.min(e),
            None => will_delay,
        };
        if delay == 0 {
            self.publish_will(*will);
            return;
        }
        let deadline = self.now as u64 + delay as u64;
        self.cancel_will(sidx);
        let logged = self.persist_will(sidx, deadline, &will);
        self.wills.due.insert((deadline, sidx));
        self.wills.by_session.insert(
            sidx,
            Pending {
                deadline,
                will,
                logged,
            },
        );
    }

    /// Take the pending will of a session out of the index (and the log).
    fn take_will(&mut self, sidx: u32) -> Option<Box<codec::Will>> {
        let p = self.wills.by_session.remove(&sidx)?;
        self.wills.due.remove(&(p.deadline, sidx));
        if p.logged {
            let s = self.sessions[sidx as usize].as_ref().expect("live session");
            let rec = Record::WillCleared {
                client_id: &s.client_id,
            };
            log(&mut self.store, &mut self.dur, &mut self.stats, &rec);
        }
        Some(p.will)
    }

    /// The session reconnected in time: its delayed will is not published.
    pub(super) fn cancel_will(&mut self, sidx: u32) {
        self.take_will(sidx);
    }

    /// The session ends with its will still pending: publish it now.
    pub(super) fn fire_pending_will(&mut self, sidx: u32) {
        if let Some(will) = self.take_will(sidx) {
            self.publish_will(*will);
        }
    }

    /// Write a persistent session's pending will to the log. Returns whether it was written.
    fn persist_will(&mut self, sidx: u32, deadline: u64, will: &codec::Will) -> bool {
        if self.store.is_none() || self.restoring || !self.session(sidx).persisted {
            return false;
        }
        let props = will.properties.as_ref().map(|p| Properties {
            will_delay_interval: None,
            ..(**p).clone()
        });
        let block = match encode_publish_block(props.as_ref()) {
            Ok(b) => b,
            Err(e) => {
                self.stats.persist_errors += 1;
                tracing::error!(error = %e, "cannot encode will properties for the log");
                return false;
            }
        };
        let s = self.sessions[sidx as usize].as_ref().expect("live session");
        let rec = Record::WillPending {
            client_id: &s.client_id,
            due_unix: self.epoch_unix + deadline,
            topic: &will.topic,
            qos: will.qos as u8,
            retain: will.retain,
            payload: &will.payload,
            properties: &block,
        };
        log(&mut self.store, &mut self.dur, &mut self.stats, &rec)
    }

    /// At restore: a session's pending will from the log (`sidx` None = the session expired while down).
    pub(super) fn restore_will(&mut self, sidx: Option<u32>, w: RecoveredWill) {
        let properties = match decode_publish_block(&w.properties) {
            Ok(p) => p,
            Err(e) => {
                self.stats.persist_errors += 1;
                tracing::error!(topic = %w.topic, error = %e, "stored will unreadable; dropped");
                return;
            }
        };
        let will = Box::new(codec::Will {
            topic: ByteString::from(w.topic.as_str()),
            payload: w.payload,
            qos: QoS::from_u8(w.qos).unwrap_or(QoS::AtMostOnce),
            retain: w.retain,
            properties,
        });
        let Some(sidx) = sidx else {
            self.wills.orphans.push(*will);
            return;
        };
        let deadline = w
            .due_unix
            .saturating_sub(self.epoch_unix)
            .max(self.now as u64);
        self.wills.due.insert((deadline, sidx));
        self.wills.by_session.insert(
            sidx,
            Pending {
                deadline,
                will,
                logged: true,
            },
        );
    }

    /// From `tick`: publish the wills whose delay has passed.
    pub(super) fn fire_due_wills(&mut self) {
        for will in std::mem::take(&mut self.wills.orphans) {
            self.publish_will(will);
        }
        let now = self.now as u64;
        while let Some(&(deadline, sidx)) = self.wills.due.first() {
            if deadline > now {
                break;
            }
            self.fire_pending_will(sidx);
        }
    }
}
