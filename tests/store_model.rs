//! Model-based test of the durable log: random session operations are applied to the `Store` and to a plain
//! in-memory reference model; after every operation, after every reopen, and after random tail truncation or
//! mid-log corruption, the state the store holds (or recovers) is compared with the model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use coremq::store::{
    Delivery, DeliveryState, FsyncPolicy, Lsn, MsgRef, QueuedMessage, Record, RecoveredSession,
    RecoveredSubscription, SessionMeta, State, Store, StoreConfig, StoreError,
};
use proptest::prelude::*;

const CLIENTS: [&str; 4] = ["alpha", "bravo", "charlie-with-a-longer-client-id", "d"];
const FILTERS: [&str; 3] = ["a/#", "a/+/c", "sensor/temp"];
const TOPICS: [&str; 3] = ["a/b/c", "sensor/temp", "x"];

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        c: usize,
        level: u8,
        expiry: u32,
        disconnected_at: u64,
    },
    Delete {
        c: usize,
    },
    Sub {
        c: usize,
        f: usize,
        options: u8,
        sub_id: u32,
    },
    Unsub {
        c: usize,
        f: usize,
    },
    Publish {
        t: usize,
        qos: u8,
        retain: bool,
        len: usize,
        targets: u8,
    },
    Deliver {
        c: usize,
        k: usize,
        pid: u16,
        pubrel: bool,
    },
    Ack {
        c: usize,
        k: usize,
    },
    Qos2In {
        c: usize,
        pid: u16,
    },
    Qos2Rel {
        c: usize,
        k: usize,
    },
    ClearRetained {
        t: usize,
    },
    /// An operation the store must refuse without changing anything.
    Invalid {
        c: usize,
        which: u8,
    },
    Commit,
    Compact {
        budget: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLIENTS.len();
    prop_oneof![
        3 => (c.clone(), 3u8..=5, any::<u32>(), any::<u64>())
            .prop_map(|(c, level, expiry, disconnected_at)| Op::Upsert { c, level, expiry, disconnected_at }),
        1 => c.clone().prop_map(|c| Op::Delete { c }),
        3 => (c.clone(), 0..FILTERS.len(), any::<u8>(), 0u32..5).prop_map(|(c, f, options, sub_id)| Op::Sub {
            c,
            f,
            options,
            sub_id
        }),
        1 => (c.clone(), 0..FILTERS.len()).prop_map(|(c, f)| Op::Unsub { c, f }),
        8 => (0..TOPICS.len(), 0u8..=2, any::<bool>(), prop_oneof![3 => 0usize..400, 1 => 1000usize..6000], any::<u8>())
            .prop_map(|(t, qos, retain, len, targets)| Op::Publish { t, qos, retain, len, targets }),
        3 => (c.clone(), 0usize..8, 1u16..=u16::MAX, any::<bool>())
            .prop_map(|(c, k, pid, pubrel)| Op::Deliver { c, k, pid, pubrel }),
        5 => (c.clone(), 0usize..8).prop_map(|(c, k)| Op::Ack { c, k }),
        1 => (c.clone(), 1u16..50).prop_map(|(c, pid)| Op::Qos2In { c, pid }),
        1 => (c.clone(), 0usize..4).prop_map(|(c, k)| Op::Qos2Rel { c, k }),
        1 => (0..TOPICS.len()).prop_map(|t| Op::ClearRetained { t }),
        1 => (c.clone(), 0u8..6).prop_map(|(c, which)| Op::Invalid { c, which }),
        4 => Just(Op::Commit),
        2 => (1usize..20_000).prop_map(|budget| Op::Compact { budget }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ModelSession {
    meta: Option<SessionMeta>,
    subs: BTreeMap<String, (u8, u32)>,
    queue: Vec<(u64, Option<Delivery>)>,
    qos2: BTreeSet<u16>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    sessions: BTreeMap<String, ModelSession>,
    retained: BTreeMap<String, u64>,
    /// Bodies of every message ever written (id -> payload), to check `read_message`.
    bodies: BTreeMap<u64, (String, Vec<u8>)>,
}

impl Model {
    fn state(&self) -> State {
        State {
            sessions: self
                .sessions
                .iter()
                .filter_map(|(cid, s)| {
                    Some(RecoveredSession {
                        client_id: cid.clone(),
                        meta: s.meta?,
                        subscriptions: s
                            .subs
                            .iter()
                            .map(|(f, &(options, subscription_id))| RecoveredSubscription {
                                filter: f.clone(),
                                options,
                                subscription_id,
                            })
                            .collect(),
                        queue: s
                            .queue
                            .iter()
                            .map(|&(m, delivery)| QueuedMessage {
                                msg: MsgRef(m),
                                delivery,
                            })
                            .collect(),
                        inbound_qos2: s.qos2.iter().copied().collect(),
                        pending_will: None,
                    })
                })
                .collect(),
            retained: self
                .retained
                .iter()
                .map(|(t, &m)| (t.clone(), MsgRef(m)))
                .collect(),
        }
    }
}

fn cfg() -> StoreConfig {
    StoreConfig {
        segment_size: 64 << 10,
        fsync: FsyncPolicy::Never,
        max_record_size: 8 << 10,
        max_segments: 10_000,
        max_group_bytes: 1 << 20,
        compact_live_ratio: 0.5,
        sync_bytes: 256 << 10,
    }
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 31 + i) as u8).collect()
}

fn check_bodies(store: &Store, model: &Model, state: &State) {
    let refs = state
        .sessions
        .iter()
        .flat_map(|s| s.queue.iter().map(|q| q.msg))
        .chain(state.retained.iter().map(|(_, m)| *m));
    for m in refs {
        let got = store.read_message(m).expect("queued message readable");
        let (topic, body) = &model.bodies[&m.0];
        assert_eq!(&got.topic, topic);
        assert_eq!(&got.payload[..], &body[..], "payload of message {}", m.0);
        // The expiry deadline survives recovery and compaction, in the body and in the index.
        assert_eq!(
            got.expires_unix,
            deadline_of(m.0),
            "deadline of message {}",
            m.0
        );
        assert_eq!(store.message_expiry(m), deadline_of(m.0));
    }
}

/// Every third message carries an expiry deadline (stored as the newer record kind), the rest none.
fn deadline_of(id: u64) -> u64 {
    if id % 3 == 0 {
        1_700_000_000 + id
    } else {
        0
    }
}

struct Harness {
    store: Option<Store>,
    model: Model,
    committed: Model,
    /// (commit lsn, model at that commit), in log order.
    commits: Vec<(Lsn, Model)>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (store, rec) = Store::open(dir.path(), 0, cfg()).unwrap();
        assert_eq!(rec.state, State::default());
        Harness {
            store: Some(store),
            model: Model::default(),
            committed: Model::default(),
            commits: vec![],
            dir,
        }
    }

    fn store(&mut self) -> &mut Store {
        self.store.as_mut().unwrap()
    }

    fn commit(&mut self) {
        let lsn = self.store().commit().unwrap();
        self.committed = self.model.clone();
        self.commits.push((lsn, self.model.clone()));
    }

    fn reopen(&mut self) -> coremq::store::Recovered {
        drop(self.store.take());
        let (store, rec) = Store::open(self.dir.path(), 0, cfg()).unwrap();
        self.store = Some(store);
        rec
    }

    fn apply(&mut self, op: &Op) {
        let m = &mut self.model;
        let st = self.store.as_mut().unwrap();
        match *op {
            Op::Upsert {
                c,
                level,
                expiry,
                disconnected_at,
            } => {
                let meta = SessionMeta {
                    protocol_level: level,
                    expiry_secs: expiry,
                    clean: false,
                    disconnected_at,
                };
                st.append(&Record::SessionUpsert {
                    client_id: CLIENTS[c],
                    protocol_level: level,
                    expiry_secs: expiry,
                    clean: false,
                    disconnected_at,
                })
                .unwrap();
                m.sessions.entry(CLIENTS[c].to_string()).or_default().meta = Some(meta);
            }
            Op::Delete { c } => {
                let r = st.append(&Record::SessionDelete {
                    client_id: CLIENTS[c],
                });
                match m.sessions.remove(CLIENTS[c]) {
                    Some(s) => {
                        r.unwrap();
                        drop(s);
                    }
                    None => assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}"),
                }
            }
            Op::Sub {
                c,
                f,
                options,
                sub_id,
            } => {
                let r = st.append(&Record::SubAdd {
                    client_id: CLIENTS[c],
                    filter: FILTERS[f],
                    options,
                    subscription_id: sub_id,
                });
                match m.sessions.get_mut(CLIENTS[c]) {
                    Some(s) => {
                        r.unwrap();
                        s.subs.insert(FILTERS[f].to_string(), (options, sub_id));
                    }
                    None => assert!(r.is_err()),
                }
            }
            Op::Unsub { c, f } => {
                let r = st.append(&Record::SubRemove {
                    client_id: CLIENTS[c],
                    filter: FILTERS[f],
                });
                match m
                    .sessions
                    .get_mut(CLIENTS[c])
                    .and_then(|s| s.subs.remove(FILTERS[f]))
                {
                    Some(_) => {
                        r.unwrap();
                    }
                    None => assert!(r.is_err()),
                }
            }
            Op::Publish {
                t,
                qos,
                retain,
                len,
                targets,
            } => {
                let id = st.alloc_msg_id();
                let body = payload(id, len);
                st.append(&Record::Message {
                    msg_id: id,
                    topic: TOPICS[t],
                    qos,
                    retain,
                    payload: &body,
                    properties: &[],
                    expires_unix: deadline_of(id),
                })
                .unwrap();
                m.bodies.insert(id, (TOPICS[t].to_string(), body));
                for (i, cid) in CLIENTS.iter().enumerate() {
                    if targets & (1 << i) == 0 {
                        continue;
                    }
                    // The high nibble of `targets`: queued and sent in one record (packet id in the enqueue).
                    let packet_id = if targets & (0x10 << i) != 0 {
                        (id % 60_000) as u16 + 1 + i as u16
                    } else {
                        0
                    };
                    let r = st.append(&Record::Enqueue {
                        client_id: cid,
                        msg_id: id,
                        packet_id,
                    });
                    match m.sessions.get_mut(*cid) {
                        Some(s) => {
                            r.unwrap();
                            let sent = (packet_id != 0).then_some(Delivery {
                                packet_id,
                                state: DeliveryState::PublishSent,
                            });
                            s.queue.push((id, sent));
                        }
                        None => assert!(r.is_err()),
                    }
                }
                if retain {
                    st.append(&Record::RetainedSet {
                        topic: TOPICS[t],
                        msg_id: id,
                    })
                    .unwrap();
                    m.retained.insert(TOPICS[t].to_string(), id);
                }
            }
            Op::Deliver { c, k, pid, pubrel } => {
                let Some(s) = m.sessions.get_mut(CLIENTS[c]) else {
                    return;
                };
                if s.queue.is_empty() {
                    return;
                }
                let k = k % s.queue.len();
                let state = if pubrel {
                    DeliveryState::PubRelSent
                } else {
                    DeliveryState::PublishSent
                };
                st.append(&Record::Delivery {
                    client_id: CLIENTS[c],
                    msg_id: s.queue[k].0,
                    packet_id: pid,
                    state,
                })
                .unwrap();
                s.queue[k].1 = Some(Delivery {
                    packet_id: pid,
                    state,
                });
            }
            Op::Ack { c, k } => {
                let Some(s) = m.sessions.get_mut(CLIENTS[c]) else {
                    return;
                };
                if s.queue.is_empty() {
                    return;
                }
                let k = k % s.queue.len();
                st.append(&Record::Ack {
                    client_id: CLIENTS[c],
                    msg_id: s.queue[k].0,
                })
                .unwrap();
                s.queue.remove(k);
            }
            Op::Qos2In { c, pid } => {
                let r = st.append(&Record::Qos2InPending {
                    client_id: CLIENTS[c],
                    packet_id: pid,
                });
                match m.sessions.get_mut(CLIENTS[c]) {
                    Some(s) => {
                        r.unwrap();
                        s.qos2.insert(pid);
                    }
                    None => assert!(r.is_err()),
                }
            }
            Op::Qos2Rel { c, k } => {
                let Some(s) = m.sessions.get_mut(CLIENTS[c]) else {
                    return;
                };
                let Some(&pid) = s.qos2.iter().nth(k % s.qos2.len().max(1)) else {
                    return;
                };
                st.append(&Record::Qos2InReleased {
                    client_id: CLIENTS[c],
                    packet_id: pid,
                })
                .unwrap();
                s.qos2.remove(&pid);
            }
            Op::ClearRetained { t } => {
                let r = st.append(&Record::RetainedClear { topic: TOPICS[t] });
                match m.retained.remove(TOPICS[t]) {
                    Some(_) => {
                        r.unwrap();
                    }
                    None => assert!(r.is_err()),
                }
            }
            Op::Invalid { c, which } => {
                let r = match which {
                    0 => st.append(&Record::Enqueue {
                        client_id: CLIENTS[c],
                        msg_id: u64::MAX - 1,
                        packet_id: 0,
                    }),
                    1 => st.append(&Record::Ack {
                        client_id: CLIENTS[c],
                        msg_id: u64::MAX - 1,
                    }),
                    2 => st.append(&Record::Delivery {
                        client_id: CLIENTS[c],
                        msg_id: u64::MAX - 1,
                        packet_id: 1,
                        state: DeliveryState::PublishSent,
                    }),
                    3 => st.append(&Record::RetainedSet {
                        topic: "nope",
                        msg_id: u64::MAX - 1,
                    }),
                    4 => st.append(&Record::Commit { group: 1 }),
                    _ => st.append(&Record::Qos2InReleased {
                        client_id: "no-such-client",
                        packet_id: 7,
                    }),
                };
                assert!(
                    matches!(r, Err(StoreError::Invalid(_))),
                    "{op:?} gave {r:?}"
                );
            }
            Op::Commit => self.commit(),
            Op::Compact { budget } => {
                // The broker calls compaction between ticks, i.e. after a commit.
                self.commit();
                self.store().compact_step(budget).unwrap();
                self.commit();
            }
            Op::Reopen => {
                let rec = self.reopen();
                assert_eq!(rec.report.corruption_count, 0, "{:?}", rec.report);
                self.model = self.committed.clone();
                assert_eq!(
                    rec.state,
                    self.model.state(),
                    "recovered state differs from the model"
                );
                check_bodies(self.store.as_ref().unwrap(), &self.model, &rec.state);
            }
        }
    }

    fn check_live(&self) {
        let st = self.store.as_ref().unwrap();
        assert_eq!(
            st.snapshot(),
            self.model.state(),
            "live state differs from the model"
        );
    }
}

