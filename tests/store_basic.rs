//! Behaviour tests of the durable log that are easier to state directly than through the model test: locking,
//! durability policies, compaction bounds, capacity errors, and precise corruption reports.

use std::path::Path;
use std::time::Duration;

use coremq::codec::ReasonCode;
use coremq::store::{
    DeliveryState, DirLock, FsyncPolicy, MsgRef, Record, Store, StoreConfig, StoreError,
};

fn small(fsync: FsyncPolicy) -> StoreConfig {
    StoreConfig {
        segment_size: 64 << 10,
        fsync,
        max_record_size: 8 << 10,
        max_segments: 1000,
        max_group_bytes: 1 << 20,
        compact_live_ratio: 0.5,
        sync_bytes: 256 << 10,
    }
}

fn upsert(client_id: &str) -> Record<'_> {
    Record::SessionUpsert {
        client_id,
        protocol_level: 5,
        expiry_secs: 3600,
        clean: false,
        disconnected_at: 0,
    }
}

fn publish(st: &mut Store, topic: &str, payload: &[u8], to: &[&str]) -> StoreResult {
    let id = st.alloc_msg_id();
    st.append(&Record::Message {
        msg_id: id,
        topic,
        qos: 1,
        retain: false,
        payload,
        properties: &[],
        expires_unix: 0,
    })?;
    for c in to {
        st.append(&Record::Enqueue {
            client_id: c,
            msg_id: id,
            packet_id: 0,
        })?;
    }
    Ok(id)
}

type StoreResult = Result<u64, StoreError>;

#[test]
fn second_open_of_a_shard_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Never)).unwrap();
    let err = Store::open(dir.path(), 0, small(FsyncPolicy::Never))
        .err()
        .expect("second open must fail");
    match &err {
        StoreError::Locked { holder, path } => {
            assert_eq!(holder, &std::process::id().to_string());
            assert!(path.ends_with("shard-0/LOCK"), "{}", path.display());
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        err.to_string().contains("locked by another broker"),
        "{err}"
    );
    // Another shard of the same directory is independent.
    let (_b, _) = Store::open(dir.path(), 1, small(FsyncPolicy::Never)).unwrap();

    let _l = DirLock::lock_data_dir(dir.path()).unwrap();
    assert!(matches!(
        DirLock::lock_data_dir(dir.path()),
        Err(StoreError::Locked { .. })
    ));
}

#[test]
fn lock_is_released_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), 0, small(FsyncPolicy::Never)).unwrap());
    Store::open(dir.path(), 0, small(FsyncPolicy::Never)).unwrap();
}

fn roundtrip(policy: FsyncPolicy) {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![7u8; 100];
    {
        let (mut st, rec) = Store::open(dir.path(), 3, small(policy)).unwrap();
        assert!(rec.state.sessions.is_empty());
        st.append(&upsert("c1")).unwrap();
        st.append(&Record::SubAdd {
            client_id: "c1",
            filter: "a/#",
            options: 0x21,
            subscription_id: 5,
        })
        .unwrap();
        let id = publish(&mut st, "a/b", &body, &["c1"]).unwrap();
        st.append(&Record::Delivery {
            client_id: "c1",
            msg_id: id,
            packet_id: 42,
            state: DeliveryState::PubRelSent,
        })
        .unwrap();
        st.append(&Record::Qos2InPending {
            client_id: "c1",
            packet_id: 9,
        })
        .unwrap();
        st.append(&Record::RetainedSet {
            topic: "a/b",
            msg_id: id,
        })
        .unwrap();
        let lsn = st.commit().unwrap();
        assert!(
            st.wait_durable(lsn, Duration::from_secs(10)),
            "{policy:?} never became durable"
        );
        assert!(st.durable_lsn() >= lsn);
        if policy != FsyncPolicy::Never {
            assert!(st.stats().syncs > 0);
        }
        let m = st.read_message(MsgRef(id)).unwrap();
        assert_eq!(&m.payload[..], &body[..]);
        assert_eq!(m.topic, "a/b");
    }
    let (st, rec) = Store::open(dir.path(), 3, small(policy)).unwrap();
    let s = &rec.state.sessions[0];
    assert_eq!(s.client_id, "c1");
    assert_eq!(s.meta.expiry_secs, 3600);
    assert_eq!(s.subscriptions[0].filter, "a/#");
    assert_eq!(s.subscriptions[0].options, 0x21);
    assert_eq!(s.subscriptions[0].subscription_id, 5);
    assert_eq!(s.queue.len(), 1);
    assert_eq!(s.queue[0].delivery.unwrap().packet_id, 42);
    assert_eq!(
        s.queue[0].delivery.unwrap().state,
        DeliveryState::PubRelSent
    );
    assert_eq!(s.inbound_qos2, vec![9]);
    assert_eq!(
        rec.state.retained,
        vec![("a/b".to_string(), s.queue[0].msg)]
    );
    assert_eq!(
        &st.read_message(s.queue[0].msg).unwrap().payload[..],
        &body[..]
    );
    assert_eq!(rec.report.corruption_count, 0);
    assert_eq!(rec.report.truncated_at, None);
}

