//! Start-up check of the process limits that bound how many connections the
//! broker can hold: open files (one per connection) and locked memory (glommio's
//! io_uring rings). The arithmetic matches `tuning/check.sh`; see `tuning/README.md`.
//!
//! [`evaluate_limits`] is pure (values in, warnings out) so it is unit-tested;
//! [`check_limits`] only gathers the values from the running process.

use std::fmt;

/// File descriptors that are not connections: stdio, listeners, log files, metrics.
pub const FD_FIXED: u64 = 1024;
/// Per shard: 3 io_uring rings, eventfds, the channel mesh, open log segments.
pub const FD_PER_SHARD: u64 = 256;
/// Headroom of 1/20 = 5% for sockets still open while their clients reconnect.
pub const FD_CHURN_DIVISOR: u64 = 20;
/// glommio refuses to start an executor when RLIMIT_MEMLOCK is below this.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;
/// glommio registers `io_memory` with each of its main, latency and poll rings, and
/// io_uring charges every registration to the user's locked memory.
pub const GLOMMIO_RINGS: u64 = 3;
/// glommio rounds `io_memory` up to a page and to at least this many bytes.
pub const GLOMMIO_MIN_IO_MEMORY: u64 = 64 * 1024;

/// Where the kernel publishes the per-process cap on RLIMIT_NOFILE.
const NR_OPEN_PATH: &str = "/proc/sys/fs/nr_open";

/// Open files the broker needs for `max_connections` on `shards` shards.
pub fn required_open_files(max_connections: u64, shards: usize) -> u64 {
    let shards = shards.max(1) as u64;
    max_connections
        .saturating_add(max_connections / FD_CHURN_DIVISOR)
        .saturating_add(FD_FIXED)
        .saturating_add(FD_PER_SHARD.saturating_mul(shards))
}

/// Locked memory (bytes) the broker's glommio executors need.
pub fn required_memlock_bytes(shards: usize, io_memory_bytes: u64) -> u64 {
    let shards = shards.max(1) as u64;
    let io = io_memory_bytes
        .saturating_add(4095)
        .saturating_div(4096)
        .saturating_mul(4096)
        .max(GLOMMIO_MIN_IO_MEMORY);
    shards.saturating_mul(GLOMMIO_MIN_MEMLOCK.saturating_add(GLOMMIO_RINGS.saturating_mul(io)))
}

/// Locked memory one shard's io_uring socket backend pins (`io = "uring"`/`"auto"`): the provided-buffer
/// ring's descriptors (256 x 16 bytes, one page). Its SQ/CQ rings are charged to the memory cgroup, not
/// RLIMIT_MEMLOCK, on every kernel the backend runs on (it needs 6.0; 5.12 stopped charging rings), and the
/// receive buffers are ordinary memory. `tuning/lib.sh` adds the same.
pub const URING_LOCKED_PER_SHARD: u64 = 4096;

/// Locked memory the shards' io_uring socket backends may need.
pub fn uring_memlock_bytes(shards: usize) -> u64 {
    (shards.max(1) as u64).saturating_mul(URING_LOCKED_PER_SHARD)
}

/// RLIMIT_MEMLOCK (soft) of this process; `u64::MAX` = unlimited.
pub fn memlock_soft_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    // rlim_t is u64 on Linux.
    r.rlim_cur
}

/// The limits as read from the process and the kernel. `u64::MAX` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitInputs {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub memlock_soft: u64,
    pub memlock_hard: u64,
    /// `fs.nr_open`; `None` when it could not be read.
    pub nr_open: Option<u64>,
}

/// Which limit is too low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// RLIMIT_NOFILE (soft, after [`raise_nofile_limit`]).
    OpenFiles,
    /// The kernel's cap on RLIMIT_NOFILE, `fs.nr_open`.
    NrOpen,
    /// RLIMIT_MEMLOCK (soft; glommio and io_uring check the soft limit).
    LockedMemory,
}

