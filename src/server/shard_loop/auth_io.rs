//! The socket loop's side of authentication: costly password checks to and from the verifier threads, refused
//! CONNECTs logged with the peer address, and reloaded security rules picked up.

use super::*;

impl ShardIo {
    /// Pick up reloaded security rules (SIGHUP), at most once a second.
    pub(super) fn follow_security(&self) {
        let generation = self.security.generation();
        if generation != self.security_gen.get() {
            self.security_gen.set(generation);
            self.core.borrow_mut().set_security(self.security.get());
        }
    }

    /// Hand costly password checks to the verifier threads.
    pub(super) fn send_auth_jobs(&self) {
        let mut jobs = self.auth_jobs.borrow_mut();
        self.core.borrow_mut().take_auth_jobs(&mut jobs);
        let Some(v) = &self.verifier else {
            // No verifier threads (cannot happen when a password file is loaded): refuse rather than wait forever.
            for j in jobs.drain(..) {
                self.core
                    .borrow_mut()
                    .on_auth_result(j.key, j.ticket, false);
            }
            return;
        };
        for j in jobs.drain(..) {
            let (key, ticket) = (j.key, j.ticket);
            if v.jobs.try_send((v.shard, j)).is_err() {
                self.core.borrow_mut().on_auth_result(key, ticket, false);
            }
        }
    }

    /// Answers from the verifier threads: each connection goes on (or is refused) as if its CONNECT was just read.
    pub(super) fn drain_auth_results(&self) -> bool {
        let Some(v) = &self.verifier else {
            return false;
        };
        let mut did = false;
        while let Ok(r) = v.results.try_recv() {
            did = true;
            let fd = self.core.borrow().conn_io(r.key).map(|io| io as RawFd);
            let outcome = self.core.borrow_mut().on_auth_result(r.key, r.ticket, r.ok);
            if let (ReadOutcome::HandedOff, Some(fd)) = (outcome, fd) {
                self.handed_off(r.key, fd);
            }
        }
        did
    }

    pub(super) fn auth_results_pending(&self) -> bool {
        self.verifier
            .as_ref()
            .is_some_and(|v| !v.results.is_empty())
    }

    /// Log refused CONNECTs with the peer's address, at most 10 a second per shard (all are counted).
    pub(super) fn log_refusals(&self) {
        let mut refusals = self.refusals.borrow_mut();
        self.core.borrow_mut().take_auth_refusals(&mut refusals);
        if refusals.is_empty() {
            return;
        }
        let now_sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        for (io, why) in refusals.drain(..) {
            let (sec, n) = self.refusal_log.get();
            let n = if sec == now_sec { n + 1 } else { 1 };
            self.refusal_log.set((now_sec, n));
            if n <= 10 {
                let peer = netpoll::peer_addr(io as RawFd)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "?".into());
                tracing::warn!(shard = self.id, peer = %peer, reason = why.as_str(), "connection refused");
            } else if n == 11 {
                tracing::warn!(
                    shard = self.id,
                    "more connections refused this second (counted, not logged)"
                );
            }
        }
    }
}
