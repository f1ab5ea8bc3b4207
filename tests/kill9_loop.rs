//! `kill -9` in a loop under mixed load (issue 20): a QoS 1 and a QoS 2 publisher on different shards, a QoS 0
//! publisher as noise, and three persistent (3.1.1, clean session 0) subscribers of `k9/#` at QoS 2: one online
//! all the time (reconnecting after each kill), one that keeps going offline and coming back, one offline until
//! the end. The broker is killed with SIGKILL at a random point of each cycle and restarted on the same data
//! directory. At the end every message acknowledged to a publisher (PUBACK, PUBREC) must have reached every
//! subscriber, QoS 2 exactly once, first arrivals in publish order.
//!
//! Also under the loop: a persistent shared subscription (`$share/k9g/k9/#`, one member online on shard 0, one
//! flaky on shard 1) must get every acknowledged message at least once across its members (a crash may deliver
//! one twice, never lose it), and a v5 client that drops its connection at the start of each cycle leaves a
//! pending will (1 s delay) that the kill interrupts: every will arrives after the restarts.
//!
//! CI runs 3 cycles (a few seconds). By hand, e.g. 50 cycles:
//!   `KILL9_CYCLES=50 cargo test --test kill9_loop -- --nocapture`
//! (`KILL9_SEED` varies the kill points; `KILL9_RATE` the msg/s per publisher, default 1000).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coremq::codec::{Disconnect, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Will};

use common::resilient::{
    drain_session, publish_until, reconnect, subscribe_persistent, PubSpec, Received,
};
use common::{id_on_shard, Broker, Raw};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The broker's current address; None while it is down. `epoch` moves at every start.
#[derive(Default)]
struct Shared {
    addr: Mutex<Option<SocketAddr>>,
    epoch: AtomicU64,
    /// Publishers stop publishing (they finish what is outstanding).
    stop: AtomicBool,
    /// Subscribers take what is left and finish once quiet.
    drain: AtomicBool,
}

impl Shared {
    fn addr(&self) -> Option<SocketAddr> {
        *self.addr.lock().unwrap()
    }
}

/// A persistent subscriber: online all the time (`flaky` = false) or going offline for a while again and again.
fn subscriber(sh: Arc<Shared>, id: String, flaky: bool, seed: u64) -> Received {
    let mut got = Received::default();
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let draining = || sh.drain.load(Ordering::SeqCst);
    while !draining() {
        let addr = || sh.addr();
        let Some(mut c) = reconnect(&addr, &id, false, V, &draining) else {
            break;
        };
        if flaky {
            let until = Instant::now() + Duration::from_millis(100 + next() % 500);
            if got.read(&mut c, || Instant::now() > until || draining(), None) {
                let _ = c.send(&Packet::Disconnect(Disconnect {
                    reason: ReasonCode::Success,
                    properties: None,
                }));
                std::thread::sleep(Duration::from_millis(200 + next() % 700));
            }
        } else {
            let epoch = sh.epoch.load(Ordering::SeqCst);
            got.read(
                &mut c,
                || draining() || sh.epoch.load(Ordering::SeqCst) != epoch,
                None,
            );
        }
    }
    final_drain(&sh, &id, &mut got);
    got
}

/// Connect once more and take everything left (the broker is up and nothing is published any more).
fn final_drain(sh: &Shared, id: &str, got: &mut Received) {
    let addr = sh.addr().expect("the last broker is up");
    drain_session(addr, id, V, got, Duration::from_secs(3));
}

const WILL_TOPIC: &str = "k9will/w";