/// One limit that cannot reach the configured `max_connections`, with the exact
/// settings that fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWarning {
    pub kind: LimitKind,
    /// The setting, as a user would search for it (e.g. `RLIMIT_NOFILE`, `fs.nr_open`).
    pub setting: &'static str,
    pub current: u64,
    pub required: u64,
    /// What happens if it is not fixed, and how to fix it.
    pub message: String,
}

impl fmt::Display for LimitWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn show(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".to_owned()
    } else {
        v.to_string()
    }
}

/// Pure core of [`check_limits`]: which limits cannot reach `max_connections`.
pub fn evaluate_limits(
    inputs: &LimitInputs,
    max_connections: u64,
    shards: usize,
    io_memory_bytes: u64,
) -> Vec<LimitWarning> {
    let mut warnings = Vec::new();
    let need_fds = required_open_files(max_connections, shards);
    if inputs.nofile_soft < need_fds {
        // The hard limit is what unprivileged processes can raise the soft limit to,
        // and fs.nr_open caps the hard limit: name every setting standing in the way.
        let mut fix = format!(
            "`ulimit -n {need_fds}` in the starting shell, `LimitNOFILE={need_fds}` in \
             coremq.service, or `coremq hard nofile {need_fds}` in /etc/security/limits.d/"
        );
        if inputs.nr_open.is_some_and(|n| n < need_fds) {
            fix.push_str(&format!(
                " (after raising fs.nr_open: `sysctl -w fs.nr_open={need_fds}`)"
            ));
        }
        let non_connection_fds =
            FD_FIXED.saturating_add(FD_PER_SHARD.saturating_mul(shards.max(1) as u64));
        let usable = inputs.nofile_soft.saturating_sub(non_connection_fds);
        warnings.push(LimitWarning {
            kind: LimitKind::OpenFiles,
            setting: "RLIMIT_NOFILE",
            current: inputs.nofile_soft,
            required: need_fds,
            message: format!(
                "open files limit (RLIMIT_NOFILE) is {} (hard {}), but max_connections={} \
                 needs {}: about {} connections will fit before accept fails with EMFILE. \
                 Raise it with {}. See tuning/check.sh.",
                show(inputs.nofile_soft),
                show(inputs.nofile_hard),
                max_connections,
                need_fds,
                usable,
                fix
            ),
        });
    }
    if let Some(nr_open) = inputs.nr_open {
        if nr_open < need_fds {
            warnings.push(LimitWarning {
                kind: LimitKind::NrOpen,
                setting: "fs.nr_open",
                current: nr_open,
                required: need_fds,
                message: format!(
                    "fs.nr_open is {nr_open}: no process can open more than that many files, \
                     but max_connections={max_connections} needs {need_fds}. Raise it with \
                     `sysctl -w fs.nr_open={need_fds}` and persist it in /etc/sysctl.d/ \
                     (tuning/apply.sh does both)."
                ),
            });
        }
    }
    let need_lock = required_memlock_bytes(shards, io_memory_bytes);
    if inputs.memlock_soft < need_lock {
        let kib = need_lock.div_ceil(1024);
        warnings.push(LimitWarning {
            kind: LimitKind::LockedMemory,
            setting: "RLIMIT_MEMLOCK",
            current: inputs.memlock_soft,
            required: need_lock,
            message: format!(
                "locked memory limit (RLIMIT_MEMLOCK) is {} bytes, but {} shards with \
                 io_memory={} need {} bytes ({} x (512 KiB + {} rings x io_memory)): \
                 glommio executors may fail to start or fall back to unregistered buffers. \
                 Raise it with `ulimit -l {}` (KiB) in the starting shell, \
                 `LimitMEMLOCK={}` in coremq.service, or `coremq hard memlock {}` in \
                 /etc/security/limits.d/, or lower io_memory.",
                show(inputs.memlock_soft),
                shards.max(1),
                io_memory_bytes,
                need_lock,
                shards.max(1),
                GLOMMIO_RINGS,
                kib,
                need_lock,
                kib
            ),
        });
    }
    warnings
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

fn getrlimit(resource: Resource) -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let conv = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v
        }
    };
    Ok((conv(lim.rlim_cur), conv(lim.rlim_max)))
}

