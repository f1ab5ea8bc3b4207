//! Connections the broker closed, kept half-open for a moment so the client can read why.
//!
//! Closing a socket whose receive queue still holds unread bytes makes the kernel send a reset instead of a FIN,
//! and a reset can discard the CONNACK refusal or DISCONNECT (with its reason code) still on its way to the
//! client: the client sees "connection reset" instead of the reason. So a closed connection is shut down for
//! writing (the FIN follows our last bytes), and what the client still sends is read and discarded until it closes
//! its side or `LINGER` passes. Bounded: at most `MAX_LINGERING` per shard; past that a connection closes at once.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::server::netpoll::{self, Epoll, IoResult};

/// How long a closed connection may wait for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);
/// Lingering connections per shard.
const MAX_LINGERING: usize = 4096;
/// Bytes read and discarded per readiness event (the rest waits for the next event or the deadline).
const DISCARD_PER_EVENT: usize = 64 * 1024;

pub struct Lingering {
    fds: Vec<(RawFd, Instant)>,
    scratch: bytes::BytesMut,
}

impl Lingering {
    pub fn new() -> Self {
        Lingering {
            fds: Vec::new(),
            scratch: bytes::BytesMut::new(),
        }
    }

    /// Shut `fd` down for writing and watch it until the client closes (`token` routes its events back here).
    /// The caller has sent everything it meant to send. `registered`: `fd` is in `epoll` already.
    pub fn start(&mut self, epoll: &Epoll, registered: bool, fd: RawFd, token: u64, now: Instant) {
        let watch = || {
            if registered {
                epoll.modify_conn(fd, token)
            } else {
                epoll.add_reader(fd, token)
            }
        };
        if self.fds.len() >= MAX_LINGERING || watch().is_err() {
            netpoll::close(fd);
            return;
        }
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
        self.fds.push((fd, now + LINGER));
    }

    /// A readiness event for a lingering socket: discard what arrived; close once the client closed.
    pub fn on_readable(&mut self, epoll: &Epoll, fd: RawFd) {
        let Some(i) = self.fds.iter().position(|&(f, _)| f == fd) else {
            return;
        };
        let mut read = 0;
        let done = loop {
            self.scratch.clear();
            match netpoll::recv_into(fd, &mut self.scratch, 16 * 1024) {
                IoResult::Done(0) => break true,
                IoResult::Done(n) => {
                    read += n;
                    if read >= DISCARD_PER_EVENT {
                        break false;
                    }
                }
                IoResult::WouldBlock => break false,
                IoResult::Closed | IoResult::Error(_) => break true,
            }
        };
        if done {
            self.fds.swap_remove(i);
            let _ = epoll.remove(fd);
            netpoll::close(fd);
        }
        self.scratch = bytes::BytesMut::new();
    }

    /// Close the sockets whose client did not close in time.
    pub fn expire(&mut self, epoll: &Epoll, now: Instant) {
        self.fds.retain(|&(fd, deadline)| {
            if deadline > now {
                return true;
            }
            let _ = epoll.remove(fd);
            netpoll::close(fd);
            false
        });
    }
}

impl Default for Lingering {
    fn default() -> Self {
        Self::new()
    }
}
