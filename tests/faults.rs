//! Fault injection with the real binary (issue 20): the data directory is a small ext4 file system on a loop
//! device, so the disk can really fill up (ENOSPC from `fallocate`) and really turn read-only during traffic
//! (ext4 `errors=remount-ro` after an error, forced with `/sys/fs/ext4/DEV/trigger_fs_error`). In both cases
//! the broker must refuse or withhold acknowledgements, never acknowledge and then lose, and never crash; what
//! it acknowledged must arrive after `kill -9` and a restart.
//!
//! Needs root (mount, loop devices); prints SKIPPED and passes otherwise. A slow disk (fsync delayed) cannot be
//! made here: the kernel has no device-mapper (`dm-delay`) and no cgroup v2 io controller; the shard's reaction
//! to a log that does not keep up is covered by the sans-io tests (`log_congested`, MAX_UNDURABLE_ROUNDS).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coremq::codec::{ProtocolVersion, QoS};

use common::resilient::Published;
use common::resilient::{drain_session, publish_until, subscribe_persistent, PubSpec, Received};
use common::{id_on_shard, write_config, Broker};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// An ext4 file system in a file, loop-mounted with `errors=remount-ro`; unmounted on drop.
struct Ext4 {
    dir: tempfile::TempDir,
    img: PathBuf,
    mnt: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Ext4 {
    fn mount(size_mib: u64, test: &str) -> Option<Ext4> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED {test}: needs root to mount a loop device");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let fs = Ext4 { dir, img, mnt };
        if !run("mkfs.ext4", &["-q", "-F", fs.img.to_str().unwrap()]) || !fs.mount_again() {
            eprintln!("SKIPPED {test}: cannot make or loop-mount an ext4 file system");
            return None;
        }
        Some(fs)
    }

    fn mount_again(&self) -> bool {
        run(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                self.img.to_str().unwrap(),
                self.mnt.to_str().unwrap(),
            ],
        )
    }

    /// The broker (2 shards, small segments) on this file system's data directory; its config lives beside the
    /// image, off the file system under test.
    fn start_broker(&self) -> Broker {
        let cfg = write_config(self.dir.path(), SMALL_SEGMENTS);
        Broker::start_in(&self.data(), &["--config", &cfg])
    }

    fn data(&self) -> PathBuf {
        let d = self.mnt.join("data");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The loop device's name (`loop0`), for its `/sys/fs/ext4` entry.
    fn device(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        let src = String::from_utf8(out.stdout).unwrap();
        Path::new(src.trim())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// An ext4 error: with `errors=remount-ro` the file system turns read-only at once, files open or not.
    fn trigger_error(&self) -> bool {
        std::fs::write(
            format!("/sys/fs/ext4/{}/trigger_fs_error", self.device()),
            "1",
        )
        .is_ok()
    }

    fn read_only(&self) -> bool {
        std::fs::write(self.mnt.join("probe"), b"x").is_err()
    }

    /// Unmount, repair (the error left the file system marked), mount read-write again.
    fn remount_repaired(&self) {
        assert!(run("umount", &[self.mnt.to_str().unwrap()]));
        // e2fsck exits 1 when it fixed something.
        let _ = Command::new("e2fsck")
            .args(["-fy", self.img.to_str().unwrap()])
            .output();
        assert!(self.mount_again(), "ext4 image does not mount again");
    }

    /// Fill the file system with a ballast file until ENOSPC; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.mnt.join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let m = self.mnt.to_str().unwrap();
        if !run("umount", &[m]) {
            let _ = run("umount", &["-l", m]);
        }
    }
}

/// Small segments: the default 64 MiB segment would not fit these disks (see the start-up note in the README).
const SMALL_SEGMENTS: &str =
    "[store]\nsegment_size = 1048576\nmax_record_size = 65536\nmax_group_bytes = 1048576\n";

/// Publishers of `specs` against `addr` until `stop`, each in its own thread.
fn start_publishers(
    specs: &[PubSpec],
    addr: std::net::SocketAddr,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Published>> {
    specs
        .iter()
        .cloned()
        .map(|spec| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                publish_until(&spec, &|| Some(addr), &|| stop.load(Ordering::SeqCst))
            })
        })
        .collect()
}

fn spec(id: &str, shard: u16, version: ProtocolVersion, topic: &str, qos: QoS) -> PubSpec {
    PubSpec {
        id: id_on_shard(id, shard, 2),
        version,
        topic: topic.into(),
        qos,
        rate: 0,
        window: 32,
        size: 1000,
    }
}

fn report(specs: &[PubSpec], results: &[Published]) {
    for (s, r) in specs.iter().zip(results) {
        eprintln!(
            "{}: sent {}, acknowledged {}, refused {}, connections broken {}",
            s.topic,
            r.sent,
            r.acked.len(),
            r.refused,
            r.broken
        );
    }
}

/// What each persistent subscriber in `subs` has waiting on `b`.
fn drain_all(b: &Broker, subs: &[String]) -> Vec<(String, Received)> {
    subs.iter()
        .map(|id| {
            let mut r = Received::default();
            drain_session(b.addr, id, V3, &mut r, Duration::from_secs(3));
            (id.clone(), r)
        })
        .collect()
}