fn read_nr_open() -> Option<u64> {
    std::fs::read_to_string(NR_OPEN_PATH)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Checks this process's limits against what `max_connections` on `shards` shards
/// with glommio `io_memory_bytes` per executor need. Call after [`raise_nofile_limit`].
/// A limit that cannot be read is reported as 0, so it warns rather than passes.
pub fn check_limits(
    max_connections: u64,
    shards: usize,
    io_memory_bytes: u64,
) -> Vec<LimitWarning> {
    let (nofile_soft, nofile_hard) = getrlimit(libc::RLIMIT_NOFILE).unwrap_or((0, 0));
    let (memlock_soft, memlock_hard) = getrlimit(libc::RLIMIT_MEMLOCK).unwrap_or((0, 0));
    let inputs = LimitInputs {
        nofile_soft,
        nofile_hard,
        memlock_soft,
        memlock_hard,
        nr_open: read_nr_open(),
    };
    evaluate_limits(&inputs, max_connections, shards, io_memory_bytes)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (capped by `fs.nr_open` when the
/// hard limit is unlimited) and returns the new soft limit. The default soft limit
/// (often 1024) would otherwise cap connections far below what the host allows.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(libc::RLIMIT_NOFILE)?;
    let target = if hard == u64::MAX {
        read_nr_open().unwrap_or(1024 * 1024)
    } else {
        hard
    };
    if soft >= target {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: if hard == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            hard as libc::rlim_t
        },
    };
    // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(getrlimit(libc::RLIMIT_NOFILE)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn roomy() -> LimitInputs {
        LimitInputs {
            nofile_soft: 2_000_000,
            nofile_hard: 2_000_000,
            memlock_soft: 64 * MIB,
            memlock_hard: 64 * MIB,
            nr_open: Some(2_000_000),
        }
    }

    #[test]
    fn open_files_arithmetic() {
        // 1M + 5% churn + 1024 fixed + 2 x 256 per shard.
        assert_eq!(required_open_files(1_000_000, 2), 1_051_536);
        assert_eq!(required_open_files(0, 0), FD_FIXED + FD_PER_SHARD);
        assert_eq!(required_open_files(u64::MAX, 4), u64::MAX);
        // The kernel default fs.nr_open is too tight for exactly a million.
        assert!(required_open_files(1_000_000, 1) > 1_048_576);
    }

    #[test]
    fn memlock_arithmetic() {
        // 2 x (512 KiB + 3 x 512 KiB) = 4 MiB: fits this machine's 8 MiB.
        assert_eq!(required_memlock_bytes(2, 512 * 1024), 4 * MIB);
        // io_memory rounds up to a page and to at least 64 KiB.
        assert_eq!(required_memlock_bytes(1, 1), 512 * 1024 + 3 * 64 * 1024);
        assert_eq!(
            required_memlock_bytes(1, 65537),
            512 * 1024 + 3 * (65536 + 4096)
        );
        // glommio's default 10 MiB io_memory on 8 shards.
        assert_eq!(
            required_memlock_bytes(8, 10 * MIB),
            8 * (512 * 1024 + 30 * MIB)
        );
    }

    #[test]
    fn roomy_limits_give_no_warning() {
        assert!(evaluate_limits(&roomy(), 1_000_000, 8, 512 * 1024).is_empty());
    }

    #[test]
    fn exact_need_passes_one_less_warns() {
        let need = required_open_files(10_000, 2);
        let mut inputs = roomy();
        inputs.nofile_soft = need;
        assert!(evaluate_limits(&inputs, 10_000, 2, 512 * 1024).is_empty());
        inputs.nofile_soft = need - 1;
        let w = evaluate_limits(&inputs, 10_000, 2, 512 * 1024);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, LimitKind::OpenFiles);
        assert_eq!((w[0].current, w[0].required), (need - 1, need));
    }

    #[test]
    fn low_nofile_names_every_fix() {
        let mut inputs = roomy();
        inputs.nofile_soft = 20_000;
        inputs.nofile_hard = 20_000;
        inputs.nr_open = Some(1_048_576);
        let w = evaluate_limits(&inputs, 1_000_000, 2, 512 * 1024);
        let kinds: Vec<_> = w.iter().map(|w| w.kind).collect();
        assert_eq!(kinds, vec![LimitKind::OpenFiles, LimitKind::NrOpen]);
        let m = &w[0].message;
        for needle in [
            "RLIMIT_NOFILE",
            "ulimit -n 1051536",
            "LimitNOFILE=1051536",
            "sysctl -w fs.nr_open=1051536",
            "/etc/security/limits.d/",
            "about 18464 connections",
        ] {
            assert!(m.contains(needle), "{needle:?} missing from: {m}");
        }
        assert_eq!(w[1].setting, "fs.nr_open");
        assert!(
            w[1].message.contains("sysctl -w fs.nr_open=1051536"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn nr_open_only_mentioned_when_it_is_in_the_way() {
        let mut inputs = roomy();
        inputs.nofile_soft = 1024;
        let w = evaluate_limits(&inputs, 100_000, 2, 512 * 1024);
        assert_eq!(w.len(), 1);
        assert!(!w[0].message.contains("fs.nr_open"), "{}", w[0]);
        // Unreadable nr_open: no guess either way.
        inputs.nr_open = None;
        assert_eq!(evaluate_limits(&inputs, 100_000, 2, 512 * 1024).len(), 1);
    }

    #[test]
    fn low_memlock_warns_with_units() {
        let mut inputs = roomy();
        inputs.memlock_soft = 8 * MIB;
        // 4 shards x (512 KiB + 3 x 1 MiB) = 14 MiB > 8 MiB.
        let w = evaluate_limits(&inputs, 1000, 4, MIB);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, LimitKind::LockedMemory);
        assert_eq!(w[0].required, 14 * MIB);
        let m = &w[0].message;
        assert!(m.contains("ulimit -l 14336"), "{m}");
        assert!(m.contains(&format!("LimitMEMLOCK={}", 14 * MIB)), "{m}");
        assert!(m.contains("coremq hard memlock 14336"), "{m}");
    }

    #[test]
    fn unlimited_is_enough_and_printed_as_such() {
        let inputs = LimitInputs {
            nofile_soft: u64::MAX,
            nofile_hard: u64::MAX,
            memlock_soft: u64::MAX,
            memlock_hard: u64::MAX,
            nr_open: None,
        };
        assert!(evaluate_limits(&inputs, u64::MAX / 2, 64, u64::MAX).is_empty());
        let mut low = inputs;
        low.nofile_soft = 10;
        let w = evaluate_limits(&low, 100, 1, 0);
        assert!(w[0].message.contains("(hard unlimited)"), "{}", w[0]);
    }

    #[test]
    fn raise_nofile_reaches_the_hard_limit() {
        let raised = raise_nofile_limit().expect("setrlimit soft to hard is always permitted");
        let (soft, hard) = getrlimit(libc::RLIMIT_NOFILE).unwrap();
        assert_eq!(raised, soft);
        if hard != u64::MAX {
            assert_eq!(soft, hard);
        }
        // Idempotent.
        assert_eq!(raise_nofile_limit().unwrap(), soft);
    }

    #[test]
    fn check_limits_reads_this_process() {
        // Absurd target: every limit must be reported.
        let w = check_limits(u64::MAX / 4, 1024, u64::MAX / 4096);
        assert!(w.iter().any(|w| w.kind == LimitKind::OpenFiles), "{w:?}");
        let memlock_unlimited = getrlimit(libc::RLIMIT_MEMLOCK).unwrap().0 == u64::MAX;
        assert!(w.iter().any(|w| w.kind == LimitKind::LockedMemory) || memlock_unlimited);
        // A small target warns exactly when this process's limit is below its need.
        raise_nofile_limit().unwrap();
        let soft = getrlimit(libc::RLIMIT_NOFILE).unwrap().0;
        let warned = check_limits(1, 1, 0)
            .iter()
            .any(|w| w.kind == LimitKind::OpenFiles);
        assert_eq!(warned, soft < required_open_files(1, 1));
    }
}
