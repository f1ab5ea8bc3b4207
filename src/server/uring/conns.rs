//! Registering listeners, connections and watched fds; arming their multishot accepts and receives; receive
//! buffers lent to the caller; cancelling a connection; pausing receives and accepts.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fd};

use super::Listener;
use super::{
    ud, Conn, RecvBuf, RecvState, UringBackend, BGID, K_ACCEPT, K_CANCEL, K_QUIET, K_RECV,
    K_RECV_CANCEL, K_WATCH,
};

impl UringBackend {
    /// Start a multishot accept on a listening socket; it is re-armed whenever the kernel ends it.
    pub fn add_listener(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        let idx = self.listeners.len() as u32;
        self.listeners.push(Listener {
            token,
            fd,
            armed: false,
        });
        self.arm_accept(idx)
    }

    pub(super) fn arm_accept(&mut self, idx: u32) -> io::Result<()> {
        let l = &mut self.listeners[idx as usize];
        l.armed = true;
        let fd = l.fd;
        let e = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(K_ACCEPT, 0, idx));
        self.push(e)
    }

    /// Start receiving on a connection socket. `token` is the caller's name for it in every completion.
    pub fn add_conn(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        if self.by_token.contains_key(&token) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "token already registered",
            ));
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let gen = self.gens[idx as usize];
        self.conns[idx as usize] = Some(Conn {
            token,
            fd,
            gen,
            recv: RecvState::Armed,
            send_busy: false,
            send_len: 0,
            queue: VecDeque::new(),
            queued: 0,
            ops: 0,
            cancelling: false,
            recv_hold: false,
        });
        self.by_token.insert(token, idx);
        self.arm_recv(idx)
    }

    pub(super) fn arm_recv(&mut self, idx: u32) -> io::Result<()> {
        let c = self.conn(idx);
        c.recv = RecvState::Armed;
        c.ops += 1;
        let e = opcode::RecvMulti::new(Fd(c.fd), BGID)
            .build()
            .user_data(ud(K_RECV, c.gen, idx));
        self.push(e)
    }

    /// The bytes of a received buffer.
    pub fn data(&self, buf: &RecvBuf) -> &[u8] {
        self.bufs.data(buf.bid, buf.len)
    }

    /// Hand a received buffer back to the kernel.
    pub fn recycle(&mut self, buf: RecvBuf) {
        self.bufs.give_back(buf.bid);
    }

    /// Buffers the caller holds (taken by Data completions, not recycled yet).
    pub fn buffers_out(&self) -> usize {
        self.bufs.out()
    }

    /// Memory the ring's buffers pin, for the locked-memory check.
    pub fn buffer_footprint(&self) -> usize {
        self.bufs.footprint()
    }

    /// Cancel everything of this connection in the ring; `Completion::Cancelled` follows once the kernel is done.
    pub fn cancel_conn(&mut self, token: u64) -> io::Result<()> {
        let idx = *self
            .by_token
            .get(&token)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown token"))?;
        let c = self.conn(idx);
        if c.cancelling {
            return Ok(());
        }
        c.cancelling = true;
        if c.ops == 0 {
            self.finish_cancel(idx);
            return Ok(());
        }
        c.ops += 1;
        let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(c.fd)).all())
            .build()
            .user_data(ud(K_CANCEL, c.gen, idx));
        self.push(e)
    }

    /// Operations of a connection still in the kernel (0 for an unknown token).
    pub fn in_flight(&self, token: u64) -> u32 {
        self.by_token
            .get(&token)
            .and_then(|&i| self.conns[i as usize].as_ref())
            .map_or(0, |c| c.ops)
    }

    /// Connections registered (cancelled ones leave at their `Cancelled`).
    pub fn conn_count(&self) -> usize {
        self.by_token.len()
    }

    /// Stop a connection's receive (the shard cannot take more of its bytes now): they stay in the socket,
    /// where TCP pushes back on the peer. A Data completion that raced the pause may still come.
    pub fn pause_recv(&mut self, token: u64) -> io::Result<()> {
        let Some(&idx) = self.by_token.get(&token) else {
            return Ok(());
        };
        let c = self.conn(idx);
        if c.cancelling || c.recv_hold {
            return Ok(());
        }
        c.recv_hold = true;
        match c.recv {
            RecvState::Armed => {
                c.ops += 1;
                let target = ud(K_RECV, c.gen, idx);
                let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
                    .build()
                    .user_data(ud(K_RECV_CANCEL, c.gen, idx));
                self.push(e)
            }
            RecvState::Starved => {
                c.recv = RecvState::Held;
                Ok(())
            }
            RecvState::Held | RecvState::Done => Ok(()),
        }
    }

    /// Receive again after `pause_recv`.
    pub fn resume_recv(&mut self, token: u64) -> io::Result<()> {
        let Some(&idx) = self.by_token.get(&token) else {
            return Ok(());
        };
        let c = self.conn(idx);
        if !c.recv_hold {
            return Ok(());
        }
        c.recv_hold = false;
        if c.recv == RecvState::Held && !c.cancelling {
            self.stats.recv_rearms += 1;
            self.arm_recv(idx)?;
        }
        Ok(())
    }

    /// Stop accepting (e.g. out of file descriptors): the listeners' accepts are cancelled and not re-armed.
    pub fn pause_accepts(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.accepts_paused, true) {
            return Ok(());
        }
        for idx in 0..self.listeners.len() as u32 {
            if self.listeners[idx as usize].armed {
                let e = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud(K_ACCEPT, 0, idx)))
                    .build()
                    .user_data(ud(K_QUIET, 0, 0));
                self.push(e)?;
            }
        }
        Ok(())
    }

    pub fn resume_accepts(&mut self) -> io::Result<()> {
        if !std::mem::replace(&mut self.accepts_paused, false) {
            return Ok(());
        }
        for idx in 0..self.listeners.len() as u32 {
            if !self.listeners[idx as usize].armed {
                self.stats.accept_rearms += 1;
                self.arm_accept(idx)?;
            }
        }
        Ok(())
    }

    /// Report `Completion::Watched { token }` once `fd` is readable (one-shot; call again to re-arm). The fd
    /// must outlive the ring or be watched no more (the ring cancels everything when it is dropped).
    pub fn watch(&mut self, token: u64, fd: RawFd) -> io::Result<()> {
        let slot = match self.watches.iter().position(|&(t, _)| t == token) {
            Some(i) => i,
            None => {
                self.watches.push((token, fd));
                self.watches.len() - 1
            }
        };
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(ud(K_WATCH, 0, slot as u32));
        self.push(e)
    }
}
