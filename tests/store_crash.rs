//! kill -9 in the middle of writing: a child process appends groups (body + enqueue to two sessions + acks of
//! old messages) and prints each message id once its group is durable; the parent SIGKILLs it at a random
//! moment and recovers. Every acknowledged message must be back, in order, with its body, and nothing may be
//! half-applied (a publish is in both sessions' queues or in neither).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coremq::store::{FsyncPolicy, MsgRef, Record, Store, StoreConfig};

const CHILD_ENV: &str = "COREMQ_STORE_CRASH_CHILD";

fn cfg() -> StoreConfig {
    StoreConfig {
        segment_size: 256 << 10,
        max_record_size: 16 << 10,
        fsync: FsyncPolicy::Interval(Duration::from_millis(2)),
        ..StoreConfig::default()
    }
}

fn body(id: u64) -> Vec<u8> {
    format!("message-{id:08}-").repeat(6).into_bytes()
}

/// The child: runs only when re-executed by `acknowledged_messages_survive_kill_9`. Bounded: stops by itself
/// after 20 s or 2M messages if nobody kills it.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mut st, _) = Store::open(std::path::Path::new(&dir), 0, cfg()).unwrap();
    for c in ["a", "b"] {
        if !st.snapshot().sessions.iter().any(|s| s.client_id == c) {
            st.append(&Record::SessionUpsert {
                client_id: c,
                protocol_level: 5,
                expiry_secs: 600,
                clean: false,
                disconnected_at: 0,
            })
            .unwrap();
        }
    }
    st.commit().unwrap();
    let started = Instant::now();
    let mut waiting: Vec<(coremq::store::Lsn, Vec<u64>)> = Vec::new();
    // Continue where the previous (killed) run left off: b's unacked messages are the oldest to ack.
    let mut written: Vec<u64> = st
        .snapshot()
        .sessions
        .iter()
        .find(|s| s.client_id == "b")
        .map(|s| s.queue.iter().map(|q| q.msg.0).collect())
        .unwrap_or_default();
    let mut b_acked = 0;
    let out = std::io::stdout();
    while started.elapsed() < Duration::from_secs(20) && written.len() < 2_000_000 {
        let mut group = Vec::new();
        for _ in 0..16 {
            let id = st.alloc_msg_id();
            let b = body(id);
            st.append(&Record::Message {
                msg_id: id,
                topic: "t",
                qos: 1,
                retain: false,
                payload: &b,
                properties: &[],
                expires_unix: 0,
            })
            .unwrap();
            st.append(&Record::Enqueue {
                client_id: "a",
                msg_id: id,
                packet_id: 0,
            })
            .unwrap();
            st.append(&Record::Enqueue {
                client_id: "b",
                msg_id: id,
                packet_id: 0,
            })
            .unwrap();
            group.push(id);
        }
        // Session "b" consumes: it acks, oldest first, what is more than 1000 messages behind, so compaction
        // has work.
        while b_acked + 1000 < written.len() {
            st.append(&Record::Ack {
                client_id: "b",
                msg_id: written[b_acked],
            })
            .unwrap();
            b_acked += 1;
        }
        written.extend_from_slice(&group);
        let lsn = st.commit().unwrap();
        waiting.push((lsn, group));
        let durable = st.durable_lsn();
        let mut lock = out.lock();
        waiting.retain(|(l, ids)| {
            if *l <= durable {
                for id in ids {
                    use std::io::Write;
                    let _ = writeln!(lock, "ACK {id}");
                }
                false
            } else {
                true
            }
        });
        drop(lock);
        st.compact_step(64 << 10).unwrap();
    }
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a varying number of acknowledgements.
        let target = 2000 + round * 3500;
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen < target && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(id) = l.strip_prefix("ACK ") {
                        acked.push(id.parse().unwrap());
                        seen += 1;
                    }
                }
                _ => break,
            }
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        assert!(seen > 0, "child produced no acknowledgements");
        eprintln!("round {round}: killed after {seen} acknowledgements");

        let (st, rec) = Store::open(dir.path(), 0, cfg()).unwrap();
        assert_eq!(rec.report.corruption_count, 0, "{:?}", rec.report);
        let a = rec
            .state
            .sessions
            .iter()
            .find(|s| s.client_id == "a")
            .expect("session a");
        let b = rec
            .state
            .sessions
            .iter()
            .find(|s| s.client_id == "b")
            .expect("session b");
        let qa: Vec<u64> = a.queue.iter().map(|q| q.msg.0).collect();
        // Session a never acks: its queue is every message ever committed, in order, with no gaps.
        assert!(
            qa.windows(2).all(|w| w[0] < w[1]),
            "queue of a out of order"
        );
        let present: std::collections::HashSet<u64> = qa.iter().copied().collect();
        for id in &acked {
            assert!(
                present.contains(id),
                "acknowledged message {id} lost in round {round}"
            );
        }
        // All-or-nothing groups: b's queue is a suffix of a's (b acks the oldest ones).
        let qb: Vec<u64> = b.queue.iter().map(|q| q.msg.0).collect();
        assert!(
            qa.ends_with(&qb),
            "b queue is not a suffix of a queue: a {} [{:?}..{:?}] b {} [{:?}..{:?}]",
            qa.len(),
            qa.first(),
            qa.last(),
            qb.len(),
            qb.first(),
            qb.last()
        );
        for &id in qa.iter().rev().take(50) {
            assert_eq!(st.read_message(MsgRef(id)).unwrap().payload, body(id));
        }
        drop(st);
    }
}
