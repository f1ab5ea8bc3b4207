//! Unit tests of the shard core, one file per flow (the persistence tests are in `durable`).
use super::*;

mod bridge;
mod burst;
mod conn;
mod delivery;
mod durable;
mod expiry;
mod gauges;
mod keepalive;
mod output;
mod queue_full;
mod receive_max;
mod shared;
mod shared_log;
mod shared_refused;
mod sys;
mod v5;
mod v5_connect;

/// `p` framed for `v`, as a client sends it.
pub(super) fn frame_v(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode(p, v, &mut b).unwrap();
    b
}

/// `p` framed for MQTT 3.1.1.
pub(super) fn frame(p: &Packet) -> BytesMut {
    frame_v(p, ProtocolVersion::V3_1_1)
}