fn run_ops(h: &mut Harness, ops: &[Op]) {
    for op in ops {
        h.apply(op);
        h.check_live();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Random operations; reopen at random points and at the end; the recovered state equals the model's state at
    /// the last commit, and every queued body reads back intact.
    #[test]
    fn recovery_matches_model(ops in proptest::collection::vec(op(), 1..400)) {
        let mut h = Harness::new();
        run_ops(&mut h, &ops);
        // An uncommitted group is discarded by recovery.
        h.apply(&Op::Reopen);
        // Compact everything possible, then recovery must still agree.
        for _ in 0..200 {
            h.commit();
            let p = h.store().compact_step(1 << 20).unwrap();
            if p.idle { break; }
        }
        h.commit();
        h.check_live();
        h.apply(&Op::Reopen);
    }

    /// Torn tail: the log is cut at a random point after the last compaction (as a crash would leave it) and
    /// recovery must give exactly the model as of the last commit that is wholly before the cut.
    #[test]
    fn torn_tail_recovers_committed_prefix(
        head in proptest::collection::vec(op(), 0..150),
        tail in proptest::collection::vec(op(), 1..150),
        pick in any::<proptest::sample::Index>(),
        extra in any::<u32>(),
        truncate_file in any::<bool>(),
    ) {
        let mut h = Harness::new();
        run_ops(&mut h, &head);
        h.commit();
        let base = h.commits.len() - 1;
        // No compaction or reopen in the tail: everything after `base` is an undeleted suffix of the log.
        let tail: Vec<Op> = tail.into_iter().filter(|o| !matches!(o, Op::Compact { .. } | Op::Reopen)).collect();
        run_ops(&mut h, &tail);
        h.commit();
        let commits: Vec<(Lsn, Model)> = h.commits[base..].to_vec();
        drop(h.store.take());

        // Choose a commit k; cut somewhere inside the group after it (or exactly at its end).
        let k = pick.index(commits.len());
        let (lsn_k, ref expected) = commits[k];
        let expected: &Model = expected;
        let next = commits[k + 1..].iter().map(|c| c.0).find(|l| *l > lsn_k);
        let seg_dir = h.dir.path().join("shard-0");
        let seg_len = 64u64 << 10;
        let cut_off = match next {
            Some(n) if n.segment() == lsn_k.segment() => {
                lsn_k.offset() as u64 + extra as u64 % (n.offset() - lsn_k.offset()) as u64
            }
            // (A group that ends exactly at the segment's end leaves nothing to cut in it: max(1).)
            _ => lsn_k.offset() as u64 + extra as u64 % (seg_len - lsn_k.offset() as u64).max(1),
        };
        let seg_name = |id: u32| seg_dir.join(format!("{id:020}.seg"));
        // Zeroing bytes that were zero anyway (high bytes of small integers, padding) loses nothing: a later
        // group whose bytes past the cut are all zero survives intact.
        let image = std::fs::read(seg_name(lsn_k.segment())).unwrap();
        let mut expected = expected;
        for (lsn, model) in &commits[k + 1..] {
            if lsn.segment() == lsn_k.segment()
                && (lsn.offset() as u64) > cut_off
                && image[cut_off as usize..lsn.offset() as usize].iter().all(|&b| b == 0)
            {
                expected = model;
            }
        }
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(seg_name(lsn_k.segment())).unwrap();
            if truncate_file {
                f.set_len(cut_off).unwrap();
            } else {
                f.seek(SeekFrom::Start(cut_off)).unwrap();
                f.write_all(&vec![0u8; (seg_len - cut_off) as usize]).unwrap();
            }
        }
        // Later segments were never written (sometimes their header was).
        for id in lsn_k.segment() + 1..lsn_k.segment() + 64 {
            let p = seg_name(id);
            if p.exists() {
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.set_len(if extra % 2 == 0 { 0 } else { 32 }).unwrap();
            }
        }
        let rec = h.reopen();
        prop_assert_eq!(rec.report.corruption_count, 0, "{:?}", rec.report);
        prop_assert_eq!(&rec.state, &expected.state());
        check_bodies(h.store.as_ref().unwrap(), expected, &rec.state);
        // The store keeps working after truncation and a second recovery agrees.
        h.model = expected.clone();
        h.committed = expected.clone();
        run_ops(&mut h, &[Op::Upsert { c: 0, level: 4, expiry: 9, disconnected_at: 1 }, Op::Commit, Op::Reopen]);
    }

    /// Random byte corruption in committed data: never a panic; the damage is reported with an offset that
    /// covers the flipped byte (unless it hit padding, which no record reads); recovery is repeatable and the
    /// store stays writable.
    #[test]
    fn corruption_in_the_middle_is_reported_and_skipped(
        ops in proptest::collection::vec(op(), 20..200),
        pos in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut h = Harness::new();
        let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::Reopen)).collect();
        run_ops(&mut h, &ops);
        h.commit();
        // Some trailing committed records so the damage is not at the tail.
        for c in 0..CLIENTS.len() {
            h.apply(&Op::Upsert { c, level: 5, expiry: 1, disconnected_at: 0 });
            h.commit();
        }
        let committed = h.store().committed_lsn();
        drop(h.store.take());
        let seg_dir = h.dir.path().join("shard-0");
        let mut segs: Vec<_> = std::fs::read_dir(&seg_dir).unwrap().map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg")).collect();
        segs.sort();
        let target = segs[pos.index(segs.len())].clone();
        let id: u32 = target.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        // Spare the last ~200 bytes (the trailing groups): damage there is a torn tail, not a corruption. (The head
        // segment may hold less than that: then nothing in it qualifies.)
        let limit = if id == committed.segment() { (committed.offset() as usize).saturating_sub(200) } else { 64 << 10 };
        let mut bytes = std::fs::read(&target).unwrap();
        let used = used_len(&bytes).min(limit);
        prop_assume!(used > 40);
        let at = 32 + pos.index(used - 32);
        bytes[at] ^= flip;
        std::fs::write(&target, &bytes).unwrap();
        let rec = h.reopen();
        let covered = rec.report.corruptions.iter().any(|c| {
            c.segment == id && c.offset as usize <= at && at < (c.offset + c.skipped_bytes.max(8)) as usize
        });
        if !in_padding(&bytes, at) {
            prop_assert!(covered, "flip at {}:{} not reported: {:?}", id, at, rec.report);
        }
        let again = h.reopen();
        prop_assert_eq!(&again.state, &rec.state);
        let st = h.store();
        st.append(&Record::SessionUpsert { client_id: "after", protocol_level: 5, expiry_secs: 1, clean: false,
            disconnected_at: 0 }).unwrap();
        st.commit().unwrap();
        let last = h.reopen();
        prop_assert!(last.state.sessions.iter().any(|s| s.client_id == "after"));
    }
}

