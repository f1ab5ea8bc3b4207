//! Acknowledged means kept (issue 20): persistent queues are bounded by log bytes, and a truly full queue
//! refuses the publish (default) or drops for that session only, counted and logged.
use super::durable::{
    connect, connect_as, id_on, pubacks, publish_to, shuttle, subscribe, take_output,
};
use super::*;
use crate::store::{FsyncPolicy, StoreConfig};
use std::time::Duration;

fn store_cfg() -> StoreConfig {
    StoreConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(10)),
        sync_bytes: usize::MAX,
        segment_size: 1 << 20,
        ..StoreConfig::default()
    }
}

/// Shard `id` of `shards` with its log in `dir` and the given config (shard id and count filled in).
fn member(dir: &std::path::Path, id: u16, shards: u16, cfg: ShardConfig) -> Shard {
    let (store, rec) = Store::open(dir, id as u32, store_cfg()).unwrap();
    let mut shard = Shard::new(ShardConfig {
        shard_id: id,
        shards,
        ..cfg
    });
    shard.attach_store(store, 1_000_000);
    shard.restore(rec.state);
    shard
}

fn find(shard: &Shard, client: &str) -> u32 {
    shard
        .sessions
        .iter()
        .position(|s| s.as_ref().is_some_and(|s| s.client_id == client))
        .expect("session exists") as u32
}

/// Decode a v5 connection's output.
fn take_v5(shard: &mut Shard, key: ConnKey) -> Vec<Packet> {
    let (out, n) = shard.out_writable(key).unwrap();
    let mut bytes = BytesMut::from(&out[..n]);
    shard.consumed(key, n);
    let mut d = codec::Decoder::new_client(ProtocolVersion::V5, 1 << 20);
    let mut v = Vec::new();
    while let Some(p) = d.decode(&mut bytes).unwrap() {
        v.push(p);
    }
    v
}

fn publish_v5(qos: QoS, id: u16, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    let p = Publish {
        dup: false,
        qos,
        retain: false,
        topic: "t/1".into(),
        packet_id: id,
        properties: None,
        payload: bytes::Bytes::copy_from_slice(payload),
    };
    codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut b).unwrap();
    b
}

/// Reasons of the PUBACKs and PUBRECs in `got`, by packet id.
fn acks(got: &[Packet]) -> Vec<(u16, ReasonCode)> {
    got.iter()
        .filter_map(|p| match p {
            Packet::PubAck(r) | Packet::PubRec(r) => Some((r.packet_id, r.reason)),
            _ => None,
        })
        .collect()
}

/// One shard with an offline persistent subscriber `sub` to `t/+` at QoS 2 (log synced).
fn offline_subscriber(dir: &std::path::Path, cfg: ShardConfig) -> Shard {
    let mut shard = member(dir, 0, 1, cfg);
    let s = connect(&mut shard, 1, "sub", false);
    shard.on_bytes(s, &mut subscribe("t/+", QoS::ExactlyOnce));
    shard.end_round();
    shard.sync_log();
    shard.on_io_closed(s);
    shard.release(s);
    shard
}

/// The old default dropped everything past 1,000 messages after acknowledging it: now 3,000 QoS 1 and 3,000
/// QoS 2 messages for an offline persistent session are all acknowledged and all still queued after a restart.
#[test]
fn an_offline_persistent_session_keeps_every_acknowledged_message_past_max_queued_messages() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut shard = offline_subscriber(dir.path(), ShardConfig::default());
        let p = connect(&mut shard, 2, "pub", true);
        take_output(&mut shard, p);
        let mut acked = 0;
        for i in 0..6000u32 {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            let id = (i % 60_000 + 1) as u16;
            shard.on_bytes(p, &mut publish_to("t/1", qos, id, &i.to_be_bytes()));
            if qos == QoS::ExactlyOnce {
                let rel = Packet::PubRel(codec::PubResp {
                    packet_id: id,
                    reason: ReasonCode::Success,
                    properties: None,
                });
                let mut b = BytesMut::new();
                codec::encode(&rel, ProtocolVersion::V3_1_1, &mut b).unwrap();
                shard.on_bytes(p, &mut b);
            }
            if i % 100 == 99 {
                shard.end_round();
                shard.sync_log();
                acked += acks(&take_output(&mut shard, p)).len();
            }
        }
        shard.end_round();
        shard.sync_log();
        acked += acks(&take_output(&mut shard, p)).len();
        assert_eq!(acked, 6000);
        assert_eq!(shard.stats.dropped_offline, 0);
        assert_eq!(shard.stats.refused_queue_full, 0);
        let sidx = find(&shard, "sub");
        assert_eq!(shard.session(sidx).queue.len(), 6000);
        assert!(shard.stats.queued_log_bytes > 6000 * 8);
    }
    // Restart from the log (the shard above is gone without a clean shutdown beyond its last sync).
    let shard = member(dir.path(), 0, 1, ShardConfig::default());
    let sidx = find(&shard, "sub");
    assert_eq!(shard.session(sidx).queue.len(), 6000);
    assert_eq!(
        shard.session(sidx).log_bytes as u64,
        shard.stats.queued_log_bytes
    );
}

