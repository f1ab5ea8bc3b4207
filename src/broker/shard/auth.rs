//! Authentication at CONNECT and authorisation of PUBLISH, SUBSCRIBE and deliveries. The rules themselves
//! (password and ACL files) are in `crate::auth`; this file decides when to ask them.
//!
//! A password is checked on the shard that accepted the connection, before the hand-off to the owner shard, so a
//! refused client costs no hand-off. A cheap hash (mosquitto's default of 101 PBKDF2 iterations, ~80 us) is
//! verified inline; a costly one is sent to the verifier threads (`take_auth_jobs`), the connection stops being
//! read until the answer comes back (`on_auth_result`), and the shard goes on with everything else. Successes are
//! remembered in a bounded per-shard cache, so a reconnect storm pays one verification per user and password.

use std::sync::Arc;

use super::*;
use crate::auth::password::CacheKey;
use crate::auth::policy::{ListenerAuth, Refusal, Security};
use crate::auth::{ClientAcl, PasswordHash, VerifyCache};

/// PBKDF2 iterations verified on the shard loop itself; more go to the verifier threads.
pub const INLINE_ITERATIONS: u32 = 1_000;
/// CONNECTs waiting for the verifier threads, per shard; past it new ones are refused as "server busy".
const MAX_PENDING_AUTH: usize = 4_096;
/// Remembered verified credentials per shard.
const VERIFY_CACHE_ENTRIES: usize = 16_384;

/// A password verification for the verifier threads.
#[derive(Debug)]
pub struct AuthJob {
    pub key: ConnKey,
    pub ticket: u64,
    pub hash: PasswordHash,
    pub password: Vec<u8>,
}

struct PendingAuth {
    connect: Box<Connect>,
    assigned: bool,
    ticket: u64,
    cache_key: CacheKey,
}

pub(super) struct ShardAuth {
    security: Arc<Security>,
    /// Nothing to enforce: every check is skipped.
    open: bool,
    cache: VerifyCache,
    pending: HashMap<ConnKey, PendingAuth>,
    jobs: Vec<AuthJob>,
    /// The listener of connections that have not sent CONNECT yet, when it is not listener 0 and anything is
    /// enforced (kept out of `Conn`, which every idle connection pays for).
    listeners: HashMap<ConnKey, u8>,
    /// Verified TLS client identities (certificate CN) of connections that have not sent CONNECT yet.
    identities: HashMap<ConnKey, Box<str>>,
    /// Refused CONNECTs (socket, why) for the I/O layer's log, which knows the peer address.
    refusals: Vec<(u64, Refusal)>,
    next_ticket: u64,
    /// Each session's ACL (of its current or last connection), by session index; empty without an ACL file, so
    /// sessions pay nothing for it then.
    session_acls: Vec<Option<Box<ClientAcl>>>,
}

impl ShardAuth {
    pub(super) fn new() -> Self {
        ShardAuth {
            security: Arc::new(Security::open()),
            open: true,
            cache: VerifyCache::new(VERIFY_CACHE_ENTRIES),
            pending: HashMap::new(),
            jobs: Vec::new(),
            listeners: HashMap::new(),
            identities: HashMap::new(),
            refusals: Vec::new(),
            next_ticket: 1,
            session_acls: Vec::new(),
        }
    }
}

enum Admit {
    Yes,
    No(Refusal),
    Later(u64, CacheKey),
}

fn refusal_reason(r: Refusal) -> ReasonCode {
    match r {
        Refusal::UnknownUser | Refusal::BadPassword => ReasonCode::BadUserNameOrPassword,
        Refusal::VerifierBusy => ReasonCode::ServerBusy,
        Refusal::Anonymous | Refusal::NoCertificateIdentity | Refusal::WillNotAllowed => {
            ReasonCode::NotAuthorized
        }
    }
}

impl Shard {
    /// What this shard enforces from now on (start-up, and every reload).
    pub fn set_security(&mut self, security: Arc<Security>) {
        self.auth.open = security.is_open();
        self.auth.security = security;
    }

    pub(super) fn note_listener(&mut self, key: ConnKey, listener: u8) {
        if !self.auth.open && listener != 0 {
            self.auth.listeners.insert(key, listener);
        }
    }

    /// The verified TLS client certificate identity of a connection, before its CONNECT.
    pub fn set_peer_identity(&mut self, key: ConnKey, identity: &str) {
        if self.conns.get(key).is_some_and(|c| c.session == NO_SESSION) {
            self.auth.identities.insert(key, identity.into());
        }
    }

