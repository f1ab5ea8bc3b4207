//! Simulated disk faults on a shard's real log directory: the image a crash leaves behind.
//!
//! Segments are preallocated and mapped, so "what was synced" cannot be read from file sizes: the simulation
//! snapshots every segment right after each `sync_log` (a superset of what is durable). A crash then writes,
//! for each segment, the newer bytes up to a random cut and the snapshot's bytes after it (lost unsynced
//! writes), sometimes with a flipped byte in the unsynced part (a torn write); a segment created since the last
//! snapshot is kept with a random prefix or lost. Simplification: unsynced writes reach the disk in order
//! (a real page cache may write a later page before an earlier one).

use std::collections::HashMap;
use std::path::Path;

use super::rng::Rng;

#[derive(Default)]
pub struct DiskImage {
    /// Segment file name -> contents at the last sync.
    synced: HashMap<String, Vec<u8>>,
}

fn segments(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| n.ends_with(".seg"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl DiskImage {
    /// Everything in the directory is durable now.
    pub fn synced(&mut self, dir: &Path) {
        self.synced.clear();
        for (name, path) in segments(dir) {
            if let Ok(b) = std::fs::read(&path) {
                self.synced.insert(name, b);
            }
        }
    }

    /// Rewrite the directory as a crash would leave it. Call only once the store is dropped.
    pub fn crash(&self, dir: &Path, rng: &mut Rng) {
        for (name, path) in segments(dir) {
            let cur = std::fs::read(&path).unwrap();
            let img = match self.synced.get(&name) {
                Some(old) => {
                    let n = cur.len().min(old.len());
                    let Some(first) = (0..n).find(|&i| cur[i] != old[i]) else {
                        continue;
                    };
                    let last = (0..n).rev().find(|&i| cur[i] != old[i]).unwrap() + 1;
                    let cut = first + rng.below((last - first + 1) as u64) as usize;
                    let mut img = cur[..cut].to_vec();
                    img.extend_from_slice(&old[cut..n]);
                    if cut > first && rng.chance(3) {
                        let at = first + rng.below((cut - first) as u64) as usize;
                        img[at] ^= 0x5a;
                    }
                    img
                }
                None => {
                    if rng.chance(2) {
                        std::fs::remove_file(&path).unwrap();
                        continue;
                    }
                    let cut = rng.below(cur.len() as u64 + 1) as usize;
                    let mut img = cur[..cut].to_vec();
                    img.resize(cur.len(), 0);
                    img
                }
            };
            std::fs::write(&path, img).unwrap();
        }
    }
}
