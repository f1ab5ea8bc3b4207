//! Drives tuning/check.sh, apply.sh and revert.sh against fake roots (temporary
//! directories laid out like /proc/sys, /sys, /etc, /run): the host is never touched,
//! except for read-only checks and an optional round trip inside a private network
//! namespace (`unshare -n`), which has its own copy of the per-namespace net.* sysctls.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(name)
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script(name))
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .expect("bash runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn squeeze(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

/// A directory laid out like the parts of / the scripts read and write.
struct FakeRoot {
    dir: tempfile::TempDir,
}

impl FakeRoot {
    fn empty() -> Self {
        FakeRoot {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Values of a stock Linux 6.x box with 24 GiB, 4 CPUs, systemd, conntrack
    /// loaded, irqbalance running and one NIC with two MSI interrupts.
    fn untuned() -> Self {
        let r = FakeRoot::empty();
        for (key, value) in [
            ("fs/nr_open", "1048576"),
            ("fs/file-max", "2466193"),
            ("net/core/somaxconn", "4096"),
            ("net/core/netdev_max_backlog", "1000"),
            ("net/core/busy_poll", "0"),
            ("net/core/busy_read", "0"),
            ("net/core/rps_sock_flow_entries", "0"),
            ("net/ipv4/tcp_max_syn_backlog", "2048"),
            ("net/ipv4/tcp_mem", "287901\t383869\t575802"),
            ("net/ipv4/tcp_rmem", "4096\t131072\t6291456"),
            ("net/ipv4/tcp_wmem", "4096\t16384\t4194304"),
            ("net/ipv4/ip_local_port_range", "32768\t60999"),
            ("net/ipv4/tcp_tw_reuse", "2"),
            ("net/ipv4/tcp_fin_timeout", "60"),
            ("net/netfilter/nf_conntrack_max", "262144"),
            ("net/netfilter/nf_conntrack_buckets", "65536"),
            ("vm/max_map_count", "65530"),
        ] {
            r.write(&format!("proc/sys/{key}"), &format!("{value}\n"));
        }
        r.write(
            "proc/meminfo",
            "MemTotal:       24684096 kB\nMemFree:        18969016 kB\n",
        );
        r.set_limits("1024", "524288", "8388608", "8388608");
        r.write(
            "sys/kernel/mm/transparent_hugepage/enabled",
            "[always] madvise never\n",
        );
        r.write(
            "sys/kernel/mm/transparent_hugepage/defrag",
            "always defer defer+madvise [madvise] never\n",
        );
        r.write("sys/devices/system/cpu/online", "0-3\n");
        for cpu in 0..4 {
            r.write(
                &format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "powersave\n",
            );
        }
        r.mkdir("run/systemd/system");
        for irq in ["40", "41"] {
            r.mkdir(&format!("sys/class/net/eth0/device/msi_irqs/{irq}"));
        }
        r.write("proc/irq/40/smp_affinity_list", "0-3\n");
        r.write("proc/irq/41/smp_affinity_list", "3\n");
        r.write("proc/77/comm", "irqbalance\n");
        // The operator installed the shipped unit as-is.
        r.install_unit(&std::fs::read_to_string(script("coremq.service")).unwrap());
        r
    }

    /// An untuned root fixed by hand the way an operator would, for 1M / 4 cores.
    fn tuned() -> Self {
        let r = FakeRoot::untuned();
        for (key, value) in [
            ("fs/nr_open", "2097152"),
            ("net/core/somaxconn", "65535"),
            ("net/core/netdev_max_backlog", "16384"),
            ("net/ipv4/tcp_max_syn_backlog", "65535"),
            ("net/ipv4/tcp_mem", "1048576\t1400000\t2100000"),
            ("net/ipv4/tcp_rmem", "4096\t8192\t6291456"),
            ("net/ipv4/tcp_wmem", "4096\t8192\t4194304"),
            ("net/ipv4/tcp_fin_timeout", "10"),
            ("net/netfilter/nf_conntrack_max", "2097152"),
            ("net/netfilter/nf_conntrack_buckets", "524288"),
            ("vm/max_map_count", "1048576"),
        ] {
            r.write(&format!("proc/sys/{key}"), &format!("{value}\n"));
        }
        r.set_limits("2097152", "2097152", "67108864", "67108864");
        r.write(
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        );
        for cpu in 0..4 {
            r.write(
                &format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "performance\n",
            );
        }
        r.install_unit(
            "[Service]\nExecStart=/usr/local/bin/coremq\nLimitNOFILE=2097152\nLimitMEMLOCK=64M\n",
        );
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root_arg(&self) -> String {
        self.path().to_str().expect("utf-8 temp path").to_owned()
    }

    fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.path().join(rel)).expect("mkdir");
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn set_limits(&self, nofile_soft: &str, nofile_hard: &str, lock_soft: &str, lock_hard: &str) {
        self.write(
            "proc/self/limits",
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max cpu time              unlimited            unlimited            seconds   \n\
                 Max open files            {nofile_soft:<20} {nofile_hard:<20} files     \n\
                 Max locked memory         {lock_soft:<20} {lock_hard:<20} bytes     \n"
            ),
        );
    }

    fn install_unit(&self, body: &str) {
        self.write("etc/systemd/system/coremq.service", body);
    }

    /// Every file (bytes and mode) and directory under the root.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                let entry = entry.expect("entry");
                let path = entry.path();
                let meta = entry.metadata().expect("metadata");
                let rel = path.strip_prefix(base).unwrap().to_path_buf();
                let mode = meta.permissions().mode() & 0o7777;
                if meta.is_dir() {
                    out.insert(rel, (mode, b"<dir>".to_vec()));
                    walk(base, &path, out);
                } else {
                    out.insert(rel, (mode, std::fs::read(&path).expect("read")));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.path(), self.path(), &mut out);
        out
    }
}

fn check_json(root: &FakeRoot, extra: &[&str]) -> (i32, Value) {
    let r = root.root_arg();
    let mut args = vec!["--root", r.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = run("check.sh", &args);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check.sh --json is not JSON ({e}): {}{}",
            stdout(&out),
            stderr(&out)
        )
    });
    (code(&out), json)
}

