//! Building the ring and probing that the kernel has everything the backend uses (the `io = auto` decision).

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use io_uring::types::Timespec;
use io_uring::{opcode, IoUring};

use super::bufring::BufRing;
use super::{Completion, Stats, UringBackend, UringConfig, BGID};

fn unsupported(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, why)
}

/// Is io_uring usable here for what the backend needs? `Err` (kind `Unsupported`) names why not, for the
/// caller to log once and fall back to epoll.
pub fn probe() -> io::Result<()> {
    UringBackend::with_config(UringConfig {
        entries: 8,
        buf_count: 1,
        buf_size: 64,
        ..UringConfig::default()
    })
    .map(drop)
}

impl UringBackend {
    pub fn new(entries: u32, buf_count: u16, buf_size: u32) -> io::Result<Self> {
        Self::with_config(UringConfig {
            entries,
            buf_count,
            buf_size,
            ..UringConfig::default()
        })
    }

    pub fn with_config(cfg: UringConfig) -> io::Result<Self> {
        let mut b = IoUring::builder();
        b.setup_cqsize(cfg.entries.saturating_mul(2));
        if let Some(idle) = cfg.sqpoll_idle_ms {
            b.setup_sqpoll(idle);
        }
        let ring = b.build(cfg.entries).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "io_uring_setup: ENOSYS (kernel without io_uring)".to_string()
                }
                Some(libc::EPERM) => {
                    "io_uring_setup: EPERM (seccomp filter or kernel.io_uring_disabled)".to_string()
                }
                Some(libc::ENOMEM) => {
                    "io_uring_setup: ENOMEM (RLIMIT_MEMLOCK too small for the ring)".to_string()
                }
                _ => format!("io_uring_setup: {e}"),
            };
            unsupported(why)
        })?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| unsupported(format!("IORING_REGISTER_PROBE: {e}")))?;
        for (code, name) in [
            (opcode::AcceptMulti::CODE, "ACCEPT"),
            (opcode::RecvMulti::CODE, "RECV"),
            (opcode::Send::CODE, "SEND"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::Timeout::CODE, "TIMEOUT"),
            (opcode::TimeoutRemove::CODE, "TIMEOUT_REMOVE"),
            (opcode::AsyncCancel2::CODE, "ASYNC_CANCEL"),
            (opcode::Read::CODE, "READ"),
        ] {
            if !probe.is_supported(code) {
                return Err(unsupported(format!("kernel lacks IORING_OP_{name}")));
            }
        }
        let bufs = BufRing::new(&ring.submitter(), BGID, cfg.buf_count, cfg.buf_size).map_err(
            |e| match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOSYS) => unsupported(format!(
                    "IORING_REGISTER_PBUF_RING: {e} (kernel before 5.19)"
                )),
                Some(libc::ENOMEM) => unsupported(format!(
                    "IORING_REGISTER_PBUF_RING: {e} (RLIMIT_MEMLOCK too small)"
                )),
                _ => e,
            },
        )?;
        let mut me = UringBackend {
            ring,
            bufs,
            conns: Vec::new(),
            free: Vec::new(),
            gens: Vec::new(),
            by_token: Default::default(),
            cqe_buf: Vec::with_capacity(256),
            listeners: Vec::new(),
            starved: Vec::new(),
            accepts_paused: false,
            watches: Vec::new(),
            doorbell: None,
            timer: None,
            timer_ts: Box::new(Timespec::new()),
            ready: VecDeque::new(),
            send_queue_limit: cfg.send_queue_limit,
            stats: Stats::default(),
            sqpoll: cfg.sqpoll_idle_ms.is_some(),
            interrupted: false,
        };
        me.check_recv_multishot()?;
        Ok(me)
    }

    /// Multishot receive (6.0) has no opcode of its own: try it on a socketpair.
    fn check_recv_multishot(&mut self) -> io::Result<()> {
        let mut sv = [0; 2];
        // SAFETY: valid out-array of two fds.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let token = u64::MAX;
        let res = (|| {
            self.add_conn(token, sv[0])?;
            // SAFETY: writes one byte from a valid buffer.
            unsafe { libc::write(sv[1], b"x".as_ptr() as *const libc::c_void, 1) };
            let mut out = Vec::new();
            for _ in 0..100 {
                self.wait(Some(Duration::from_millis(100)), &mut out)?;
                for c in out.drain(..) {
                    match c {
                        Completion::Data { buf, .. } => {
                            self.recycle(buf);
                            return Ok(());
                        }
                        Completion::RecvError { err, .. } => {
                            return Err(unsupported(format!(
                                "multishot receive: {err} (kernel before 6.0)"
                            )))
                        }
                        _ => {}
                    }
                }
            }
            Err(unsupported("multishot receive never completed".into()))
        })();
        let drained = (|| {
            if self.by_token.contains_key(&token) {
                self.cancel_conn(token)?;
            }
            let mut out = Vec::new();
            // Bounded: a kernel that never confirms the cancel fails the probe instead of hanging the start.
            for _ in 0..50 {
                if !self.by_token.contains_key(&token) {
                    return Ok(());
                }
                self.wait(Some(Duration::from_millis(100)), &mut out)?;
                for c in out.drain(..) {
                    if let Completion::Data { buf, .. } = c {
                        self.recycle(buf);
                    }
                }
            }
            Err(unsupported(
                "the probe's receive was never cancelled".into(),
            ))
        })();
        let disarmed = self.disarm_timer();
        self.stats = Stats::default();
        // SAFETY: closing the two fds we opened; the ring holds no operation on them any more (or failed).
        unsafe {
            libc::close(sv[0]);
            libc::close(sv[1]);
        }
        res.and(drained).and(disarmed)
    }
}
