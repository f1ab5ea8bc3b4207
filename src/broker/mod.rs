//! Sans-io broker logic: sessions, subscriptions, routing, retained messages, keep-alive. No sockets, no runtime.
pub mod client_index;
pub mod durability;
pub mod keepalive;
pub mod lazy_deque;
pub mod match_cache;
pub mod message;
pub mod session;
pub mod shard;
pub mod shared_group;
pub mod trie;
