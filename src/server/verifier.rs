//! Verifier threads: password hashes too costly to check on a shard's loop (more than
//! `INLINE_ITERATIONS` PBKDF2 rounds) are checked here, and the answer goes back to the shard that asked, which is
//! woken through its doorbell. The shard bounds how many it has waiting, so the queue here is bounded too.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::broker::message::ConnKey;
use crate::broker::shard::AuthJob;
use crate::server::shard_loop::Doorbell;

/// CONNECTs one shard may have waiting for a verification (the core's own bound is the same).
pub const PER_SHARD: usize = 4_096;

pub struct AuthResult {
    pub key: ConnKey,
    pub ticket: u64,
    pub ok: bool,
}

/// One shard's ends: where it sends jobs, where its answers arrive.
pub struct VerifierLink {
    pub shard: u16,
    pub jobs: Sender<(u16, AuthJob)>,
    pub results: Receiver<AuthResult>,
}

/// Start `threads` verifier threads for `doorbells.len()` shards; returns each shard's link. The threads end
/// when every link is dropped.
pub fn start(threads: usize, doorbells: Vec<Arc<Doorbell>>) -> std::io::Result<Vec<VerifierLink>> {
    let shards = doorbells.len();
    let (job_tx, job_rx) = crossbeam_channel::bounded::<(u16, AuthJob)>(PER_SHARD * shards.max(1));
    let mut result_tx = Vec::with_capacity(shards);
    let mut links = Vec::with_capacity(shards);
    for shard in 0..shards {
        let (tx, rx) = crossbeam_channel::bounded(PER_SHARD);
        result_tx.push(tx);
        links.push(VerifierLink {
            shard: shard as u16,
            jobs: job_tx.clone(),
            results: rx,
        });
    }
    drop(job_tx);
    let result_tx = Arc::new(result_tx);
    let doorbells = Arc::new(doorbells);
    for i in 0..threads.max(1) {
        let jobs = job_rx.clone();
        let out = result_tx.clone();
        let bells = doorbells.clone();
        std::thread::Builder::new()
            .name(format!("coremq-verify-{i}"))
            .spawn(move || {
                while let Ok((shard, job)) = jobs.recv() {
                    let ok = job.hash.verify(&job.password);
                    let s = shard as usize;
                    // The shard bounds its waiting jobs by the same number, so this never blocks for long.
                    if out[s]
                        .send(AuthResult {
                            key: job.key,
                            ticket: job.ticket,
                            ok,
                        })
                        .is_ok()
                    {
                        bells[s].ring_if_sleeping();
                    }
                }
            })?;
    }
    Ok(links)
}
