//! Message expiry across restarts (the log keeps the wall-clock deadline) and the periodic sweep of offline
//! queues.
use super::super::expiry::SWEEP_PER_TICK;
use super::*;
use crate::codec::{SubscribeFilter, SubscriptionOptions};
use crate::store::{FsyncPolicy, StoreConfig};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn frame(p: &Packet) -> BytesMut {
    frame_v(p, V5)
}

fn connect(shard: &mut Shard, io: u64, id: &str, clean: bool, expiry: u32) -> ConnKey {
    let key = shard.accept(io);
    let c = Connect {
        protocol: V5,
        clean_start: clean,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Some(Box::new(Properties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        })),
        bridge: false,
    };
    shard.on_bytes(key, &mut frame(&Packet::Connect(Box::new(c))));
    key
}

fn take(shard: &mut Shard, key: ConnKey) -> Vec<Packet> {
    let Some(buf) = shard.out_buf(key) else {
        return Vec::new();
    };
    let mut out = std::mem::take(buf);
    shard.flushed(key);
    let mut d = Decoder::new_client(V5, 1 << 20);
    std::iter::from_fn(|| d.decode(&mut out).unwrap()).collect()
}

fn subscribe(shard: &mut Shard, key: ConnKey, filter: &str) {
    let s = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: None,
    };
    shard.on_bytes(key, &mut frame(&Packet::Subscribe(s)));
}

fn publish(topic: &str, retain: bool, expiry: Option<u32>, id: u16) -> BytesMut {
    frame(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id: id,
        properties: Some(Box::new(Properties {
            message_expiry_interval: expiry,
            ..Default::default()
        })),
        payload: bytes::Bytes::copy_from_slice(format!("m{id}").as_bytes()),
    }))
}

/// (payload, Message Expiry Interval) of the PUBLISHes in `out`.
fn received(out: Vec<Packet>) -> Vec<(String, Option<u32>)> {
    out.into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.properties.and_then(|pr| pr.message_expiry_interval),
            )),
            _ => None,
        })
        .collect()
}

fn shard_on_log(dir: &std::path::Path, epoch_unix: u64) -> Shard {
    let cfg = StoreConfig {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(10)),
        sync_bytes: usize::MAX,
        segment_size: 1 << 20,
        ..StoreConfig::default()
    };
    let (store, rec) = Store::open(dir, 0, cfg).unwrap();
    let mut shard = Shard::new(ShardConfig::default());
    shard.attach_store(store, epoch_unix);
    shard.restore(rec.state);
    shard
}

fn logged_queue(shard: &Shard, client: &str) -> usize {
    let state = shard.store.as_ref().unwrap().snapshot();
    state
        .sessions
        .iter()
        .find(|s| s.client_id == client)
        .map_or(0, |s| s.queue.len())
}

/// Queued for an offline persistent session, then the broker restarts 50 s later: the message with 30 s is
/// gone (counted, acknowledged away in the log), the one with 100 s goes out with the 50 s that remain, the one
/// without an interval goes without one. A retained message with 30 s is gone from the log too.
#[test]
fn expiry_deadlines_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut shard = shard_on_log(dir.path(), 1_000_000);
        let sub = connect(&mut shard, 1, "sub", true, 3600);
        subscribe(&mut shard, sub, "q");
        shard.end_round();
        shard.sync_log();
        shard.on_io_closed(sub);
        shard.release(sub);
        let p = connect(&mut shard, 2, "pub", true, 0);
        shard.on_bytes(p, &mut publish("q", false, Some(30), 1));
        shard.on_bytes(p, &mut publish("q", false, Some(100), 2));
        shard.on_bytes(p, &mut publish("q", false, None, 3));
        shard.on_bytes(p, &mut publish("r", true, Some(30), 4));
        shard.on_bytes(p, &mut publish("r2", true, Some(100), 5));
        shard.end_round();
        shard.sync_log();
        assert_eq!(logged_queue(&shard, "sub"), 3);
    }
    let mut shard = shard_on_log(dir.path(), 1_000_050);
    assert_eq!(
        shard.stats.expired, 2,
        "one queued and one retained message expired while down"
    );
    shard.end_round();
    shard.sync_log();
    assert_eq!(
        logged_queue(&shard, "sub"),
        2,
        "acknowledged away in the log"
    );
    let retained = shard.store.as_ref().unwrap().snapshot().retained;
    assert_eq!(
        retained.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        vec!["r2"]
    );
    let sub = connect(&mut shard, 3, "sub", false, 3600);
    assert_eq!(
        received(take(&mut shard, sub)),
        vec![("m2".to_string(), Some(50)), ("m3".to_string(), None)]
    );
    let w = connect(&mut shard, 4, "watcher", true, 0);
    take(&mut shard, w);
    subscribe(&mut shard, w, "r2");
    assert_eq!(
        received(take(&mut shard, w)),
        vec![("m5".to_string(), Some(50))],
        "a retained message keeps its deadline too"
    );
}