/// A v5 client whose connection drops without DISCONNECT: its will (payload: the cycle) is pending for 1 s.
fn leave_a_pending_will(addr: SocketAddr, cycle: u32) {
    let mut c = Raw::connect_packet(&format!("k9-will-{cycle}"), true, 30, ProtocolVersion::V5);
    c.properties = Some(Box::new(Properties {
        session_expiry_interval: Some(300),
        ..Default::default()
    }));
    c.will = Some(Will {
        topic: WILL_TOPIC.into(),
        payload: bytes::Bytes::copy_from_slice(&cycle.to_be_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Some(Box::new(Properties {
            will_delay_interval: Some(1),
            ..Default::default()
        })),
    });
    let (raw, ack) = Raw::connect(addr, c);
    assert_eq!(ack.reason, ReasonCode::Success);
    drop(raw);
}

#[test]
fn acknowledged_messages_survive_a_kill_9_loop() {
    let cycles = env("KILL9_CYCLES").unwrap_or(3);
    let seed = env("KILL9_SEED").unwrap_or(1);
    let rate = env("KILL9_RATE").unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut b = Broker::start_in(dir.path(), &[]);
    let sh = Arc::new(Shared::default());
    let subs = [
        (id_on_shard("k9-online", 1, 2), false),
        (id_on_shard("k9-flaky", 0, 2), true),
        (id_on_shard("k9-offline", 1, 2), false),
    ];
    for (id, _) in &subs {
        subscribe_persistent(b.addr, id, "k9/#", V);
    }
    let members = [
        (id_on_shard("k9-member-online", 0, 2), false),
        (id_on_shard("k9-member-flaky", 1, 2), true),
    ];
    for (id, _) in &members {
        subscribe_persistent(b.addr, id, "$share/k9g/k9/#", V);
    }
    let will_watch = id_on_shard("k9-will-watch", 0, 2);
    subscribe_persistent(b.addr, &will_watch, "k9will/#", V);
    *sh.addr.lock().unwrap() = Some(b.addr);
    sh.epoch.fetch_add(1, Ordering::SeqCst);

    let mut pubs = Vec::new();
    for (topic, qos, shard) in [
        ("k9/q1", QoS::AtLeastOnce, 0),
        ("k9/q2", QoS::ExactlyOnce, 1),
        ("k9/q0", QoS::AtMostOnce, 0),
    ] {
        let spec = PubSpec {
            id: id_on_shard(&format!("k9-pub-{topic}"), shard, 2),
            version: V,
            topic: topic.into(),
            qos,
            rate,
            window: 16,
            size: 64,
        };
        let sh = sh.clone();
        pubs.push(std::thread::spawn(move || {
            let addr = || sh.addr();
            let stop = || sh.stop.load(Ordering::SeqCst);
            (topic, publish_until(&spec, &addr, &stop).acked)
        }));
    }
    let mut sub_threads = Vec::new();
    for (i, (id, flaky)) in subs.iter().take(2).chain(&members).cloned().enumerate() {
        let sh = sh.clone();
        sub_threads.push(std::thread::spawn(move || {
            (id.clone(), subscriber(sh, id, flaky, seed + i as u64))
        }));
    }

    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for cycle in 0..cycles {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if cycle > 0 {
            b = Broker::start_in(dir.path(), &[]);
            *sh.addr.lock().unwrap() = Some(b.addr);
            sh.epoch.fetch_add(1, Ordering::SeqCst);
        }
        leave_a_pending_will(b.addr, cycle as u32);
        // At least 500 ms after the close, so the pending will is in the log (fsync every 10 ms).
        std::thread::sleep(Duration::from_millis((200 + rng % 700).max(500)));
        *sh.addr.lock().unwrap() = None;
        b.kill9();
    }
    let b = Broker::start_in(dir.path(), &[]);
    *sh.addr.lock().unwrap() = Some(b.addr);
    sh.epoch.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    sh.stop.store(true, Ordering::SeqCst);
    let acked: HashMap<&str, Vec<u32>> = pubs.into_iter().map(|h| h.join().unwrap()).collect();
    sh.drain.store(true, Ordering::SeqCst);
    let mut received: Vec<(String, Received)> =
        sub_threads.into_iter().map(|h| h.join().unwrap()).collect();
    let group = received.split_off(2);
    let mut offline = Received::default();
    final_drain(&sh, &subs[2].0, &mut offline);
    received.push((subs[2].0.clone(), offline));
    // The last cycle's will is due 1 s after its close (wall clock, also across the restart).
    std::thread::sleep(Duration::from_millis(1500));
    let mut wills = Received::default();
    drain_session(
        sh.addr().expect("the last broker is up"),
        &will_watch,
        V,
        &mut wills,
        Duration::from_secs(1),
    );

    let n1 = acked["k9/q1"].len();
    let n2 = acked["k9/q2"].len();
    assert!(
        n1 > 0 && n2 > 0,
        "nothing was acknowledged: the loop checks nothing"
    );
    for (id, got) in &received {
        for topic in ["k9/q1", "k9/q2"] {
            let lost = got.lost(topic, &acked[topic]);
            assert!(
                lost.is_empty(),
                "{id} {topic}: {} of {} acknowledged messages lost after {cycles} kill -9 cycles (seed {seed}), first {:?}",
                lost.len(),
                acked[topic].len(),
                &lost[..lost.len().min(10)]
            );
        }
        assert!(
            got.qos2_dups.is_empty(),
            "{id}: QoS 2 delivered twice: {:?}",
            &got.qos2_dups[..got.qos2_dups.len().min(10)]
        );
        assert!(
            got.out_of_order.is_empty(),
            "{id}: out of order (topic, after, got): {:?}",
            &got.out_of_order[..got.out_of_order.len().min(10)]
        );
        eprintln!(
            "{id}: {} QoS 1 + {} QoS 2 first arrivals, {} QoS 1 redeliveries",
            got.first.get("k9/q1").map_or(0, |v| v.len()),
            got.first.get("k9/q2").map_or(0, |v| v.len()),
            got.qos1_dups
        );
    }
    for topic in ["k9/q1", "k9/q2"] {
        let lost: Vec<u32> = acked[topic]
            .iter()
            .copied()
            .filter(|&s| {
                !group
                    .iter()
                    .any(|(_, got)| got.seen.contains(&(topic.to_string(), s)))
            })
            .collect();
        assert!(
            lost.is_empty(),
            "shared group {topic}: {} of {} acknowledged messages reached no member after {cycles} kill -9 cycles (seed {seed}), first {:?}",
            lost.len(),
            acked[topic].len(),
            &lost[..lost.len().min(10)]
        );
    }
    for (id, got) in &group {
        eprintln!(
            "{id} (shared): {} QoS 1 + {} QoS 2 first arrivals",
            got.first.get("k9/q1").map_or(0, |v| v.len()),
            got.first.get("k9/q2").map_or(0, |v| v.len()),
        );
    }
    let mut got_wills: Vec<u32> = wills.first.get(WILL_TOPIC).cloned().unwrap_or_default();
    got_wills.sort_unstable();
    assert_eq!(
        got_wills,
        (0..cycles as u32).collect::<Vec<_>>(),
        "every pending will interrupted by a kill -9 is published after the restart"
    );
    eprintln!(
        "{cycles} kill -9 cycles (seed {seed}) in {:.1} s: {n1} QoS 1 + {n2} QoS 2 acknowledged, all delivered to 3 persistent subscribers, QoS 2 exactly once",
        started.elapsed().as_secs_f64()
    );
}