fn setting<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["settings"]
        .as_array()
        .expect("settings array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no setting {name} in {json}"))
}

fn status(json: &Value, name: &str) -> String {
    setting(json, name)["status"].as_str().unwrap().to_owned()
}

fn statuses(json: &Value) -> BTreeMap<String, String> {
    json["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn check_untuned_root_fails_on_the_right_settings() {
    let root = FakeRoot::untuned();
    let (rc, json) = check_json(&root, &["--connections", "1M", "--cores", "4"]);
    assert_eq!(rc, 1, "{json}");
    assert_eq!(json["ok"], false);
    assert_eq!(json["target"]["connections"], 1_000_000);
    assert_eq!(json["target"]["cores"], 4);
    for failing in [
        "fs.nr_open",
        "systemd.coremq.LimitNOFILE",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_mem",
        "vm.max_map_count",
        "net.netfilter.nf_conntrack_max",
    ] {
        assert_eq!(
            status(&json, failing),
            "FAIL",
            "{failing}: {}",
            setting(&json, failing)
        );
    }
    for passing in ["fs.file-max", "memory.budget"] {
        assert_eq!(
            status(&json, passing),
            "PASS",
            "{passing}: {}",
            setting(&json, passing)
        );
    }
    for warned in [
        "net.core.netdev_max_backlog",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_fin_timeout",
        "thp.enabled",
        "cpu.governor",
        // The shell's limits only advise when systemd starts the broker.
        "limits.process.nofile",
        // The default 8 MiB is exactly glommio's 4 x 2 MiB: the io_uring buffer rings' 4 pages do not fit.
        "limits.process.memlock",
    ] {
        assert_eq!(
            status(&json, warned),
            "WARN",
            "{warned}: {}",
            setting(&json, warned)
        );
    }
    assert_eq!(status(&json, "thp.defrag"), "PASS");
    assert_eq!(status(&json, "net.core.busy_poll"), "OPT");
    assert_eq!(json["failed"], 7);

    let nr_open = setting(&json, "fs.nr_open");
    assert_eq!(nr_open["current"], "1048576");
    // 1M + 5% churn + 1024 + 4 x 256: the same arithmetic as the broker's start-up check.
    assert_eq!(
        nr_open["minimum"],
        format!(">= {}", coremq::limits::required_open_files(1_000_000, 4))
    );
    assert_eq!(nr_open["recommended"], "1114112");
    // tcp_mem: 2 pages per socket, low:pressure:high = 1/2 : 2/3 : 1.
    assert_eq!(
        setting(&json, "net.ipv4.tcp_mem")["recommended"],
        "1000000 1333333 2000000"
    );
    assert_eq!(
        setting(&json, "net.ipv4.tcp_mem")["current"],
        "287901 383869 575802"
    );
    assert_eq!(
        setting(&json, "systemd.coremq.LimitNOFILE")["current"],
        "1048576"
    );
    assert_eq!(status(&json, "systemd.coremq.LimitMEMLOCK"), "PASS");
    assert_eq!(
        setting(&json, "limits.process.memlock")["minimum"],
        format!(
            ">= {}",
            coremq::limits::required_memlock_bytes(4, 512 * 1024)
                + coremq::limits::uring_memlock_bytes(4)
        )
    );
}

#[test]
fn check_table_and_exit_code() {
    let root = FakeRoot::untuned();
    let out = run("check.sh", &["--root", &root.root_arg()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("fs.nr_open "))
        .unwrap_or_else(|| panic!("no fs.nr_open row in:\n{text}"));
    for col in ["1048576", "1114112", "required", "FAIL"] {
        assert!(row.contains(col), "{col:?} missing from {row:?}");
    }
    assert!(text.contains("SETTING") && text.contains("RECOMMENDED") && text.contains("STATUS"));
    assert!(text.contains("required setting(s) FAIL"), "{text}");
}

#[test]
fn check_tuned_root_passes_and_one_regression_fails_it() {
    let root = FakeRoot::tuned();
    let (rc, json) = check_json(&root, &["--cores", "4"]);
    let bad: Vec<_> = statuses(&json)
        .into_iter()
        .filter(|(_, s)| s == "FAIL")
        .collect();
    assert_eq!(rc, 0, "failing: {bad:?}");
    assert_eq!(json["ok"], true);
    assert_eq!(status(&json, "systemd.coremq.LimitNOFILE"), "PASS");
    assert_eq!(status(&json, "limits.process.nofile"), "PASS");

    root.write("proc/sys/net/core/somaxconn", "4096\n");
    let (rc, json) = check_json(&root, &["--cores", "4"]);
    assert_eq!(rc, 1);
    let failing: Vec<_> = statuses(&json)
        .into_iter()
        .filter(|(_, s)| s == "FAIL")
        .collect();
    assert_eq!(
        failing,
        vec![("net.core.somaxconn".to_owned(), "FAIL".to_owned())]
    );

    // A smaller target is satisfied by the kernel default.
    let (rc, _) = check_json(&root, &["--cores", "4", "--connections", "50000"]);
    assert_eq!(rc, 0);
}

#[test]
fn check_sizes_from_connections_ram_and_role() {
    let root = FakeRoot::untuned();
    let (_, json) = check_json(&root, &["--connections", "10000", "--cores", "2"]);
    // 10k connections fit the stock kernel apart from nothing required.
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(
        setting(&json, "fs.nr_open")["minimum"],
        format!(">= {}", coremq::limits::required_open_files(10_000, 2))
    );

    // Loopback test box: both ends count, and the load generator settings become required.
    let (_, json) = check_json(&root, &["--role", "both", "--cores", "4"]);
    assert_eq!(
        setting(&json, "net.ipv4.ip_local_port_range")["level"],
        "required"
    );
    assert_eq!(status(&json, "net.ipv4.ip_local_port_range"), "FAIL");
    // 2M sockets x 2 pages = 4M pages would not fit: capped by what 24 GiB leaves after
    // 2M x 3900 B slab, 1M x 512 B user space and 1 GiB: (25276514304 - 7.8e9 - 5.12e8 - 2^30) / 4096.
    assert_eq!(
        setting(&json, "net.ipv4.tcp_mem")["recommended"],
        "1939791 2586388 3879583"
    );
    let note = setting(&json, "net.ipv4.ip_local_port_range")["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        note.contains("28232 ports") && note.contains("36 source addresses"),
        "{note}"
    );

    // Not enough RAM for the target: memory budget fails and tcp_mem is capped by RAM.
    root.write("proc/meminfo", "MemTotal:        4194304 kB\n");
    let (rc, json) = check_json(&root, &["--cores", "4"]);
    assert_eq!(rc, 1);
    assert_eq!(status(&json, "memory.budget"), "FAIL");
    let high: u64 = setting(&json, "net.ipv4.tcp_mem")["recommended"]
        .as_str()
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        high * 4096 < 4 << 30,
        "tcp_mem high {high} pages exceeds RAM"
    );
}

#[test]
fn check_reads_systemd_drop_ins_in_systemd_order() {
    let root = FakeRoot::tuned();
    // A later drop-in (by file name) from /usr/lib overrides the unit...
    root.write(
        "usr/lib/systemd/system/coremq.service.d/50-vendor.conf",
        "[Service]\nLimitNOFILE=65536\n",
    );
    let (rc, json) = check_json(&root, &["--cores", "4"]);
    assert_eq!(rc, 1);
    assert_eq!(
        setting(&json, "systemd.coremq.LimitNOFILE")["current"],
        "65536"
    );
    // ...until /etc masks it with a file of the same name.
    root.write(
        "etc/systemd/system/coremq.service.d/50-vendor.conf",
        "[Service]\nLimitNOFILE=1500000:2000000\n",
    );
    let (rc, json) = check_json(&root, &["--cores", "4"]);
    assert_eq!(
        setting(&json, "systemd.coremq.LimitNOFILE")["current"],
        "1500000:2000000"
    );
    assert_eq!(rc, 0, "{json}");
    // A section does not carry over into the next file.
    root.write(
        "etc/systemd/system/coremq.service.d/55-headerless.conf",
        "LimitNOFILE=10\n",
    );
    let (rc, _) = check_json(&root, &["--cores", "4"]);
    assert_eq!(rc, 0);
    // Keys outside [Service] do not count.
    root.write(
        "etc/systemd/system/coremq.service.d/60-wrong.conf",
        "[Unit]\nLimitMEMLOCK=1K\n",
    );
    let (_, json) = check_json(&root, &["--cores", "4"]);
    assert_eq!(
        setting(&json, "systemd.coremq.LimitMEMLOCK")["current"],
        "64M"
    );
    // Without systemd the unit rows are skipped and the shell's limits are required.
    std::fs::remove_dir_all(root.path().join("run/systemd")).unwrap();
    root.set_limits("1024", "4096", "8388608", "8388608");
    let (rc, json) = check_json(&root, &["--cores", "4"]);
    assert_eq!(rc, 1);
    assert_eq!(status(&json, "systemd.coremq.LimitNOFILE"), "SKIP");
    assert_eq!(status(&json, "limits.process.nofile"), "FAIL");
}

#[test]
fn check_irq_isolation() {
    let root = FakeRoot::untuned();
    let (_, json) = check_json(&root, &["--broker-cpus", "0-1"]);
    assert_eq!(json["target"]["cores"], 2);
    assert_eq!(status(&json, "irq.affinity"), "WARN");
    let note = setting(&json, "irq.affinity")["note"]
        .as_str()
        .unwrap()
        .to_owned();
    // IRQ 40 (0-3) hits broker CPUs, IRQ 41 (3) does not.
    assert!(
        note.contains("eth0:40") && !note.contains("eth0:41"),
        "{note}"
    );
    assert_eq!(setting(&json, "irq.affinity")["recommended"], "2-3");
    assert_eq!(status(&json, "irqbalance"), "WARN");
    root.write(
        "etc/systemd/system/irqbalance.service.d/x.conf",
        "[Service]\nEnvironment=IRQBALANCE_BANNED_CPULIST=0-1\n",
    );
    root.write("proc/irq/40/smp_affinity_list", "2-3\n");
    let (_, json) = check_json(&root, &["--broker-cpus", "0-1"]);
    assert_eq!(status(&json, "irqbalance"), "PASS");
    assert_eq!(status(&json, "irq.affinity"), "PASS");
}

#[test]
fn bad_arguments_are_rejected_clearly() {
    let root = FakeRoot::untuned();
    let r = root.root_arg();
    for (args, needle) in [
        (vec!["--connections", "lots"], "--connections"),
        (vec!["--connections", "0"], "greater than zero"),
        (vec!["--role", "client"], "--role"),
        (vec!["--broker-cpus", "0-a"], "--broker-cpus"),
        (vec!["--frobnicate"], "unknown option"),
        (vec!["--cores"], "needs a value"),
    ] {
        let mut full = vec!["--root", r.as_str()];
        full.extend(args.iter().copied());
        for name in ["check.sh", "apply.sh"] {
            let out = run(name, &full);
            assert_eq!(code(&out), 2, "{name} {args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains(needle),
                "{name} {args:?}: {}",
                stderr(&out)
            );
        }
    }
    let out = run("check.sh", &["--root", "/nonexistent/coremq-root"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

#[test]
fn apply_dry_run_prints_every_change_and_touches_nothing() {
    let root = FakeRoot::untuned();
    let before = root.snapshot();
    // --dry-run is the default; give it explicitly once and implicitly once.
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec![
            "--root".to_owned(),
            root.root_arg(),
            "--cores".into(),
            "4".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run("apply.sh", &args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        // Compare with runs of spaces collapsed: column widths are cosmetic.
        let text = squeeze(&stdout(&out));
        for line in [
            "sysctl fs.nr_open                       1048576 -> 1114112",
            "sysctl net.core.somaxconn               4096 -> 65535",
            "sysctl net.ipv4.tcp_mem                 287901 383869 575802 -> 1000000 1333333 2000000",
            "sysctl net.ipv4.tcp_fin_timeout         60 -> 15",
            "sysctl net.netfilter.nf_conntrack_max   262144 -> 1179648",
            "write  /sys/kernel/mm/transparent_hugepage/enabled: always -> madvise",
            "write  /sys/devices/system/cpu/cpu3/cpufreq/scaling_governor: powersave -> performance",
            "file   /etc/sysctl.d/90-coremq.conf (new)",
            "| fs.nr_open = 1114112",
            "| net.ipv4.tcp_mem = 1000000 1333333 2000000",
            "file   /etc/systemd/system/coremq.service.d/90-coremq-limits.conf (new)",
            "| LimitNOFILE=1114112",
            "| w /sys/kernel/mm/transparent_hugepage/enabled - - - - madvise",
            "| coremq hard nofile 1114112",
            "Dry run: nothing was changed",
        ] {
            let line = squeeze(line);
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        // Things that already pass, info rows and optional rows are left alone.
        for absent in [
            "fs.file-max",
            "ip_local_port_range",
            "busy_poll",
            "thp/defrag",
            "LimitMEMLOCK=",
        ] {
            assert!(!text.contains(absent), "unexpected {absent:?} in:\n{text}");
        }
    }
    assert_eq!(root.snapshot(), before, "dry run modified the fake root");
}

#[test]
fn apply_then_revert_round_trips_byte_exactly() {
    let root = FakeRoot::untuned();
    // A pre-existing file apply.sh replaces, with an unusual mode, must come back as it was.
    root.write(
        "etc/sysctl.d/90-coremq.conf",
        "# operator's own\nvm.swappiness = 1\n",
    );
    std::fs::set_permissions(
        root.path().join("etc/sysctl.d/90-coremq.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = root.snapshot();
    let r = root.root_arg();
    let common = ["--root", r.as_str(), "--broker-cpus", "0-1", "--latency"];

    let out = run("apply.sh", &[&common[..], &["--yes"]].concat());
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Applied."), "{}", stdout(&out));

    // Live values changed, select files emulated like sysfs.
    assert_eq!(root.read("proc/sys/fs/nr_open"), "1114112\n");
    assert_eq!(
        root.read("proc/sys/net/ipv4/tcp_mem"),
        "1000000 1333333 2000000\n"
    );
    assert_eq!(root.read("proc/sys/net/core/busy_poll"), "50\n");
    assert_eq!(
        root.read("sys/kernel/mm/transparent_hugepage/enabled"),
        "always [madvise] never\n"
    );
    assert_eq!(
        root.read("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"),
        "performance\n"
    );
    assert_eq!(root.read("proc/irq/40/smp_affinity_list"), "2-3\n");
    assert_eq!(root.read("proc/irq/41/smp_affinity_list"), "3\n");
    // Persistent files.
    let sysctl_d = root.read("etc/sysctl.d/90-coremq.conf");
    assert!(sysctl_d.contains("fs.nr_open = 1114112\n"), "{sysctl_d}");
    assert!(!sysctl_d.contains("swappiness"), "{sysctl_d}");
    let dropin = root.read("etc/systemd/system/coremq.service.d/90-coremq-limits.conf");
    assert!(
        dropin.contains("[Service]\nLimitNOFILE=1114112\n"),
        "{dropin}"
    );
    assert!(root
        .read("etc/systemd/system/irqbalance.service.d/90-coremq.conf")
        .contains("Environment=IRQBALANCE_BANNED_CPULIST=0-1\n"));

    // Everything required now passes.
    let (rc, json) = check_json(&root, &["--broker-cpus", "0-1"]);
    assert_eq!(rc, 0, "{json}");
    assert_eq!(status(&json, "thp.enabled"), "PASS");
    assert_eq!(status(&json, "irqbalance"), "PASS");
    assert_eq!(status(&json, "net.core.busy_poll"), "PASS");

    // A second apply would lose the original values: refused.
    let out = run("apply.sh", &[&common[..], &["--yes"]].concat());
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("revert.sh --yes first"),
        "{}",
        stderr(&out)
    );

    // revert dry run touches nothing.
    let applied = root.snapshot();
    let out = run("revert.sh", &["--root", &r]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("restore /proc/sys/fs/nr_open: 1048576"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("Dry run"), "{}", stdout(&out));
    assert_eq!(root.snapshot(), applied);

    let out = run("revert.sh", &["--root", &r, "--yes"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let after = root.snapshot();
    for (path, (mode, bytes)) in &before {
        match after.get(path) {
            None => panic!("{} missing after revert", path.display()),
            Some((m, b)) => {
                assert_eq!(m, mode, "mode of {}", path.display());
                assert_eq!(
                    String::from_utf8_lossy(b),
                    String::from_utf8_lossy(bytes),
                    "content of {}",
                    path.display()
                );
            }
        }
    }
    let extra: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(extra.is_empty(), "left behind after revert: {extra:?}");

    // Nothing left to revert; a new apply is allowed again.
    let out = run("revert.sh", &["--root", &r, "--yes"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("Nothing to revert"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn apply_never_lowers_and_has_nothing_to_do_when_tuned() {
    let root = FakeRoot::tuned();
    let r = root.root_arg();
    let out = run("apply.sh", &["--root", &r, "--cores", "4", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Nothing to change"),
        "{}",
        stdout(&out)
    );
    assert!(
        !root.path().join("var").exists(),
        "no state for a no-op apply"
    );

    // Only tcp_mem's middle value is short: the others are kept, not lowered.
    root.write("proc/sys/net/ipv4/tcp_mem", "3000000\t1000\t9000000\n");
    let out = run("apply.sh", &["--root", &r, "--cores", "4", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        root.read("proc/sys/net/ipv4/tcp_mem"),
        "3000000 1333333 9000000\n"
    );
    assert_eq!(root.read("proc/sys/fs/nr_open"), "2097152\n");
}

#[test]
fn only_filter_limits_the_plan() {
    let root = FakeRoot::untuned();
    let out = run(
        "apply.sh",
        &[
            "--root",
            &root.root_arg(),
            "--only",
            "net.core.somaxconn,vm.",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("net.core.somaxconn") && text.contains("vm.max_map_count"),
        "{text}"
    );
    assert!(
        !text.contains("fs.nr_open")
            && !text.contains("tcp_mem")
            && !text.contains("coremq.service"),
        "{text}"
    );
}

#[test]
fn revert_refuses_a_manifest_pointing_outside_the_root() {
    let root = FakeRoot::untuned();
    let victim = FakeRoot::empty();
    victim.write("etc/passwd", "root:x:0:0\n");
    let state = root.path().join("var/lib/coremq-tuning");
    std::fs::create_dir_all(state.join("files")).unwrap();
    std::fs::write(state.join("files/1"), "pwned\n").unwrap();
    std::fs::write(
        state.join("manifest"),
        format!("file\t1\t{}/etc/passwd\n", victim.root_arg()),
    )
    .unwrap();
    let out = run("revert.sh", &["--root", &root.root_arg(), "--yes"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("outside the target root"),
        "{}",
        stderr(&out)
    );
    assert_eq!(victim.read("etc/passwd"), "root:x:0:0\n");
}

#[test]
fn check_on_this_host_is_read_only_and_parses() {
    // The real /proc and /sys: only read. Whatever the verdict, the output must be
    // well-formed and agree with the exit code.
    let out = run("check.sh", &["--json", "--connections", "1000"]);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(&out), stderr(&out)));
    let rc = code(&out);
    assert!(rc == 0 || rc == 1, "{}", stderr(&out));
    assert_eq!(json["ok"] == true, rc == 0);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap();
    assert_eq!(setting(&json, "fs.nr_open")["current"], nr_open.trim());
}

/// apply/revert of the per-namespace net.* sysctls on a real kernel, inside a
/// private network namespace so the host's values are never touched.
#[test]
fn netns_round_trip_restores_kernel_values() {
    let probe = Command::new("unshare").args(["-n", "true"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIP netns round trip: `unshare -n` not permitted: {}",
                stderr(&o).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIP netns round trip: cannot run unshare: {e}");
            return;
        }
    }
    let work = FakeRoot::empty();
    work.mkdir("root");
    let keys = "net/core/somaxconn net/ipv4/tcp_max_syn_backlog net/ipv4/tcp_rmem \
                net/ipv4/tcp_wmem net/ipv4/ip_local_port_range net/ipv4/tcp_tw_reuse \
                net/ipv4/tcp_fin_timeout";
    let body = r#"
set -eu
# Refuse to run unless this really is a namespace of its own.
[ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] || exit 97
snap() { mkdir "$W/$1"; for k in $KEYS; do cat "/proc/sys/$k" > "$W/$1/$(echo "$k" | tr / _)"; done; }
snap before
bash "$APPLY" --root "$W/root" --proc-sys /proc/sys --only net.core.somaxconn,net.ipv4. \
    --role both --yes > "$W/apply.log"
snap during
bash "$REVERT" --root "$W/root" --proc-sys /proc/sys --yes > "$W/revert.log"
snap after
# Global sysctls are read-only in a child namespace: reported, never attempted.
bash "$APPLY" --only net.netfilter. > "$W/conntrack.log"
"#;
    let out = Command::new("unshare")
        .args(["-n", "bash", "-c", body])
        .env("W", work.path())
        .env("KEYS", keys)
        .env("APPLY", script("apply.sh"))
        .env("REVERT", script("revert.sh"))
        .output()
        .expect("unshare runs");
    if code(&out) == 97 {
        eprintln!("SKIP netns round trip: unshare -n did not give a private namespace");
        return;
    }
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let mut changed = 0;
    for k in keys.split_whitespace() {
        let f = k.replace('/', "_");
        let before = std::fs::read(work.path().join("before").join(&f)).unwrap();
        let during = std::fs::read(work.path().join("during").join(&f)).unwrap();
        let after = std::fs::read(work.path().join("after").join(&f)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&after),
            String::from_utf8_lossy(&before),
            "{k} not restored byte-exactly"
        );
        if during != before {
            changed += 1;
        }
    }
    let during_somaxconn =
        std::fs::read_to_string(work.path().join("during/net_core_somaxconn")).unwrap();
    assert_eq!(during_somaxconn, "65535\n");
    assert!(changed >= 5, "apply changed only {changed} sysctls");
    if Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        let log = std::fs::read_to_string(work.path().join("conntrack.log")).unwrap();
        assert!(
            log.contains("nf_conntrack_max") && log.contains("read-only here"),
            "{log}"
        );
        assert!(
            !log.contains("sysctl net.netfilter"),
            "planned a read-only write: {log}"
        );
    }
    // The files written next to the live values are gone again.
    let left: Vec<_> = std::fs::read_dir(work.path().join("root"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn scripts_are_shellcheck_clean() {
    let scripts = ["lib.sh", "check.sh", "apply.sh", "revert.sh"];
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(scripts.iter().map(|s| script(s)))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match out {
        Ok(o) => assert!(
            o.status.success(),
            "shellcheck:\n{}{}",
            stdout(&o),
            stderr(&o)
        ),
        Err(e) if std::env::var_os("COREMQ_REQUIRE_SHELLCHECK").is_some() => {
            panic!("shellcheck required but not runnable: {e}")
        }
        Err(e) => eprintln!("SKIP shellcheck: not installed ({e}); apt-get install -y shellcheck"),
    }
}

#[test]
fn a_failed_write_stops_apply_and_revert_undoes_the_rest() {
    let root = FakeRoot::untuned();
    // A sysfs select file without "madvise": the write is rejected like the kernel would.
    root.write(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] never\n",
    );
    let before = root.snapshot();
    let r = root.root_arg();
    let out = run("apply.sh", &["--root", &r, "--yes"]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("writing 'madvise'"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("revert.sh --yes"), "{}", stderr(&out));
    // The sysctls before it were applied...
    assert_eq!(root.read("proc/sys/fs/nr_open"), "1114112\n");
    // ...and are undone.
    let out = run("revert.sh", &["--root", &r, "--yes"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(root.snapshot(), before);
}

#[test]
fn a_running_broker_is_checked_instead_of_the_shell() {
    let root = FakeRoot::untuned();
    root.write("proc/4242/comm", "coremq\n");
    root.write(
        "proc/4242/limits",
        "Max open files            1024                 4096                 files     \n\
         Max locked memory         65536                65536                bytes     \n",
    );
    let (rc, json) = check_json(&root, &["--connections", "10000"]);
    assert_eq!(rc, 1);
    let nofile = setting(&json, "limits.process.nofile");
    assert_eq!(nofile["level"], "required");
    assert_eq!(nofile["status"], "FAIL");
    assert_eq!(nofile["current"], "4096");
    assert!(nofile["note"]
        .as_str()
        .unwrap()
        .contains("running coremq (pid 4242)"));
    assert_eq!(status(&json, "limits.process.memlock"), "FAIL");
    // --pid picks a process explicitly.
    let (_, json) = check_json(&root, &["--connections", "10000", "--pid", "77"]);
    assert_eq!(status(&json, "limits.process.nofile"), "SKIP");
}

/// The slab measurement tool runs (bounded, in a private namespace) and reports
/// every cache it names. Numbers are not asserted: slab is shared with the machine.
#[test]
fn measure_socket_memory_runs() {
    let readable = std::fs::File::open("/proc/slabinfo").is_ok();
    let netns = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !readable || !netns {
        eprintln!("SKIP measure-socket-memory: needs root for /proc/slabinfo and unshare -n");
        return;
    }
    let tool = script("measure-socket-memory.py");
    let out = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && python3 \"$TOOL\" --pairs 200 --timeout 30",
        ])
        .env("TOOL", &tool)
        .output()
        .expect("unshare runs");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("200 established pairs = 400 idle sockets"),
        "{text}"
    );
    for cache in [
        "TCP",
        "sock_inode_cache",
        "filp",
        "eventpoll_epi",
        "named caches",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(cache) && l.contains("B/socket")),
            "{cache} missing: {text}"
        );
    }
    // Out-of-range input is refused, not clamped.
    let out = Command::new("python3")
        .arg(&tool)
        .args(["--pairs", "0"])
        .output()
        .expect("python3 runs");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pairs must be"), "{}", stderr(&out));
}