    /// Password verifications for the verifier threads.
    pub fn take_auth_jobs(&mut self, into: &mut Vec<AuthJob>) {
        into.append(&mut self.auth.jobs);
    }

    /// Refused CONNECTs since the last call: (socket, why), for the log.
    pub fn take_auth_refusals(&mut self, into: &mut Vec<(u64, Refusal)>) {
        into.append(&mut self.auth.refusals);
    }

    /// A verifier thread's answer. The connection goes on as if its CONNECT had just been read (hand-off
    /// included), or is refused.
    pub fn on_auth_result(&mut self, key: ConnKey, ticket: u64, ok: bool) -> ReadOutcome {
        let Some(p) = self
            .auth
            .pending
            .remove(&key)
            .filter(|p| p.ticket == ticket)
        else {
            return ReadOutcome::Close;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return ReadOutcome::Close;
        };
        // Reading resumes with `resumed` below (the pause taken in `authenticate`).
        conn.pause_count = conn.pause_count.saturating_sub(1);
        if conn.closing {
            return ReadOutcome::Close;
        }
        self.stats.auth_verified_off_loop += 1;
        if !ok {
            return self.refuse_connect(key, Refusal::BadPassword);
        }
        self.auth.cache.insert(p.cache_key);
        if let Some(r) = self.will_refusal(&p.connect) {
            return self.refuse_connect(key, r);
        }
        let mut rest = self
            .conns
            .get_mut(key)
            .and_then(|c| c.partial.take())
            .map(|b| *b)
            .unwrap_or_default();
        let outcome = self.connect_admitted(key, p.connect, p.assigned, &mut rest);
        if outcome == ReadOutcome::Continue {
            if let Some(c) = self.conns.get_mut(key) {
                if !rest.is_empty() {
                    c.partial = Some(Box::new(rest));
                }
            }
            // The I/O layer reads again, starting with what came after the CONNECT.
            self.resumed.push(key);
        }
        outcome
    }

    /// Authenticate a CONNECT (its client id is final). `None` = go on now; `Some(outcome)` = refused or waiting.
    pub(super) fn authenticate(
        &mut self,
        key: ConnKey,
        connect: &mut Box<Connect>,
        assigned: bool,
    ) -> Option<ReadOutcome> {
        if self.auth.open {
            return None;
        }
        let listener = self.auth.listeners.remove(&key).unwrap_or(0);
        let la = self.auth.security.listener(listener as usize);
        match self.admit(key, &la, connect) {
            Admit::Yes => {}
            Admit::No(r) => return Some(self.refuse_connect(key, r)),
            Admit::Later(ticket, cache_key) => {
                let Some(conn) = self.conns.get_mut(key) else {
                    return Some(ReadOutcome::Close);
                };
                // Not read until the answer: bytes after the CONNECT stay in the connection.
                conn.pause_count += 1;
                let connect = std::mem::replace(connect, Box::new(empty_connect()));
                self.auth.pending.insert(
                    key,
                    PendingAuth {
                        connect,
                        assigned,
                        ticket,
                        cache_key,
                    },
                );
                // Bytes after the CONNECT stay in the connection until the answer.
                return Some(ReadOutcome::Paused);
            }
        }
        self.will_refusal(connect)
            .map(|r| self.refuse_connect(key, r))
    }

    fn admit(&mut self, key: ConnKey, la: &ListenerAuth, connect: &mut Connect) -> Admit {
        if la.identity_as_username {
            // mosquitto's use_identity_as_username: the certificate names the user, no password is asked for.
            return match self.auth.identities.remove(&key) {
                Some(id) => {
                    connect.username = Some(ByteString::from(&*id));
                    Admit::Yes
                }
                None => Admit::No(Refusal::NoCertificateIdentity),
            };
        }
        let Some(user) = connect.username.as_deref() else {
            return if la.allow_anonymous {
                Admit::Yes
            } else {
                Admit::No(Refusal::Anonymous)
            };
        };
        let Some(file) = &la.passwords else {
            // No password file: a user name proves nothing, so it counts as anonymous (mosquitto 2.0).
            return if la.allow_anonymous {
                Admit::Yes
            } else {
                Admit::No(Refusal::Anonymous)
            };
        };
        let Some(hash) = file.lookup(user) else {
            return Admit::No(Refusal::UnknownUser);
        };
        let password: &[u8] = connect.password.as_deref().unwrap_or(&[]);
        let cache_key = self.auth.cache.key(user, hash, password);
        if self.auth.cache.contains(&cache_key) {
            self.stats.auth_cache_hits += 1;
            return Admit::Yes;
        }
        if hash.iterations() <= INLINE_ITERATIONS {
            self.stats.auth_verified_inline += 1;
            return if hash.verify(password) {
                self.auth.cache.insert(cache_key);
                Admit::Yes
            } else {
                Admit::No(Refusal::BadPassword)
            };
        }
        if self.auth.pending.len() >= MAX_PENDING_AUTH {
            return Admit::No(Refusal::VerifierBusy);
        }
        let ticket = self.auth.next_ticket;
        self.auth.next_ticket += 1;
        self.auth.jobs.push(AuthJob {
            key,
            ticket,
            hash: hash.clone(),
            password: password.to_vec(),
        });
        Admit::Later(ticket, cache_key)
    }