/// With a tiny byte bound, a v5 publisher gets 0x97 for what does not fit, and everything acknowledged with
/// Success is still queued after a restart.
#[test]
fn a_full_persistent_session_refuses_with_quota_exceeded_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        max_offline_bytes_per_session: 2000,
        ..ShardConfig::default()
    };
    let ok;
    {
        let mut shard = offline_subscriber(dir.path(), cfg.clone());
        let p = connect_as(&mut shard, 2, "pub", true, Some(0));
        take_v5(&mut shard, p);
        for i in 1..=40u16 {
            shard.on_bytes(p, &mut publish_v5(QoS::AtLeastOnce, i, &[b'x'; 100]));
        }
        shard.end_round();
        shard.sync_log();
        let got = acks(&take_v5(&mut shard, p));
        assert_eq!(got.len(), 40, "{got:?}");
        ok = got.iter().filter(|a| a.1 == ReasonCode::Success).count();
        let refused = got
            .iter()
            .filter(|a| a.1 == ReasonCode::QuotaExceeded)
            .count();
        assert!(ok > 0 && refused > 0, "{got:?}");
        assert_eq!(ok + refused, 40);
        // Success first, then refusals: the bound is reached once and stays reached.
        assert!(got[..ok].iter().all(|a| a.1 == ReasonCode::Success));
        assert_eq!(shard.stats.refused_queue_full, refused as u64);
        assert_eq!(shard.stats.full_session_bytes, refused as u64);
        assert_eq!(shard.stats.dropped_offline, 0);
        let sidx = find(&shard, "sub");
        assert_eq!(shard.session(sidx).queue.len(), ok);
        assert!(shard.session(sidx).log_bytes <= 2000);
    }
    let shard = member(dir.path(), 0, 1, cfg);
    assert_eq!(shard.session(find(&shard, "sub")).queue.len(), ok);
}

/// 3.1.1 has no negative acknowledgement: the publisher is closed without its PUBACK.
#[test]
fn a_full_persistent_session_closes_a_3_1_1_publisher_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        max_offline_messages_per_session: 3,
        ..ShardConfig::default()
    };
    let mut shard = offline_subscriber(dir.path(), cfg);
    let p = connect(&mut shard, 2, "pub", true);
    take_output(&mut shard, p);
    let mut outcomes = Vec::new();
    for i in 1..=4u16 {
        outcomes.push(shard.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, i, b"m")));
    }
    shard.end_round();
    shard.sync_log();
    assert_eq!(outcomes.last(), Some(&ReadOutcome::Close));
    assert_eq!(pubacks(&take_output(&mut shard, p)), vec![1, 2, 3]);
    assert_eq!(shard.stats.full_session_messages, 1);
    assert_eq!(shard.session(find(&shard, "sub")).queue.len(), 3);
}