/// Length of the written prefix of a segment image, by walking frames.
fn used_len(bytes: &[u8]) -> usize {
    let mut off = 32;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        off += (8 + len + 7) & !7;
    }
    off.min(bytes.len())
}

/// Whether `at` falls in the zero padding after a frame (not covered by any CRC).
fn in_padding(bytes: &[u8], at: usize) -> bool {
    let mut off = 32;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return false;
        }
        let end = off + 8 + len;
        let padded = (end + 7) & !7;
        if at < end {
            return false;
        }
        if at < padded {
            return true;
        }
        off = padded;
    }
    false
}

#[test]
fn model_smoke() {
    let mut h = Harness::new();
    run_ops(
        &mut h,
        &[
            Op::Upsert {
                c: 0,
                level: 5,
                expiry: 60,
                disconnected_at: 0,
            },
            Op::Sub {
                c: 0,
                f: 0,
                options: 1,
                sub_id: 3,
            },
            Op::Publish {
                t: 0,
                qos: 1,
                retain: true,
                len: 100,
                targets: 0b1111,
            },
            Op::Deliver {
                c: 0,
                k: 0,
                pid: 7,
                pubrel: false,
            },
            Op::Qos2In { c: 0, pid: 9 },
            Op::Commit,
            Op::Reopen,
        ],
    );
    assert_eq!(h.model.state().sessions[0].queue.len(), 1);
    let _ = Path::new(".");
}

