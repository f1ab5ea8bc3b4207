//! Turning the kernel's completions into `Completion`s: re-arming ended multishots, ENOBUFS, send and POLLOUT
//! results, and the steps of a cancel.

use std::io;

use io_uring::cqueue;

use super::send::drop_queue;
use super::{
    ud_parts, Completion, RecvBuf, RecvState, UringBackend, K_ACCEPT, K_CANCEL, K_DOORBELL,
    K_POLLOUT, K_RECV, K_RECV_CANCEL, K_SEND, K_TIMER, K_WATCH,
};
use crate::server::netpoll::set_nodelay;

impl UringBackend {
    pub(super) fn harvest(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        out.extend(self.ready.drain(..));
        let mut cqes = std::mem::take(&mut self.cqe_buf);
        let r = loop {
            cqes.clear();
            cqes.extend(self.ring.completion().take(256));
            if cqes.is_empty() {
                break Ok(());
            }
            if let Err(e) = cqes.drain(..).try_for_each(|cqe| self.complete(cqe, out)) {
                break Err(e);
            }
            out.extend(self.ready.drain(..));
        };
        self.cqe_buf = cqes;
        r
    }

    fn complete(&mut self, cqe: cqueue::Entry, out: &mut Vec<Completion>) -> io::Result<()> {
        let (kind, gen, idx) = ud_parts(cqe.user_data());
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        match kind {
            K_ACCEPT => {
                let listener = self.listeners[idx as usize].token;
                if res >= 0 {
                    set_nodelay(res);
                    out.push(Completion::Accepted { listener, fd: res });
                } else if res != -libc::ECANCELED {
                    out.push(Completion::AcceptError {
                        listener,
                        err: io::Error::from_raw_os_error(-res),
                    });
                }
                if !more {
                    self.listeners[idx as usize].armed = false;
                    if !self.accepts_paused {
                        self.stats.accept_rearms += 1;
                        self.arm_accept(idx)?;
                    }
                }
            }
            K_RECV => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                let bid = cqueue::buffer_select(cqe.flags());
                if res > 0 && bid.is_none() {
                    // Cannot happen with buffer select; refuse the connection rather than guess.
                    let token = self.conn(idx).token;
                    out.push(Completion::RecvError {
                        token,
                        err: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "receive without a buffer id",
                        ),
                    });
                } else if let (true, Some(bid)) = (res > 0, bid) {
                    self.bufs.taken();
                    let token = self.conn(idx).token;
                    out.push(Completion::Data {
                        token,
                        buf: RecvBuf {
                            bid,
                            len: res as u32,
                        },
                    });
                }
                if more {
                    return Ok(());
                }
                // The multishot receive ended.
                let c = self.conn(idx);
                c.ops -= 1;
                let token = c.token;
                if c.cancelling {
                    c.recv = RecvState::Done;
                    self.end_op(idx);
                } else if c.recv_hold
                    && (res > 0 || res == -libc::ECANCELED || res == -libc::ENOBUFS)
                {
                    c.recv = RecvState::Held;
                } else if res > 0 || res == -libc::ECANCELED {
                    // Ended with data (e.g. the completion queue overflowed), or cancelled by a pause that
                    // `resume_recv` overtook: keep receiving.
                    self.stats.recv_rearms += 1;
                    self.arm_recv(idx)?;
                } else if res == -libc::ENOBUFS {
                    c.recv = RecvState::Starved;
                    self.stats.enobufs += 1;
                    self.starved.push(idx);
                } else if res == 0 {
                    c.recv = RecvState::Done;
                    out.push(Completion::PeerClosed { token });
                } else {
                    c.recv = RecvState::Done;
                    out.push(Completion::RecvError {
                        token,
                        err: io::Error::from_raw_os_error(-res),
                    });
                }
            }
            K_SEND => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                self.send_done(idx, res, out)?;
            }
            K_POLLOUT => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                let c = self.conn(idx);
                c.ops -= 1;
                c.send_busy = false;
                if c.cancelling {
                    self.end_op(idx);
                } else if res < 0 {
                    let token = c.token;
                    drop_queue(c);
                    out.push(Completion::SendError {
                        token,
                        err: io::Error::from_raw_os_error(-res),
                    });
                } else {
                    self.submit_send(idx)?;
                }
            }
            K_CANCEL => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                self.conn(idx).ops -= 1;
                self.end_op(idx);
            }
            K_RECV_CANCEL => {
                let Some(idx) = self.slot(gen, idx) else {
                    return Ok(());
                };
                let c = self.conn(idx);
                c.ops -= 1;
                if c.cancelling {
                    self.end_op(idx);
                }
            }
            K_WATCH if res != -libc::ECANCELED => {
                if let Some(&(token, _)) = self.watches.get(idx as usize) {
                    out.push(Completion::Watched { token });
                }
            }
            K_DOORBELL if res != -libc::ECANCELED => {
                if res < 0 {
                    tracing::warn!(
                        "doorbell read failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                out.push(Completion::Doorbell);
                self.arm_doorbell()?;
            }
            // ECANCELED is a timer we removed (`disarm_timer`), which already forgot it.
            K_TIMER if res != -libc::ECANCELED => {
                self.timer = None;
                out.push(Completion::Timeout);
            }
            _ => {}
        }
        Ok(())
    }
}