#[test]
fn roundtrip_always() {
    roundtrip(FsyncPolicy::Always);
}

#[test]
fn roundtrip_interval() {
    roundtrip(FsyncPolicy::Interval(Duration::from_millis(5)));
}

#[test]
fn roundtrip_never() {
    roundtrip(FsyncPolicy::Never);
}

#[test]
fn fsync_policy_parses() {
    assert_eq!(
        "always".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Always
    );
    assert_eq!("never".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Never);
    assert_eq!(
        "interval".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_millis(10))
    );
    assert_eq!(
        "interval:3ms".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Interval(Duration::from_millis(3))
    );
    assert!("sometimes".parse::<FsyncPolicy>().is_err());
    assert!("interval:0ms".parse::<FsyncPolicy>().is_err());
}

#[test]
fn config_reads_from_toml() {
    let c: StoreConfig =
        toml::from_str("fsync = \"interval:25ms\"\nsegment_size = 1048576\n").unwrap();
    assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(25)));
    assert_eq!(c.segment_size, 1 << 20);
    assert_eq!(c.max_segments, StoreConfig::default().max_segments);
    assert_eq!(c.fsync.to_string(), "interval:25ms");
    assert!(toml::from_str::<StoreConfig>("fsync = \"sometimes\"").is_err());
    assert!(toml::from_str::<StoreConfig>("segment_sise = 5").is_err());
}

#[test]
fn bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = small(FsyncPolicy::Never);
    c.segment_size = 1000;
    assert!(matches!(
        Store::open(dir.path(), 0, c),
        Err(StoreError::Config(_))
    ));
    let mut c = small(FsyncPolicy::Never);
    c.max_record_size = 0;
    assert!(matches!(
        Store::open(dir.path(), 0, c),
        Err(StoreError::Config(_))
    ));
    let mut c = small(FsyncPolicy::Never);
    c.compact_live_ratio = 1.5;
    assert!(matches!(
        Store::open(dir.path(), 0, c),
        Err(StoreError::Config(_))
    ));
    // A record limit above a quarter segment follows the segment size instead of failing.
    let mut c = small(FsyncPolicy::Never);
    c.max_record_size = c.segment_size;
    let (st, _) = Store::open(dir.path(), 0, c).unwrap();
    assert_eq!(st.config().max_record_size, (64 << 10) / 4);
}

