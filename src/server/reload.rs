//! SIGHUP: read the password file, the ACL file and the TLS certificates again, without dropping a connection.
//! A file that does not parse keeps the old one in force and the log names the file, the line and why.
//! Shards pick the new rules up at their next clock second; open connections keep what they were admitted with
//! (their ACL is recomputed at their next CONNECT), new TLS connections use the new certificates.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::policy::Security;
use crate::config::{Config, ListenerConfig};
use crate::stream::LayerFactory;

/// The security rules in force, shared by every shard, with a generation so a shard sees a change cheaply.
pub struct SecurityCell {
    current: Mutex<Arc<Security>>,
    generation: AtomicU64,
}

impl SecurityCell {
    pub fn new(s: Arc<Security>) -> Arc<SecurityCell> {
        Arc::new(SecurityCell {
            current: Mutex::new(s),
            generation: AtomicU64::new(0),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Arc<Security> {
        self.current.lock().expect("security cell").clone()
    }

    fn set(&self, s: Arc<Security>) {
        *self.current.lock().expect("security cell") = s;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reload once: every file, each on its own (a bad certificate does not keep a good password file out).
/// Returns how many parts failed.
pub fn reload_now(
    cfg: &Config,
    cell: &SecurityCell,
    layers: &[(ListenerConfig, Arc<dyn LayerFactory>)],
) -> usize {
    let mut failed = 0;
    match Security::load(cfg) {
        Ok(s) => {
            cell.set(Arc::new(s));
            tracing::info!("reloaded the password and ACL files");
        }
        Err(e) => {
            failed += 1;
            tracing::error!("reload: {e}; the previous password and ACL files stay in force");
        }
    }
    for (l, f) in layers {
        if let Err(e) = f.reload(l) {
            failed += 1;
            tracing::error!(
                "reload: listener {}: {e}; its previous certificates stay in force",
                l.address
            );
        }
    }
    failed
}

/// Watch for SIGHUP until `shutdown`; reload on each.
pub fn spawn(
    cfg: Config,
    cell: Arc<SecurityCell>,
    layers: Vec<(ListenerConfig, Arc<dyn LayerFactory>)>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    std::thread::Builder::new()
        .name("coremq-reload".into())
        .spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                if hup.swap(false, Ordering::AcqRel) {
                    reload_now(&cfg, &cell, &layers);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })?;
    Ok(())
}
