//! What the shards enforce, loaded once from the config's files and shared read-only by every shard: per
//! listener, who may connect (password file, anonymous clients, the TLS identity as user name); for everybody, the
//! ACL. A reload (SIGHUP) builds a new `Security` and hands it to the shards; connections keep what they were
//! admitted with, and their ACL is recomputed on their next CONNECT.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{AclFile, ClientAcl, PasswordFile};
use crate::config::Config;

/// How one listener admits clients.
#[derive(Debug, Clone)]
pub struct ListenerAuth {
    /// `None`: user names are not checked against a file.
    pub passwords: Option<Arc<PasswordFile>>,
    /// Clients that give no user name are let in.
    pub allow_anonymous: bool,
    /// The TLS client certificate's CN is the user name; no password is asked for.
    pub identity_as_username: bool,
}

impl ListenerAuth {
    /// Every client is let in (the embedded default's loopback listener, and sans-io tests).
    pub fn open() -> ListenerAuth {
        ListenerAuth {
            passwords: None,
            allow_anonymous: true,
            identity_as_username: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct Security {
    /// By listener index (`Config::all_listeners` order); a listener past the end is open.
    pub listeners: Vec<ListenerAuth>,
    pub acl: Option<Arc<AclFile>>,
}

/// Why a CONNECT was refused, for the refusal counters and the log (never sent to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownUser,
    BadPassword,
    Anonymous,
    NoCertificateIdentity,
    WillNotAllowed,
    VerifierBusy,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown user",
            Refusal::BadPassword => "wrong password",
            Refusal::Anonymous => "anonymous clients not allowed",
            Refusal::NoCertificateIdentity => "no client certificate identity",
            Refusal::WillNotAllowed => "will topic not writable by this client",
            Refusal::VerifierBusy => "password verification queue full",
        }
    }
}

impl Security {
    /// Nothing enforced.
    pub fn open() -> Security {
        Security::default()
    }

    pub fn listener(&self, index: usize) -> ListenerAuth {
        self.listeners
            .get(index)
            .cloned()
            .unwrap_or_else(ListenerAuth::open)
    }

    /// Whether anything is enforced at all (the shard skips every check otherwise).
    pub fn is_open(&self) -> bool {
        self.acl.is_none()
            && self
                .listeners
                .iter()
                .all(|l| l.passwords.is_none() && l.allow_anonymous && !l.identity_as_username)
    }

    /// The ACL of one connection; `None` when there is no ACL file (everything allowed).
    pub fn client_acl(&self, client_id: &str, username: Option<&str>) -> Option<Box<ClientAcl>> {
        self.acl
            .as_ref()
            .map(|a| Box::new(a.for_client(client_id, username)))
    }

    /// Load every file the config names. Errors name the file, the line and why; the caller refuses to start (or,
    /// on reload, keeps the old `Security`).
    pub fn load(cfg: &Config) -> Result<Security, String> {
        let mut files: HashMap<PathBuf, Arc<PasswordFile>> = HashMap::new();
        let mut listeners = Vec::new();
        for l in cfg.all_listeners() {
            let passwords = match cfg.password_file_for(&l) {
                None => None,
                Some(path) => match files.get(path) {
                    Some(f) => Some(f.clone()),
                    None => {
                        let f = Arc::new(PasswordFile::load(path).map_err(|e| e.to_string())?);
                        files.insert(path.to_path_buf(), f.clone());
                        Some(f)
                    }
                },
            };
            listeners.push(ListenerAuth {
                passwords,
                allow_anonymous: cfg.anonymous_allowed(&l),
                identity_as_username: l.use_identity_as_username,
            });
        }
        let acl = match &cfg.acl_file {
            None => None,
            Some(path) => Some(Arc::new(AclFile::load(path).map_err(|e| e.to_string())?)),
        };
        Ok(Security { listeners, acl })
    }

    /// One line per listener for the start-up log: how it admits clients, and how to change it.
    pub fn describe(&self, cfg: &Config) -> Vec<String> {
        cfg.all_listeners()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let a = self.listener(i);
                let who = match (&a.passwords, a.identity_as_username) {
                    (_, true) => "client certificate CN as user name".to_string(),
                    (Some(f), false) => format!("{} users from the password file", f.len()),
                    (None, false) => "no password file".to_string(),
                };
                let anon = if a.allow_anonymous {
                    "anonymous clients allowed".to_string()
                } else if l.allow_anonymous.is_none() && cfg.allow_anonymous.is_none() {
                    "anonymous clients refused (set allow_anonymous = true to allow them)"
                        .to_string()
                } else {
                    "anonymous clients refused".to_string()
                };
                format!("listener {}: {who}, {anon}", l.address)
            })
            .collect()
    }
}