#[test]
fn oversized_and_invalid_records_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut st, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Never)).unwrap();
    st.append(&upsert("c")).unwrap();
    let before = st.stats().used_bytes;
    let big = vec![0u8; 9 << 10];
    let err = publish(&mut st, "t", &big, &["c"]).unwrap_err();
    assert!(matches!(err, StoreError::RecordTooLarge { .. }), "{err:?}");
    assert_eq!(st.stats().used_bytes, before);
    assert!(matches!(
        st.append(&Record::Enqueue {
            client_id: "c",
            msg_id: 999,
            packet_id: 0,
        }),
        Err(StoreError::Invalid(_))
    ));
    let newer = publish(&mut st, "t", b"new", &[]).unwrap();
    let older = newer - 1;
    st.append(&Record::Message {
        msg_id: older + 1_000,
        topic: "t",
        qos: 1,
        retain: false,
        payload: b"x",
        properties: &[],
        expires_unix: 0,
    })
    .unwrap();
    st.append(&Record::Enqueue {
        client_id: "c",
        msg_id: older + 1_000,
        packet_id: 0,
    })
    .unwrap();
    // Queues are ordered by id: an older body cannot be queued behind a newer one.
    assert!(matches!(
        st.append(&Record::Enqueue {
            client_id: "c",
            msg_id: newer,
            packet_id: 0,
        }),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        st.append(&Record::Enqueue {
            client_id: "c",
            msg_id: older + 1_000,
            packet_id: 0,
        }),
        Err(StoreError::Invalid(_))
    ));
    let before = st.stats().used_bytes;
    assert!(matches!(
        st.append(&Record::SessionDelete { client_id: "zz" }),
        Err(StoreError::Invalid(_))
    ));
    let long = "x".repeat(70_000);
    assert!(matches!(
        st.append(&upsert(&long)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(st.stats().used_bytes, before);
}

#[test]
fn message_written_without_references_is_garbage_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut st, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Never)).unwrap();
    let id = publish(&mut st, "t", b"x", &[]).unwrap();
    assert!(st.read_message(MsgRef(id)).is_ok());
    st.commit().unwrap();
    assert!(matches!(
        st.read_message(MsgRef(id)),
        Err(StoreError::Unreadable { .. })
    ));
    assert_eq!(st.stats().live_bytes, 0);
}