/// Same as `recovery_matches_model`, with large bodies, many acks and frequent compaction so that segments
/// roll, relocated records are replayed before the records they depend on, and segments are deleted. Fails
/// unless compaction actually deleted segments in the generated cases.
#[test]
fn recovery_matches_model_under_heavy_compaction() {
    use proptest::test_runner::{Config, TestRunner};
    let heavy = prop_oneof![
        6 => (0..TOPICS.len(), 1u8..=2, any::<bool>(), 2000usize..7000, any::<u8>())
            .prop_map(|(t, qos, retain, len, targets)| Op::Publish { t, qos, retain, len, targets }),
        6 => (0..CLIENTS.len(), 0usize..3).prop_map(|(c, k)| Op::Ack { c, k }),
        2 => (0..CLIENTS.len(), 0usize..8, 1u16..=u16::MAX, any::<bool>())
            .prop_map(|(c, k, pid, pubrel)| Op::Deliver { c, k, pid, pubrel }),
        2 => (1usize..40_000).prop_map(|budget| Op::Compact { budget }),
        1 => op(),
    ];
    let compacted = std::cell::Cell::new(0u64);
    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let setup: Vec<Op> = (0..CLIENTS.len())
        .map(|c| Op::Upsert {
            c,
            level: 5,
            expiry: 10,
            disconnected_at: 0,
        })
        .chain([
            Op::Sub {
                c: 0,
                f: 1,
                options: 2,
                sub_id: 1,
            },
            Op::Qos2In { c: 1, pid: 3 },
            Op::Commit,
        ])
        .collect();
    runner
        .run(&proptest::collection::vec(heavy, 50..300), |ops| {
            let mut h = Harness::new();
            run_ops(&mut h, &setup);
            run_ops(&mut h, &ops);
            h.apply(&Op::Reopen);
            for _ in 0..500 {
                h.commit();
                if h.store().compact_step(1 << 20).unwrap().idle {
                    break;
                }
            }
            h.commit();
            compacted.set(compacted.get() + h.store().stats().compacted_segments);
            h.check_live();
            h.apply(&Op::Reopen);
            Ok(())
        })
        .unwrap();
    assert!(compacted.get() > 0, "compaction never ran");
}
