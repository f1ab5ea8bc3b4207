//! Hand-off after CONNECT with a completion backend (io_uring): the socket's operations in this shard's ring
//! are cancelled first, and the `Adopt` message leaves only once the ring has confirmed that nothing of the
//! connection is left in it. Bytes the kernel had already received go along, in order, after the ones the core
//! put in the message; wire bytes the ring had not sent yet go ahead of the layer's own.
//! With epoll the hand-off is immediate and nothing here is used.

use super::*;

impl ShardIo {
    /// May this `Adopt` go now? If its socket's release already came, apply it.
    pub(super) fn adopt_ready(&self, a: &mut crate::broker::shard::Adopt) -> bool {
        let mut pending = self.handoffs_pending.borrow_mut();
        let Some(i) = pending.iter().position(|&io| io == a.io) else {
            return true;
        };
        let mut early = self.released_early.borrow_mut();
        if let Some(j) = early.iter().position(|(io, _, _)| *io == a.io) {
            pending.swap_remove(i);
            let (_, unsent, raced) = early.swap_remove(j);
            apply_release(a, unsent, raced);
            return true;
        }
        false
    }

    /// The backend let go of a handed-off socket: send its parked `Adopt`.
    pub(super) fn released(&self, io: u64, unsent: Vec<bytes::Bytes>, raced: BytesMut) {
        let parked = {
            let mut parked = self.parked_adopts.borrow_mut();
            let i = parked
                .iter()
                .position(|(_, m)| matches!(m, MeshMsg::Adopt(a) if a.io == io));
            i.map(|i| parked.remove(i))
        };
        let Some((peer, mut msg)) = parked else {
            // The message is not out of the core yet (same round): `adopt_ready` applies this.
            self.released_early.borrow_mut().push((io, unsent, raced));
            return;
        };
        self.handoffs_pending.borrow_mut().retain(|&p| p != io);
        if let MeshMsg::Adopt(a) = &mut msg {
            apply_release(a, unsent, raced);
        }
        self.send_mesh(&mut vec![(peer, msg)]);
    }
}

fn apply_release(a: &mut crate::broker::shard::Adopt, unsent: Vec<bytes::Bytes>, raced: BytesMut) {
    match a.stream.as_mut() {
        None => {
            if !unsent.is_empty() {
                // A plain connection has no output before its CONNECT is adopted.
                tracing::debug!("unsent bytes of a plain connection at hand-off dropped");
            }
            a.leftover.extend_from_slice(&raced);
        }
        Some(cs) => {
            if !unsent.is_empty() {
                let mut wire = BytesMut::new();
                for b in &unsent {
                    wire.extend_from_slice(b);
                }
                wire.extend_from_slice(&cs.wire_out);
                cs.wire_out = wire;
            }
            if !raced.is_empty() {
                // Wire bytes: through the layer, like any read.
                let mut app = BytesMut::new();
                match cs.layer.read_wire(&raced, &mut app, &mut cs.wire_out) {
                    Ok(()) => a.leftover.extend_from_slice(&app),
                    Err(e) => {
                        tracing::debug!(error = %e, "stream layer failed on bytes read before hand-off")
                    }
                }
            }
        }
    }
}