/// `drop`: the publisher gets its acknowledgement, the full session loses the message, counted per reason; a
/// second subscriber with room keeps it.
#[test]
fn drop_policy_keeps_the_message_for_the_others_and_counts_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        max_offline_messages_per_session: 2,
        persistent_queue_full: QueueFullPolicy::Drop,
        ..ShardConfig::default()
    };
    let mut shard = offline_subscriber(dir.path(), cfg);
    let other = connect(&mut shard, 3, "other", true);
    shard.on_bytes(other, &mut subscribe("t/+", QoS::AtLeastOnce));
    take_output(&mut shard, other);
    let p = connect(&mut shard, 2, "pub", true);
    take_output(&mut shard, p);
    for i in 1..=5u16 {
        shard.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, i, b"m"));
    }
    shard.end_round();
    shard.sync_log();
    assert_eq!(pubacks(&take_output(&mut shard, p)), vec![1, 2, 3, 4, 5]);
    assert_eq!(shard.stats.dropped_offline, 3);
    assert_eq!(shard.stats.full_session_messages, 3);
    assert_eq!(shard.stats.refused_queue_full, 0);
    assert_eq!(shard.session(find(&shard, "sub")).queue.len(), 2);
    let delivered = take_output(&mut shard, other)
        .iter()
        .filter(|p| matches!(p, Packet::Publish(_)))
        .count();
    assert_eq!(delivered, 5);
}

/// The byte accounting returns to zero once the subscriber reconnects and acknowledges everything.
#[test]
fn queued_log_bytes_return_to_zero_when_everything_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = offline_subscriber(dir.path(), ShardConfig::default());
    let p = connect(&mut shard, 2, "pub", true);
    for i in 1..=50u16 {
        shard.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, i, b"payload"));
    }
    shard.end_round();
    shard.sync_log();
    assert!(shard.stats.queued_log_bytes > 0);
    let s = connect(&mut shard, 4, "sub", false);
    for _ in 0..10 {
        shard.end_round();
        shard.sync_log();
        let ids: Vec<u16> = take_output(&mut shard, s)
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.packet_id),
                _ => None,
            })
            .collect();
        for id in ids {
            let mut b = BytesMut::new();
            let ack = Packet::PubAck(codec::PubResp {
                packet_id: id,
                reason: ReasonCode::Success,
                properties: None,
            });
            codec::encode(&ack, ProtocolVersion::V3_1_1, &mut b).unwrap();
            shard.on_bytes(s, &mut b);
        }
    }
    let sidx = find(&shard, "sub");
    assert_eq!(shard.session(sidx).backlog(), 0);
    assert_eq!(shard.session(sidx).log_bytes, 0);
    assert_eq!(shard.stats.queued_log_bytes, 0);
}

/// A full persistent session on another shard: the publisher's held PUBACK never leaves (peer refusal through
/// `LogRefused`), and the connection is closed so the client sends it again.
#[test]
fn a_full_session_on_a_peer_shard_withholds_the_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        max_offline_messages_per_session: 1,
        ..ShardConfig::default()
    };
    let mut s0 = member(&dir.path().join("0"), 0, 2, cfg.clone());
    let mut s1 = member(&dir.path().join("1"), 1, 2, cfg);
    let sub_id = id_on("sub", 1);
    let sub = connect(&mut s1, 1, &sub_id, false);
    s1.on_bytes(sub, &mut subscribe("t/+", QoS::AtLeastOnce));
    shuttle(&mut s0, &mut s1, [true, true]);
    s1.on_io_closed(sub);
    s1.release(sub);
    let p = connect(&mut s0, 2, &id_on("pub", 0), true);
    take_output(&mut s0, p);
    s0.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, 1, b"a"));
    shuttle(&mut s0, &mut s1, [true, true]);
    assert_eq!(pubacks(&take_output(&mut s0, p)), vec![1]);
    s0.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, 2, b"b"));
    shuttle(&mut s0, &mut s1, [true, true]);
    let mut closing = Vec::new();
    s0.take_closing(&mut closing);
    assert!(pubacks(&take_output(&mut s0, p)).is_empty());
    assert_eq!(closing, vec![p]);
    assert_eq!(s1.stats.refused_queue_full, 1);
    assert_eq!(s0.stats.publishes_refused, 1);
    assert_eq!(s1.session(find(&s1, &sub_id)).queue.len(), 1);
}

/// Two shards; on shard 1 an offline persistent subscriber to `t/+` whose queue holds one message.
fn full_session_on_peer(dir: &std::path::Path) -> (Shard, Shard, String) {
    let cfg = ShardConfig {
        max_offline_messages_per_session: 1,
        ..ShardConfig::default()
    };
    let mut s0 = member(&dir.join("0"), 0, 2, cfg.clone());
    let mut s1 = member(&dir.join("1"), 1, 2, cfg);
    let sub_id = id_on("sub", 1);
    let sub = connect(&mut s1, 1, &sub_id, false);
    s1.on_bytes(sub, &mut subscribe("t/+", QoS::ExactlyOnce));
    shuttle(&mut s0, &mut s1, [true, true]);
    s1.on_io_closed(sub);
    s1.release(sub);
    (s0, s1, sub_id)
}