/// 2000 messages of 200 bytes to two sessions, all but the last 10 acked: after compaction the disk holds about
/// the live data, and recovery still has exactly the remaining queue.
#[test]
fn compaction_returns_disk_use_near_live_size() {
    let dir = tempfile::tempdir().unwrap();
    let (mut st, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
    st.append(&upsert("a")).unwrap();
    st.append(&upsert("b")).unwrap();
    st.commit().unwrap();
    let body = vec![0xabu8; 200];
    let mut ids = Vec::new();
    for i in 0..2000 {
        ids.push(publish(&mut st, "t/x", &body, &["a", "b"]).unwrap());
        if i % 10 == 9 {
            st.commit().unwrap();
        }
    }
    st.commit().unwrap();
    let full = st.stats();
    assert!(full.segments >= 8, "{full:?}");
    for &id in &ids[..1990] {
        st.append(&Record::Ack {
            client_id: "a",
            msg_id: id,
        })
        .unwrap();
        st.append(&Record::Ack {
            client_id: "b",
            msg_id: id,
        })
        .unwrap();
    }
    st.commit().unwrap();
    st.sync().unwrap();
    let mut steps = 0;
    loop {
        let p = st.compact_step(16 << 10).unwrap();
        st.sync().unwrap();
        steps += 1;
        if p.idle || steps > 10_000 {
            break;
        }
    }
    let after = st.stats();
    assert!(after.compacted_segments > 0);
    // Live data is ~10 messages; the head segment, a spare and at most one partly compacted segment remain.
    assert!(after.segments <= 3, "segments left: {after:?}");
    assert!(after.disk_bytes <= 3 * (64 << 10), "{after:?}");
    assert!(
        after.used_bytes <= after.live_bytes * 2 + (64 << 10),
        "{after:?}"
    );
    let on_disk: u64 = std::fs::read_dir(dir.path().join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 3 * (64 << 10) + 64, "{on_disk}");
    drop(st);
    let (st, rec) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
    for s in &rec.state.sessions {
        let q: Vec<u64> = s.queue.iter().map(|q| q.msg.0).collect();
        assert_eq!(q, ids[1990..].to_vec(), "queue of {}", s.client_id);
        for m in &s.queue {
            assert_eq!(&st.read_message(m.msg).unwrap().payload[..], &body[..]);
        }
    }
}

#[test]
fn disk_budget_is_a_capacity_error_and_compaction_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(FsyncPolicy::Never);
    cfg.max_segments = 3;
    let (mut st, _) = Store::open(dir.path(), 0, cfg.clone()).unwrap();
    st.append(&upsert("a")).unwrap();
    let body = vec![1u8; 1000];
    let mut ids = Vec::new();
    let err = loop {
        match publish(&mut st, "t", &body, &["a"]) {
            Ok(id) => ids.push(id),
            Err(e) => break e,
        }
        st.commit().unwrap();
        assert!(ids.len() < 10_000);
    };
    assert!(matches!(err, StoreError::BudgetExceeded { .. }), "{err:?}");
    assert!(err.is_capacity());
    assert_eq!(err.reason_code(), ReasonCode::QuotaExceeded);
    assert!(st.check_capacity(1000).is_err());
    // The failed publish wrote its body but no enqueue; committing drops it as unreferenced.
    st.commit().unwrap();
    for &id in &ids {
        st.append(&Record::Ack {
            client_id: "a",
            msg_id: id,
        })
        .unwrap();
    }
    st.commit().unwrap();
    for _ in 0..100 {
        st.compact_step(1 << 20).unwrap();
    }
    st.check_capacity(1000).unwrap();
    publish(&mut st, "t", &body, &["a"]).unwrap();
    st.commit().unwrap();
}

/// One session per group; the record of session 4 is damaged. Recovery reports exactly that record's offset,
/// skips it, and keeps everything else.
#[test]
fn corrupt_record_in_the_middle_is_reported_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut starts = Vec::new();
    {
        let (mut st, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
        for i in 0..10 {
            starts.push(st.committed_lsn());
            st.append(&upsert(&format!("client-{i}"))).unwrap();
            st.commit().unwrap();
        }
    }
    let path = dir.path().join("shard-0").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    let start = starts[4].offset() as usize;
    // Flip a byte inside the client id of session 4's upsert.
    bytes[start + 12] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let (_st, rec) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
    let names: Vec<&str> = rec
        .state
        .sessions
        .iter()
        .map(|s| s.client_id.as_str())
        .collect();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(!names.contains(&"client-4"));
    assert_eq!(rec.report.corruption_count, 1, "{:?}", rec.report);
    let c = &rec.report.corruptions[0];
    assert_eq!((c.segment, c.offset), (0, start as u64));
    assert_eq!(rec.report.truncated_at, None);
}

/// A torn last record (the process died while copying it) is truncated; the groups before it survive.
#[test]
fn torn_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let last;
    {
        let (mut st, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
        st.append(&upsert("kept")).unwrap();
        last = st.commit().unwrap();
        st.append(&upsert("torn")).unwrap();
        st.commit().unwrap();
    }
    let path = dir.path().join("shard-0").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    // Keep the header of the torn record but lose the end of its body.
    let cut = last.offset() as usize + 14;
    bytes[cut..cut + 64].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let (mut st, rec) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
    let names: Vec<&str> = rec
        .state
        .sessions
        .iter()
        .map(|s| s.client_id.as_str())
        .collect();
    assert_eq!(names, vec!["kept"]);
    assert_eq!(rec.report.corruption_count, 0);
    let (seg, off, _) = rec.report.truncated_at.expect("truncation reported");
    assert_eq!((seg, off), (0, last.offset() as u64));
    // Appending after the truncation point works and survives another restart.
    st.append(&upsert("after")).unwrap();
    st.commit().unwrap();
    drop(st);
    let (_st, rec) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
    assert_eq!(rec.state.sessions.len(), 2);
    assert_eq!(rec.report.truncated_at, None);
}