/// Every acknowledged message of every spec arrived at every subscriber; QoS 2 exactly once.
fn check_all(subs: &[(String, Received)], specs: &[PubSpec], acked: &[Vec<u32>]) {
    for (id, got) in subs {
        for (s, acked) in specs.iter().zip(acked) {
            let lost = got.lost(&s.topic, acked);
            assert!(
                lost.is_empty(),
                "{id} {}: {} of {} acknowledged messages lost, first {:?}",
                s.topic,
                lost.len(),
                acked.len(),
                &lost[..lost.len().min(10)]
            );
        }
        assert!(got.qos2_dups.is_empty(), "{id}: {:?}", got.qos2_dups);
    }
}

/// The disk fills up under traffic (a ballast file takes the rest of it): v5 publishers get 0x97, 3.1.1
/// publishers lose the connection without the acknowledgement, the broker keeps running, restarts on the full
/// disk after `kill -9`, and everything acknowledged arrives. With the ballast gone, publishing works again.
#[test]
fn a_disk_that_fills_up_refuses_and_loses_nothing_acknowledged() {
    let Some(fs) = Ext4::mount(
        48,
        "a_disk_that_fills_up_refuses_and_loses_nothing_acknowledged",
    ) else {
        return;
    };
    let mut b = fs.start_broker();
    let subs = [
        id_on_shard("full-far", 1, 2),
        id_on_shard("full-near", 0, 2),
    ];
    for id in &subs {
        subscribe_persistent(b.addr, id, "full/#", V3);
    }
    let ballast = fs.fill();
    let specs = [
        spec("full-v5q1", 0, V5, "full/v5q1", QoS::AtLeastOnce),
        spec("full-v5q2", 1, V5, "full/v5q2", QoS::ExactlyOnce),
        spec("full-v3q1", 0, V3, "full/v3q1", QoS::AtLeastOnce),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let pubs = start_publishers(&specs, b.addr, &stop);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<_> = pubs.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(b.is_running(), "the broker died when the disk filled up");
    report(&specs, &results);
    assert!(
        results[0].refused + results[1].refused > 0,
        "the disk never filled up"
    );
    assert!(
        results[2].broken > 0,
        "the 3.1.1 publisher was never refused"
    );
    let acked: Vec<Vec<u32>> = results.iter().map(|r| r.acked.clone()).collect();
    assert!(acked.iter().all(|a| !a.is_empty()));

    b.kill9();
    let b = fs.start_broker();
    check_all(&drain_all(&b, &subs), &specs, &acked);

    // Room again: the same publisher is acknowledged again.
    std::fs::remove_file(ballast).unwrap();
    let again = PubSpec {
        rate: 200,
        ..specs[0].clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let h = start_publishers(std::slice::from_ref(&again), b.addr, &stop);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let r = h.into_iter().next().unwrap().join().unwrap();
    assert!(
        !r.acked.is_empty() && r.refused == 0,
        "after the disk has room again: {r:?}"
    );
}

/// The file system turns read-only in the middle of the traffic (what ext4 does after an I/O error with
/// `errors=remount-ro`): the broker keeps running and stops acknowledging; after `kill -9`, a repair and a
/// restart, everything it acknowledged arrives.
#[test]
fn a_data_dir_that_turns_read_only_loses_nothing_acknowledged() {
    let Some(fs) = Ext4::mount(
        64,
        "a_data_dir_that_turns_read_only_loses_nothing_acknowledged",
    ) else {
        return;
    };
    let mut b = fs.start_broker();
    let subs = [id_on_shard("ro-far", 1, 2), id_on_shard("ro-near", 0, 2)];
    for id in &subs {
        subscribe_persistent(b.addr, id, "ro/#", V3);
    }
    let specs = [
        PubSpec {
            rate: 2000,
            ..spec("ro-v5q1", 0, V5, "ro/v5q1", QoS::AtLeastOnce)
        },
        PubSpec {
            rate: 2000,
            ..spec("ro-v3q2", 1, V3, "ro/v3q2", QoS::ExactlyOnce)
        },
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let pubs = start_publishers(&specs, b.addr, &stop);
    std::thread::sleep(Duration::from_millis(800));
    assert!(fs.trigger_error(), "cannot trigger an ext4 error");
    assert!(fs.read_only(), "the file system did not turn read-only");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<_> = pubs.into_iter().map(|h| h.join().unwrap()).collect();
    let alive = b.is_running();
    report(&specs, &results);
    assert!(alive, "the broker died when its data dir turned read-only");
    let acked: Vec<Vec<u32>> = results.iter().map(|r| r.acked.clone()).collect();
    assert!(acked.iter().all(|a| !a.is_empty()));

    b.kill9();
    fs.remount_repaired();
    let b = fs.start_broker();
    check_all(&drain_all(&b, &subs), &specs, &acked);
}

/// A data directory without room for the first log segment refuses the start with the reason, promptly; the
/// store used to wait for a syncer that was never started, so the broker hung (ignoring SIGTERM) instead.
#[test]
fn a_disk_too_small_for_the_first_segment_refuses_the_start() {
    let test = "a_disk_too_small_for_the_first_segment_refuses_the_start";
    let Some(fs) = Ext4::mount(16, test) else {
        return;
    };
    let data = fs.data();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coremq"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the broker neither started nor exited within 30 s on a disk without room for a segment");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the start must be refused");
    assert!(err.contains("disk full"), "the reason must be given: {err}");
}
