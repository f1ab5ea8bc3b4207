//! The send path: one send per connection in flight, later bytes queued behind it, short writes resumed
//! from where the kernel stopped, EAGAIN parked on a one-shot POLLOUT. The queue owns the bytes, so they stay
//! valid while the kernel reads them.

use std::io;

use bytes::{Buf, Bytes};
use io_uring::opcode;
use io_uring::types::Fd;

use super::{ud, Completion, Conn, UringBackend, K_POLLOUT, K_SEND};

impl UringBackend {
    /// Append bytes to a connection's output. They go out with the next `flush`/`wait`, after everything queued
    /// before them. Refused (the bytes dropped) when the connection is unknown, being cancelled, or already has
    /// `send_queue_limit` bytes waiting: the caller's own output bound should stop it earlier.
    pub fn queue_send(&mut self, token: u64, bytes: Bytes) -> io::Result<()> {
        let idx = *self
            .by_token
            .get(&token)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown token"))?;
        let limit = self.send_queue_limit;
        let c = self.conn(idx);
        if c.cancelling {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection is being cancelled",
            ));
        }
        if c.queued + bytes.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "send queue over its limit",
            ));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        c.queued += bytes.len();
        c.queue.push_back(bytes);
        if !c.send_busy {
            self.submit_send(idx)?;
        }
        Ok(())
    }

    /// Bytes queued for a connection, in flight included.
    pub fn queued_bytes(&self, token: u64) -> usize {
        self.by_token
            .get(&token)
            .and_then(|&i| self.conns[i as usize].as_ref())
            .map_or(0, |c| c.queued)
    }

    pub(super) fn submit_send(&mut self, idx: u32) -> io::Result<()> {
        let c = self.conn(idx);
        let Some(front) = c.queue.front() else {
            return Ok(());
        };
        let len = front.len().min(u32::MAX as usize);
        let e = opcode::Send::new(Fd(c.fd), front.as_ptr(), len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(K_SEND, c.gen, idx));
        c.send_busy = true;
        c.send_len = len;
        c.ops += 1;
        self.push(e)
    }

    pub(super) fn send_done(
        &mut self,
        idx: u32,
        res: i32,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        let c = self.conn(idx);
        c.ops -= 1;
        c.send_busy = false;
        let token = c.token;
        if res > 0 {
            let n = res as usize;
            let short = n < c.send_len;
            let front = c.queue.front_mut().expect("in-flight chunk");
            if short {
                front.advance(n);
            } else {
                c.queue.pop_front();
            }
            c.queued -= n;
            let queued = c.queued;
            if short {
                self.stats.short_sends += 1;
            }
            out.push(Completion::Sent {
                token,
                written: n,
                queued,
                short,
            });
            if self.conn(idx).cancelling {
                self.end_op(idx);
            } else {
                self.submit_send(idx)?;
            }
        } else if c.cancelling {
            self.end_op(idx);
        } else if res == -libc::EAGAIN {
            self.stats.send_eagain += 1;
            let c = self.conn(idx);
            c.send_busy = true;
            c.ops += 1;
            let e = opcode::PollAdd::new(Fd(c.fd), libc::POLLOUT as u32)
                .build()
                .user_data(ud(K_POLLOUT, c.gen, idx));
            out.push(Completion::SendBlocked { token });
            self.push(e)?;
        } else {
            let err = if res == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "send wrote 0 bytes")
            } else {
                io::Error::from_raw_os_error(-res)
            };
            drop_queue(c);
            out.push(Completion::SendError { token, err });
        }
        Ok(())
    }
}

pub(super) fn drop_queue(c: &mut Conn) {
    c.queue.clear();
    c.queued = 0;
}
