//! Exclusive lock files (`flock`), so two brokers can never write one data directory. The holder's pid is
//! written into the file so the second opener's error names it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{StoreError, StoreResult};

/// Held lock; released when dropped (or when the process dies, even by SIGKILL).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `path` (created if missing). flock locks belong to the open file description, so a second
    /// `acquire` fails even inside the same process.
    pub fn acquire(path: &Path) -> StoreResult<DirLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening lock file {}", path.display()), e))?;
        // A lock this process released can still look held for a moment: a child forked by another thread
        // inherits the descriptor until it execs (CLOEXEC acts only at exec), and flock belongs to the open file
        // description they share. So when the holder is this very process, try again for a short while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let locked = loop {
            // SAFETY: plain syscall on an fd we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                || std::time::Instant::now() >= deadline
            {
                break Err(err);
            }
            let mut holder = String::new();
            let _ = file.seek(SeekFrom::Start(0));
            let _ = file.read_to_string(&mut holder);
            if holder.trim() != std::process::id().to_string() {
                break Err(err);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        if let Err(err) = locked {
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.seek(SeekFrom::Start(0));
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            return Err(StoreError::io(format!("locking {}", path.display()), err));
        }
        let pid = std::process::id().to_string();
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        written.map_err(|e| StoreError::io(format!("writing pid to {}", path.display()), e))?;
        Ok(DirLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Locks `DATA_DIR/LOCK` for the whole broker (call once at start, before opening the shards' stores).
    pub fn lock_data_dir(dir: &Path) -> StoreResult<DirLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating data directory {}", dir.display()), e))?;
        DirLock::acquire(&dir.join("LOCK"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