/// A record written before deadlines were stored (kind `MESSAGE`) has none: after a restart its interval
/// starts over, as it always did.
#[test]
fn a_message_stored_without_a_deadline_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut shard = shard_on_log(dir.path(), 1_000_000);
        let sub = connect(&mut shard, 1, "sub", true, 3600);
        subscribe(&mut shard, sub, "q");
        shard.end_round();
        shard.sync_log();
        shard.on_io_closed(sub);
        shard.release(sub);
        // Written by hand with no deadline, as an older broker would have.
        let props = crate::codec::properties::encode_publish_block(Some(&Properties {
            message_expiry_interval: Some(30),
            ..Default::default()
        }))
        .unwrap();
        let st = shard.store.as_mut().unwrap();
        let id = st.alloc_msg_id();
        st.append(&crate::store::Record::Message {
            msg_id: id,
            topic: "q",
            qos: 1,
            retain: false,
            payload: b"old",
            properties: &props,
            expires_unix: 0,
        })
        .unwrap();
        st.append(&crate::store::Record::Enqueue {
            client_id: "sub",
            msg_id: id,
            packet_id: 0,
        })
        .unwrap();
        st.commit().unwrap();
        st.sync().unwrap();
    }
    let mut shard = shard_on_log(dir.path(), 1_000_050);
    assert_eq!(shard.stats.expired, 0);
    let sub = connect(&mut shard, 3, "sub", false, 3600);
    assert_eq!(
        received(take(&mut shard, sub)),
        vec![("old".to_string(), Some(30))]
    );
}

/// An offline session's expired messages are swept out without it reconnecting, at most `SWEEP_PER_TICK`
/// entries looked at per tick; an online session's queue is left to delivery.
#[test]
fn offline_queues_are_swept_of_expired_messages_with_bounded_work() {
    let mut shard = Shard::new(ShardConfig {
        max_queued_messages: 2 * SWEEP_PER_TICK,
        ..ShardConfig::default()
    });
    let sub = connect(&mut shard, 1, "sub", true, 3600);
    subscribe(&mut shard, sub, "q");
    shard.on_io_closed(sub);
    shard.release(sub);
    let p = connect(&mut shard, 2, "pub", true, 0);
    let n = SWEEP_PER_TICK + 100;
    for i in 0..n {
        shard.on_bytes(
            p,
            &mut publish("q", false, Some(5), (i % 60_000 + 1) as u16),
        );
    }
    shard.on_bytes(p, &mut publish("q", false, None, 1));
    take(&mut shard, p);
    shard.tick(4);
    assert_eq!(shard.stats.expired, 0, "not expired yet");
    shard.tick(10);
    // Each session looked at costs one unit of the budget (the publisher's too), each queue entry one.
    let first = shard.stats.expired;
    assert!(
        (SWEEP_PER_TICK as u64 - 2..=SWEEP_PER_TICK as u64).contains(&first),
        "bounded work per tick: {first}"
    );
    shard.tick(11);
    assert_eq!(shard.stats.expired, n as u64);
    let sub = connect(&mut shard, 3, "sub", false, 3600);
    assert_eq!(
        received(take(&mut shard, sub)),
        vec![("m1".to_string(), None)],
        "only the message without an interval is left"
    );
}

#[test]
fn persistent_offline_queues_are_swept_and_the_log_forgets_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = shard_on_log(dir.path(), 1_000_000);
    let sub = connect(&mut shard, 1, "sub", true, 3600);
    subscribe(&mut shard, sub, "q");
    shard.end_round();
    shard.sync_log();
    shard.on_io_closed(sub);
    shard.release(sub);
    let p = connect(&mut shard, 2, "pub", true, 0);
    for id in 1..=3 {
        shard.on_bytes(p, &mut publish("q", false, Some(5), id));
    }
    shard.on_bytes(p, &mut publish("q", false, Some(500), 4));
    shard.end_round();
    shard.sync_log();
    assert_eq!(logged_queue(&shard, "sub"), 4);
    shard.tick(6);
    shard.end_round();
    shard.sync_log();
    assert_eq!(shard.stats.expired, 3);
    assert_eq!(logged_queue(&shard, "sub"), 1);
}
