//! Storage engine measurements (not a timed test; run by hand, numbers go into the issue note).
//!
//! ```text
//! cargo bench --bench store -- throughput [--messages 300000] [--window 4096] [--dir PATH]
//! cargo bench --bench store -- recovery   [--messages 1000000] [--dir PATH]
//! cargo bench --bench store -- all
//! ```
//! `throughput`: 100-byte QoS 1 messages, each a body record plus one enqueue, committed in groups of 64 (one
//! shard tick), under each fsync policy. Reports the open-loop append rate, and a "windowed" rate where at most
//! `--window` messages (default 4096) may wait for their durable acknowledgement (like publishers with receive maximum) so the cost
//! of syncing shows.
//! `recovery`: writes N queued 100-byte messages spread over 1000 offline sessions, reports RSS (anonymous =
//! indexes and heap, file = mapped log pages) after writing, then the time and RSS of recovering them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coremq::store::{FsyncPolicy, MsgRef, Record, Store, StoreConfig};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
struct Rss {
    anon: u64,
    file: u64,
}

fn rss() -> Rss {
    Rss {
        anon: status_kib("RssAnon:"),
        file: status_kib("RssFile:"),
    }
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TICK: usize = 64;

fn throughput(base: &Path, n: usize, window: u64) {
    println!(
        "== append throughput: {n} x 100-byte messages (body + 1 enqueue each), commit every {TICK}, window {window}"
    );
    let payload = [0x5au8; 100];
    for (name, policy) in [
        ("never", FsyncPolicy::Never),
        ("interval(10ms)", FsyncPolicy::default()),
        ("always", FsyncPolicy::Always),
    ] {
        for windowed in [false, true] {
            let dir = fresh_dir(base, "throughput");
            let cfg = StoreConfig {
                fsync: policy,
                ..StoreConfig::default()
            };
            let (mut st, _) = Store::open(&dir, 0, cfg).unwrap();
            st.append(&Record::SessionUpsert {
                client_id: "bench-subscriber",
                protocol_level: 5,
                expiry_secs: 3600,
                clean: false,
                disconnected_at: 0,
            })
            .unwrap();
            st.commit().unwrap();
            // Commit LSNs of groups not yet acknowledged, with their message counts.
            let mut waiting: std::collections::VecDeque<(coremq::store::Lsn, u64)> =
                Default::default();
            let mut unacked = 0u64;
            let start = Instant::now();
            let used0 = st.stats().used_bytes;
            for i in 0..n {
                let id = st.alloc_msg_id();
                st.append(&Record::Message {
                    msg_id: id,
                    topic: "bench/topic/1",
                    qos: 1,
                    retain: false,
                    payload: &payload,
                    properties: &[],
                    expires_unix: 0,
                })
                .unwrap();
                st.append(&Record::Enqueue {
                    client_id: "bench-subscriber",
                    msg_id: id,
                    packet_id: 0,
                })
                .unwrap();
                if i % TICK == TICK - 1 {
                    let lsn = st.commit().unwrap();
                    waiting.push_back((lsn, TICK as u64));
                    unacked += TICK as u64;
                    // Each tick the broker releases the acks whose group is durable.
                    loop {
                        let durable = st.durable_lsn();
                        while let Some(&(l, k)) = waiting.front() {
                            if l > durable {
                                break;
                            }
                            waiting.pop_front();
                            unacked -= k;
                        }
                        if !windowed || unacked < window {
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(20));
                    }
                }
            }
            let last = st.commit().unwrap();
            let appended = start.elapsed();
            assert!(st.wait_durable(last, Duration::from_secs(60)));
            let durable = start.elapsed();
            let s = st.stats();
            let bytes = (s.used_bytes - used0) as f64;
            let records = (2 * n) as f64;
            println!(
                "{name:>15} {:>9}: {:>10.0} msg/s {:>10.0} records/s {:>7.1} MB/s (appended in {:>6.3} s, all durable after {:>6.3} s, {} syncs)",
                if windowed { "windowed" } else { "open-loop" },
                n as f64 / durable.as_secs_f64(),
                records / durable.as_secs_f64(),
                bytes / durable.as_secs_f64() / 1e6,
                appended.as_secs_f64(),
                durable.as_secs_f64(),
                s.syncs
            );
            drop(st);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn recovery(base: &Path, n: usize) {
    println!("== recovery: {n} queued 100-byte messages over 1000 offline sessions");
    let dir = fresh_dir(base, "recovery");
    let payload = [0x33u8; 100];
    let sessions: Vec<String> = (0..1000).map(|i| format!("client-{i:04}")).collect();
    let r0 = rss();
    let write_start = Instant::now();
    {
        let (mut st, _) = Store::open(&dir, 0, StoreConfig::default()).unwrap();
        for s in &sessions {
            st.append(&Record::SessionUpsert {
                client_id: s,
                protocol_level: 5,
                expiry_secs: 86_400,
                clean: false,
                disconnected_at: 1,
            })
            .unwrap();
            st.append(&Record::SubAdd {
                client_id: s,
                filter: "bench/#",
                options: 1,
                subscription_id: 0,
            })
            .unwrap();
        }
        st.commit().unwrap();
        for i in 0..n {
            let id = st.alloc_msg_id();
            st.append(&Record::Message {
                msg_id: id,
                topic: "bench/topic/1",
                qos: 1,
                retain: false,
                payload: &payload,
                properties: &[],
                expires_unix: 0,
            })
            .unwrap();
            st.append(&Record::Enqueue {
                client_id: &sessions[i % sessions.len()],
                msg_id: id,
                packet_id: 0,
            })
            .unwrap();
            if i % TICK == TICK - 1 {
                st.commit().unwrap();
            }
        }
        st.commit().unwrap();
        st.sync().unwrap();
        // Give the syncer's page release a moment to finish (it runs after each sync).
        std::thread::sleep(Duration::from_millis(50));
        let r1 = rss();
        let s = st.stats();
        println!(
            "written in {:.2} s: {} segments, {:.1} MiB used, {:.1} MiB live",
            write_start.elapsed().as_secs_f64(),
            s.segments,
            s.used_bytes as f64 / 1048576.0,
            s.live_bytes as f64 / 1048576.0
        );
        println!(
            "RSS growth with the store open after writing: anon (indexes + heap) {:+.1} MiB, file (mapped log) {:+.1} MiB",
            mib(r1.anon as i64 - r0.anon as i64),
            mib(r1.file as i64 - r0.file as i64)
        );
    }
    // Recover in a fresh process so the RSS baseline holds no memory freed by the writer.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["recover-existing", "--dir"])
        .arg(&dir)
        .args(["--messages", &n.to_string()])
        .output()
        .expect("spawn recovery process");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "recovery process failed");
    let _ = std::fs::remove_dir_all(&dir);
}

fn recover_existing(dir: &Path, n: usize) {
    let r2 = rss();
    let t = Instant::now();
    let (st, rec) = Store::open(dir, 0, StoreConfig::default()).unwrap();
    let elapsed = t.elapsed();
    let queued: usize = rec.state.sessions.iter().map(|s| s.queue.len()).sum();
    assert_eq!(queued, n);
    let r3 = rss();
    println!(
        "recovered {queued} queued messages ({} records, {:.1} MiB scanned) in {:.3} s (report: {:?})",
        rec.report.records,
        rec.report.bytes_scanned as f64 / 1048576.0,
        elapsed.as_secs_f64(),
        rec.report.elapsed
    );
    println!(
        "RSS growth of a fresh process after recovery (incl. the returned State): anon {:+.1} MiB, file {:+.1} MiB",
        mib(r3.anon as i64 - r2.anon as i64),
        mib(r3.file as i64 - r2.file as i64)
    );
    drop(rec);
    let r4 = rss();
    println!(
        "RSS growth after dropping the returned State (store indexes only): anon {:+.1} MiB, file {:+.1} MiB",
        mib(r4.anon as i64 - r2.anon as i64),
        mib(r4.file as i64 - r2.file as i64)
    );
    // Read every queued body back (as reconnecting sessions would) and release the pages again.
    let state = st.snapshot();
    let t = Instant::now();
    let mut bytes = 0usize;
    for s in &state.sessions {
        for q in &s.queue {
            bytes += st.read_message(MsgRef(q.msg.0)).unwrap().payload.len();
        }
    }
    let r5 = rss();
    st.release_cached_pages();
    let r6 = rss();
    println!(
        "read back {} bodies ({:.1} MiB) in {:.3} s; file RSS after reads {:+.1} MiB, after release_cached_pages {:+.1} MiB",
        n,
        bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        mib(r5.file as i64 - r2.file as i64),
        mib(r6.file as i64 - r2.file as i64)
    );
    drop(state);
    drop(st);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args.first().cloned().unwrap_or_else(|| "all".into());
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let base = opt("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("coremq-store-bench"));
    std::fs::create_dir_all(&base).unwrap();
    let messages = opt("--messages").and_then(|v| v.parse().ok());
    if mode == "throughput" || mode == "all" {
        let window = opt("--window").and_then(|v| v.parse().ok()).unwrap_or(4096);
        throughput(&base, messages.unwrap_or(300_000), window);
    }
    if mode == "recover-existing" {
        recover_existing(&base, messages.unwrap_or(1_000_000));
        return;
    }
    if mode == "recovery" || mode == "all" {
        recovery(&base, messages.unwrap_or(1_000_000));
    }
    let _ = std::fs::remove_dir_all(&base);
}
