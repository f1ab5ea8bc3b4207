//! Client id -> session index, without a second copy of the id.
//!
//! A `HashMap<ByteString, u32>` costs 40 bytes per bucket (about 90 bytes per session at hashbrown's load factor)
//! plus a refcount block for the shared id. This table stores only the session index (4 bytes per bucket, plus
//! hashbrown's one control byte) and compares against the id the session already holds. The hash is keyed per
//! process (SipHash via `RandomState`), so clients cannot choose ids that collide on purpose.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::broker::session::Session;

pub struct ClientIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

/// The id of a live session; every index in the table refers to one.
fn id_of(sessions: &[Option<Session>], sidx: u32) -> &str {
    sessions[sidx as usize]
        .as_ref()
        .map_or("", |s| &s.client_id)
}

impl ClientIndex {
    pub fn new() -> Self {
        ClientIndex {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    fn hash(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The session holding `client_id`.
    pub fn get(&self, sessions: &[Option<Session>], client_id: &str) -> Option<&u32> {
        self.table
            .find(self.hash(client_id), |&i| id_of(sessions, i) == client_id)
    }

    /// Index session `sidx`, which must already be in `sessions` (growing the table rehashes from there).
    pub fn insert(&mut self, sessions: &[Option<Session>], sidx: u32) {
        let hash = self.hash(id_of(sessions, sidx));
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, sidx, |&i| hasher.hash_one(id_of(sessions, i)));
    }

    /// Remove session `sidx`, whose id is `client_id` (the session may already be out of `sessions`).
    pub fn remove(&mut self, client_id: &str, sidx: u32) -> bool {
        match self.table.find_entry(self.hash(client_id), |&i| i == sidx) {
            Ok(e) => {
                e.remove();
                true
            }
            Err(_) => false,
        }
    }
}

impl Default for ClientIndex {
    fn default() -> Self {
        ClientIndex::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;

    fn session(id: &str) -> Option<Session> {
        Some(Session::new(id.into(), ProtocolVersion::V3_1_1, Some(0)))
    }

    #[test]
    fn finds_inserts_and_removes_across_growth() {
        let mut sessions: Vec<Option<Session>> = Vec::new();
        let mut index = ClientIndex::new();
        for i in 0..5000u32 {
            sessions.push(session(&format!("client-{i}")));
            index.insert(&sessions, i);
        }
        assert_eq!(index.len(), 5000);
        for i in 0..5000u32 {
            assert_eq!(index.get(&sessions, &format!("client-{i}")), Some(&i));
        }
        assert_eq!(index.get(&sessions, "client-5000"), None);
        assert_eq!(index.get(&sessions, ""), None);
        // Remove the even ones (the session slot emptied first, as `destroy_session` does).
        for i in (0..5000u32).step_by(2) {
            let s = sessions[i as usize].take().unwrap();
            assert!(index.remove(&s.client_id, i));
            assert!(!index.remove(&s.client_id, i), "removed twice");
        }
        assert_eq!(index.len(), 2500);
        for i in 0..5000u32 {
            let want = (i % 2 == 1).then_some(i);
            assert_eq!(index.get(&sessions, &format!("client-{i}")).copied(), want);
        }
        // A reused slot under a new id is found by the new id only.
        sessions[0] = session("reused");
        index.insert(&sessions, 0);
        assert_eq!(index.get(&sessions, "reused"), Some(&0));
        assert_eq!(index.get(&sessions, "client-0"), None);
    }
}