fn publish_v5_to(topic: &str, qos: QoS, id: u16) -> BytesMut {
    let mut b = BytesMut::new();
    let p = Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        properties: None,
        payload: bytes::Bytes::from_static(b"m"),
    };
    codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut b).unwrap();
    b
}

/// A full session on another shard refuses a v5 publish: `LogRefused` names the packet id, so exactly its
/// PUBACK/PUBREC becomes 0x97 (the acknowledgements around it keep their order and success, the connection
/// stays), and a refused QoS 2 packet id is released: the same id published again is routed again (and refused
/// again, the queue is still full), not acknowledged as a retransmission.
#[test]
fn a_full_session_on_a_peer_shard_refuses_exactly_that_v5_publish() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s0, mut s1, sub_id) = full_session_on_peer(dir.path());
    let p = connect_as(&mut s0, 2, &id_on("pub", 0), true, Some(0));
    take_v5(&mut s0, p);
    s0.on_bytes(p, &mut publish_v5_to("t/1", QoS::AtLeastOnce, 1));
    shuttle(&mut s0, &mut s1, [true, true]);
    assert_eq!(acks(&take_v5(&mut s0, p)), vec![(1, ReasonCode::Success)]);
    let mut burst = BytesMut::new();
    burst.extend_from_slice(&publish_v5_to("t/1", QoS::AtLeastOnce, 2));
    burst.extend_from_slice(&publish_v5_to("u/1", QoS::AtLeastOnce, 3));
    burst.extend_from_slice(&publish_v5_to("t/1", QoS::ExactlyOnce, 4));
    burst.extend_from_slice(&publish_v5_to("u/1", QoS::ExactlyOnce, 5));
    s0.on_bytes(p, &mut burst);
    shuttle(&mut s0, &mut s1, [true, true]);
    let mut closing = Vec::new();
    s0.take_closing(&mut closing);
    assert!(closing.is_empty(), "a v5 publisher keeps its connection");
    assert_eq!(
        acks(&take_v5(&mut s0, p)),
        vec![
            (2, ReasonCode::QuotaExceeded),
            (3, ReasonCode::Success),
            (4, ReasonCode::QuotaExceeded),
            (5, ReasonCode::Success),
        ]
    );
    assert_eq!(s0.stats.publishes_refused, 2);
    let psess = find(&s0, &id_on("pub", 0));
    assert!(!s0.session(psess).inbound_qos2.contains(&4));
    s0.on_bytes(p, &mut publish_v5_to("t/1", QoS::ExactlyOnce, 4));
    shuttle(&mut s0, &mut s1, [true, true]);
    assert_eq!(
        acks(&take_v5(&mut s0, p)),
        vec![(4, ReasonCode::QuotaExceeded)]
    );
    assert_eq!(s1.stats.refused_queue_full, 3);
    assert_eq!(s1.session(find(&s1, &sub_id)).queue.len(), 1);
}

/// The 3.1.1 side: a refused QoS 2 publish from a persistent session closes the connection unacknowledged, and
/// its packet id is released, so the client's retry after reconnecting (same id, DUP) is routed again and
/// refused again, never acknowledged as a retransmission of a message the full session does not have.
#[test]
fn a_refused_qos2_publish_is_not_acknowledged_when_a_311_client_retries_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s0, mut s1, sub_id) = full_session_on_peer(dir.path());
    let pub_id = id_on("pub", 0);
    let p = connect(&mut s0, 2, &pub_id, false);
    take_output(&mut s0, p);
    s0.on_bytes(p, &mut publish_to("t/1", QoS::AtLeastOnce, 1, b"a"));
    shuttle(&mut s0, &mut s1, [true, true]);
    assert_eq!(pubacks(&take_output(&mut s0, p)), vec![1]);
    for attempt in 0..2 {
        let p = if attempt == 0 {
            p
        } else {
            let p = connect(&mut s0, 3 + attempt, &pub_id, false);
            take_output(&mut s0, p);
            p
        };
        let mut retry = publish_to("t/1", QoS::ExactlyOnce, 7, b"b");
        if attempt > 0 {
            retry[0] |= 0x08; // DUP
        }
        s0.on_bytes(p, &mut retry);
        shuttle(&mut s0, &mut s1, [true, true]);
        let mut closing = Vec::new();
        s0.take_closing(&mut closing);
        let got = take_output(&mut s0, p);
        assert!(
            !got.iter().any(|x| matches!(x, Packet::PubRec(_))),
            "attempt {attempt}: {got:?}"
        );
        assert_eq!(closing, vec![p], "attempt {attempt}");
        s0.release(p);
    }
    assert_eq!(s1.stats.refused_queue_full, 2);
    assert_eq!(s1.session(find(&s1, &sub_id)).queue.len(), 1);
}

