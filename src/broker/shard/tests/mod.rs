//! Unit tests of the shard core, one file per flow (the persistence tests are in `durable`).
use super::*;

mod conn;
mod delivery;
mod durable;
mod keepalive;
mod output;
