//! The epoll backend: one edge-triggered epoll set per shard, plain non-blocking recv(2)/send(2) (see
//! `netpoll.rs` for why not glommio streams). This is the shard loop's original I/O, moved behind `Net`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::{
    special_token, token_parts, NetEvent, SendResult, DOORBELL_IDX, LINGER_IDX, LISTENER_IDX,
};
use crate::server::netpoll::{self, Epoll, IoResult};

/// Connections accepted per listener event.
const ACCEPTS_PER_ROUND: usize = 256;

pub struct EpollNet {
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    listeners: Vec<RawFd>,
    doorbell: Option<RawFd>,
}

pub(super) fn send(fd: RawFd, data: &[u8]) -> SendResult {
    match netpoll::send(fd, data) {
        IoResult::Done(n) => SendResult::Done(n),
        IoResult::WouldBlock => SendResult::WouldBlock,
        IoResult::Closed | IoResult::Error(_) => SendResult::Failed,
    }
}

impl EpollNet {
    pub fn new() -> io::Result<Self> {
        Ok(EpollNet {
            epoll: Epoll::new()?,
            events: Vec::with_capacity(1024),
            listeners: Vec::new(),
            doorbell: None,
        })
    }

    pub(super) fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    pub(super) fn add_listener(&mut self, index: usize, fd: RawFd) -> io::Result<()> {
        if self.listeners.len() <= index {
            self.listeners.resize(index + 1, -1);
        }
        self.listeners[index] = fd;
        self.epoll
            .add_listener(fd, special_token(LISTENER_IDX, index as u32))
    }

    pub(super) fn set_doorbell(&mut self, efd: RawFd) -> io::Result<()> {
        self.doorbell = Some(efd);
        self.epoll.add_listener(efd, special_token(DOORBELL_IDX, 0))
    }

    pub(super) fn add_conn(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        self.epoll.add_conn(fd, token)
    }

    pub(super) fn remove(&mut self, fd: RawFd) {
        let _ = self.epoll.remove(fd);
    }

    pub(super) fn pause_accepts(&mut self, fds: &[RawFd]) {
        for &fd in fds {
            let _ = self.epoll.remove(fd);
        }
    }

    pub(super) fn resume_accepts(&mut self, fds: &[RawFd]) {
        for (i, &fd) in fds.iter().enumerate() {
            let _ = self
                .epoll
                .add_listener(fd, special_token(LISTENER_IDX, i as u32));
        }
    }

    pub(super) fn poll(&mut self, out: &mut Vec<NetEvent>, timeout: Duration) -> io::Result<()> {
        let ms = if timeout.is_zero() {
            0
        } else {
            timeout.as_millis().clamp(1, i32::MAX as u128) as i32
        };
        self.epoll.wait(&mut self.events, ms)?;
        for ev in self.events.iter() {
            let (idx, gen) = token_parts(ev.u64);
            match idx {
                DOORBELL_IDX => {
                    if let Some(efd) = self.doorbell {
                        drain_eventfd(efd);
                    }
                    out.push(NetEvent::Doorbell);
                }
                LISTENER_IDX => accept_all(self.listeners[gen as usize], gen as usize, out),
                LINGER_IDX => out.push(NetEvent::Linger(gen as RawFd)),
                _ => {
                    if ev.events & netpoll::READABLE != 0 {
                        out.push(NetEvent::Readable {
                            token: ev.u64,
                            hup: ev.events & netpoll::HANGUP != 0,
                        });
                    }
                    if ev.events & netpoll::WRITABLE != 0 {
                        out.push(NetEvent::Writable { token: ev.u64 });
                    }
                }
            }
        }
        Ok(())
    }
}

fn accept_all(lfd: RawFd, listener: usize, out: &mut Vec<NetEvent>) {
    for _ in 0..ACCEPTS_PER_ROUND {
        match netpoll::accept(lfd) {
            Ok(Some(fd)) => out.push(NetEvent::Accepted { listener, fd }),
            Ok(None) => return,
            Err(err) => {
                out.push(NetEvent::AcceptFailed { err });
                return;
            }
        }
    }
}

pub(super) fn drain_eventfd(efd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64.
    unsafe { libc::read(efd, &mut v as *mut u64 as *mut libc::c_void, 8) };
}
