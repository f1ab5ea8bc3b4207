//! Unit tests of the shard core, one file per flow (the persistence tests are in `durable`).
use super::*;

mod bridge;
mod burst;
mod conn;
mod delivery;
mod durable;
mod expiry;
mod gauges;
mod keepalive;
mod output;
mod queue_full;
mod receive_max;
mod shared;
mod shared_log;
mod shared_refused;
mod sys;
mod v5;
mod v5_connect;