    /// A will the client may not publish refuses the CONNECT.
    fn will_refusal(&self, connect: &Connect) -> Option<Refusal> {
        let will = connect.will.as_ref()?;
        let username = connect.username.as_deref();
        let denied = will.topic.starts_with("$SYS")
            || self
                .auth
                .security
                .client_acl(&connect.client_id, username)
                .is_some_and(|acl| !acl.can_write(&will.topic));
        denied.then_some(Refusal::WillNotAllowed)
    }

    fn refuse_connect(&mut self, key: ConnKey, r: Refusal) -> ReadOutcome {
        match refusal_reason(r) {
            ReasonCode::BadUserNameOrPassword => self.stats.auth_refused_credentials += 1,
            ReasonCode::ServerBusy => self.stats.auth_refused_busy += 1,
            _ => self.stats.auth_refused_not_authorized += 1,
        }
        if let Some(c) = self.conns.get(key) {
            self.auth.refusals.push((c.io, r));
        }
        self.auth.identities.remove(&key);
        self.connack_error(key, refusal_reason(r));
        ReadOutcome::Close
    }

    /// Forget what a connection left behind here (it closed or moved).
    pub(super) fn auth_forget(&mut self, key: ConnKey) {
        if self.auth.open {
            return;
        }
        self.auth.pending.remove(&key);
        self.auth.identities.remove(&key);
        self.auth.listeners.remove(&key);
    }

    pub(super) fn set_session_acl(&mut self, sidx: u32, acl: Option<Box<ClientAcl>>) {
        let acls = &mut self.auth.session_acls;
        let i = sidx as usize;
        if acl.is_none() && i >= acls.len() {
            return;
        }
        if i >= acls.len() {
            acls.resize_with(i + 1, || None);
        }
        acls[i] = acl;
    }

    fn acl_of(&self, sidx: u32) -> Option<&ClientAcl> {
        self.auth
            .session_acls
            .get(sidx as usize)
            .and_then(|a| a.as_deref())
    }

    /// The ACL of a session's connection, recomputed at every CONNECT.
    pub(super) fn session_acl(&self, connect: &Connect) -> Option<Box<ClientAcl>> {
        if self.auth.open {
            return None;
        }
        self.auth
            .security
            .client_acl(&connect.client_id, connect.username.as_deref())
    }

    /// Whether a client may PUBLISH to `topic`. Nobody publishes under `$SYS`: the broker owns it.
    pub(super) fn may_publish(&mut self, sidx: u32, topic: &str) -> bool {
        let ok = !topic.starts_with("$SYS")
            && self.acl_of(sidx).map_or(true, |acl| acl.can_write(topic));
        if !ok {
            self.stats.publishes_denied += 1;
        }
        ok
    }

    /// Whether a SUBSCRIBE to `filter` is granted: refused when no read rule could ever deliver on it (mosquitto
    /// grants it and then delivers nothing; a failure code tells the client at once).
    pub(super) fn may_subscribe(&mut self, sidx: u32, filter: &str) -> bool {
        // A shared subscription reads what its inner filter matches.
        let filter = match crate::codec::topic::parse_shared(filter) {
            Ok(Some((_, inner))) => inner,
            _ => filter,
        };
        let ok = self.acl_of(sidx).map_or(true, |acl| {
            acl.can_subscribe(filter) && acl.may_read_under(filter)
        });
        if !ok {
            self.stats.acl_subscribe_denied += 1;
        }
        ok
    }

    /// Whether a message on `topic` may be delivered to a session (every delivery, retained ones included).
    pub(super) fn may_read(&mut self, sidx: u32, topic: &str) -> bool {
        let ok = self.acl_of(sidx).map_or(true, |acl| acl.can_read(topic));
        if !ok {
            self.stats.acl_delivery_denied += 1;
        }
        ok
    }
}

fn empty_connect() -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        bridge: false,
        clean_start: true,
        keep_alive: 0,
        client_id: ByteString::new(),
        will: None,
        username: None,
        password: None,
        properties: None,
    }
}
