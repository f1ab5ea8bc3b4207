//! Errors of the durable log. Capacity problems (`DiskFull`, `BudgetExceeded`) are distinct variants so the
//! broker can refuse persistent QoS>0 publishes with the right reason code instead of dropping them.

use std::io;
use std::path::PathBuf;

use crate::codec::ReasonCode;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// ENOSPC / EDQUOT from the file system (segment preallocation or sync).
    #[error("disk full while {context}: {source}")]
    DiskFull {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The configured disk budget (`max_segments` x `segment_size`) is used up; compaction may free space.
    #[error(
        "disk budget exhausted: {segments} segments of {segment_size} bytes (raise max_segments)"
    )]
    BudgetExceeded { segments: u32, segment_size: u32 },
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A second broker (or a second `Store::open` on the same shard) tried to use a locked directory.
    #[error("{path} is locked by another broker process (holder pid {holder}); refusing to share a data directory")]
    Locked { path: PathBuf, holder: String },
    #[error("record of {size} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error(
        "uncommitted group of {size} bytes exceeds max_group_bytes {max}; call commit() every tick"
    )]
    GroupTooLarge { size: usize, max: usize },
    /// The operation does not match the store's state (unknown session, message not queued, ...). Nothing was
    /// written.
    #[error("invalid store operation: {0}")]
    Invalid(String),
    /// A background fsync/msync failed. Data written since the last durable point may be lost, so the store
    /// refuses further writes until restart (retrying fsync after an error is not safe on Linux).
    #[error("log sync failed; store is read-only until restart: {0}")]
    SyncFailed(String),
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A message body could not be read back (its record is gone or damaged).
    #[error("message {msg_id} is not readable: {reason}")]
    Unreadable { msg_id: u64, reason: String },
}

impl StoreError {
    /// Classifies an I/O error: ENOSPC and EDQUOT become `DiskFull`.
    pub fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull { context, source },
            _ => StoreError::Io { context, source },
        }
    }

    /// True when more disk (or a larger budget, or compaction) would let the write succeed.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull { .. } | StoreError::BudgetExceeded { .. }
        )
    }

    /// The MQTT reason code a broker should answer a persistent QoS>0 publish with when the store refused it.
    pub fn reason_code(&self) -> ReasonCode {
        if self.is_capacity() {
            ReasonCode::QuotaExceeded
        } else {
            ReasonCode::ServerUnavailable
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