/// An online subscriber past its hard bound (publishes already on their way between shards when the pause was
/// decided): the overshooting message is refused, not acknowledged and dropped.
#[test]
fn an_online_session_past_its_hard_bound_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        max_queued_messages: 1,
        max_in_transit: 1,
        max_inflight: 1,
        ..ShardConfig::default()
    };
    let mut s0 = member(&dir.path().join("0"), 0, 2, cfg.clone());
    let mut s1 = member(&dir.path().join("1"), 1, 2, cfg);
    let sub = connect(&mut s1, 1, &id_on("sub", 1), true);
    s1.on_bytes(sub, &mut subscribe("t/+", QoS::AtLeastOnce));
    shuttle(&mut s0, &mut s1, [true, true]);
    let p = connect(&mut s0, 2, &id_on("pub", 0), true);
    take_output(&mut s0, p);
    let mut burst = BytesMut::new();
    for i in 1..=4u16 {
        burst.extend_from_slice(&publish_to("t/1", QoS::AtLeastOnce, i, b"m"));
    }
    s0.on_bytes(p, &mut burst);
    shuttle(&mut s0, &mut s1, [true, true]);
    assert_eq!(s1.stats.full_online_hard, 2);
    assert_eq!(s1.stats.refused_queue_full, 2);
    assert_eq!(s1.stats.dropped_qos12, 0);
    let mut closing = Vec::new();
    s0.take_closing(&mut closing);
    assert_eq!(closing, vec![p]);
    // Acknowledged are only what the subscriber's session holds.
    let acked = pubacks(&take_output(&mut s0, p));
    assert!(acked.len() <= 2, "{acked:?}");
}

/// Found by the simulation's reasoning about QoS 2: once a PUBREL has left, the broker must never send that
/// PUBLISH again (the subscriber forgets the packet id at PUBREL and would take a resend for a new message). So
/// the `PubRelSent` state must be durable before the PUBREL leaves, or a crash would resend the PUBLISH.
#[test]
fn a_pubrel_to_a_persistent_subscriber_waits_until_its_state_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = member(dir.path(), 0, 1, ShardConfig::default());
    let s = connect(&mut shard, 1, "sub", false);
    shard.on_bytes(s, &mut subscribe("t/+", QoS::ExactlyOnce));
    shard.end_round();
    shard.sync_log();
    take_output(&mut shard, s);
    let p = connect(&mut shard, 2, "pub", true);
    shard.on_bytes(p, &mut publish_to("t/1", QoS::ExactlyOnce, 1, b"m"));
    shard.end_round();
    shard.sync_log();
    let got = take_output(&mut shard, s);
    let Some(Packet::Publish(m)) = got.first() else {
        panic!("{got:?}")
    };
    let mut b = BytesMut::new();
    let rec = Packet::PubRec(codec::PubResp {
        packet_id: m.packet_id,
        reason: ReasonCode::Success,
        properties: None,
    });
    codec::encode(&rec, ProtocolVersion::V3_1_1, &mut b).unwrap();
    shard.on_bytes(s, &mut b);
    shard.end_round();
    // Not synced yet: the PUBREL must not be writable.
    assert!(take_output(&mut shard, s).is_empty());
    shard.sync_log();
    let got = take_output(&mut shard, s);
    assert!(matches!(got[..], [Packet::PubRel(_)]), "{got:?}");
}

/// A queued reference is what an offline persistent queue costs in memory per message (the documented ~64 B
/// behind `max_offline_messages_per_session`).
#[test]
fn a_queued_reference_stays_small() {
    let size = std::mem::size_of::<crate::broker::session::Queued>();
    assert!(size <= 64, "Queued grew to {size}");
}