/// Real ENOSPC from a tiny tmpfs: creating a segment fails with `DiskFull` (a capacity error), not a crash or
/// a silent drop. Needs root to mount; prints and returns otherwise.
#[test]
fn disk_full_is_reported_as_capacity_error() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=300k", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "SKIPPED disk_full_is_reported_as_capacity_error: cannot mount tmpfs (not root?)"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let (mut st, _) = Store::open(&mnt, 0, small(FsyncPolicy::Always)).unwrap();
    st.append(&upsert("a")).unwrap();
    let body = vec![3u8; 4000];
    let mut n = 0;
    let err = loop {
        match publish(&mut st, "t", &body, &["a"]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        st.commit().unwrap();
        assert!(n < 1000, "tmpfs never filled up");
    };
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
    assert!(err.is_capacity());
    assert_eq!(err.reason_code(), ReasonCode::QuotaExceeded);
    // Everything committed before the error is intact.
    st.commit().unwrap();
    drop(st);
    let (_st, rec) = Store::open(&mnt, 0, small(FsyncPolicy::Always)).unwrap();
    assert_eq!(rec.state.sessions[0].queue.len(), n);
}

/// A pending v5 will survives a reopen (and compaction of the segment that held it), is replaced by a newer one,
/// and is gone after `WillCleared` or with its session.
#[test]
fn pending_wills_are_kept_until_cleared_or_their_session_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let will_for = |client_id: &'static str, payload: &'static [u8]| Record::WillPending {
        client_id,
        due_unix: 1_700_000_042,
        topic: "will/dev",
        qos: 1,
        retain: true,
        payload,
        properties: &[],
    };
    let will = |payload: &'static [u8]| will_for("dev", payload);
    let will_of = |st: &Store, id: &str| {
        st.snapshot()
            .sessions
            .into_iter()
            .find(|s| s.client_id == id)
            .and_then(|s| s.pending_will)
    };
    {
        let (mut st, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
        st.append(&upsert("dev")).unwrap();
        st.append(&upsert("other")).unwrap();
        st.append(&will(b"old")).unwrap();
        st.append(&will(b"new")).unwrap();
        st.append(&will_for("other", b"x")).unwrap();
        st.commit().unwrap();
        st.sync().unwrap();
    }
    let (mut st, rec) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
    let dev = rec
        .state
        .sessions
        .iter()
        .find(|s| s.client_id == "dev")
        .unwrap();
    let w = dev.pending_will.as_ref().expect("pending will restored");
    assert_eq!(&w.payload[..], b"new", "the newer will replaces the older");
    assert_eq!(
        (w.due_unix, w.topic.as_str(), w.qos, w.retain),
        (1_700_000_042, "will/dev", 1, true)
    );
    // Compaction keeps the live will.
    while st.compact_step(1 << 20).unwrap().deleted_segments > 0 {}
    assert!(will_of(&st, "dev").is_some());
    st.append(&Record::WillCleared { client_id: "dev" })
        .unwrap();
    st.append(&Record::SessionDelete { client_id: "other" })
        .unwrap();
    assert!(
        st.append(&Record::WillCleared { client_id: "dev" })
            .is_err(),
        "clearing a will that is not pending is refused"
    );
    st.commit().unwrap();
    st.sync().unwrap();
    drop(st);
    let (st, _) = Store::open(dir.path(), 0, small(FsyncPolicy::Always)).unwrap();
    assert!(will_of(&st, "dev").is_none());
    assert!(st
        .snapshot()
        .sessions
        .iter()
        .all(|s| s.client_id != "other"));
}
