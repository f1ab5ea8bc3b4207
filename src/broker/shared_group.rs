//! Shared-subscription groups (`$share/GROUP/FILTER`) as one shard sees them: its own members, and how many
//! members every other shard has, per group. Pure state; the shard (`shard/shared.rs`) decides when to call it.
//!
//! Picking a member is two steps, so that no shard needs to know another shard's sessions:
//! 1. `pick_shard`: weighted round-robin over shards by their number of *online* members (this shard's count is
//!    exact; the others' are what they last announced). A shard whose members are all offline has weight 0, so it
//!    is skipped; if no shard has an online member, the weights fall back to member counts, so persistent
//!    members that are all offline still queue the message rather than lose it.
//! 2. `pick_local` on the chosen shard: round-robin over its local members, skipping those that cannot take the
//!    message now (offline, or queue at its bound). Full members are a local fact that changes every round, so it
//!    is not announced; a shard that finds no member able to take it forwards the message (see `shard/shared.rs`).

use bytestring::ByteString;

use crate::broker::trie::Trie;
use crate::codec::SubscriptionOptions;

/// One local member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub session: u32,
    pub options: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

/// Member counts a shard announces for one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub members: u32,
    pub online: u32,
}

#[derive(Debug)]
pub struct Group {
    pub name: ByteString,
    /// The inner filter (the trie key, kept so a match can name its group).
    pub filter: ByteString,
    pub local: Vec<Member>,
    /// Per shard, what it last announced (this shard's own entry is unused: `local` is exact).
    pub remote: Vec<Counts>,
    next_local: usize,
    /// Weighted round-robin position: the n-th message goes to the shard owning slot `n % total weight`.
    turn: u64,
}

impl Group {
    fn new(name: &str, filter: &str, shards: u16) -> Self {
        Group {
            name: ByteString::from(name),
            filter: ByteString::from(filter),
            local: Vec::new(),
            remote: vec![Counts::default(); shards as usize],
            next_local: 0,
            turn: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.iter().all(|c| c.members == 0)
    }

    /// The shard for the next message: weighted round-robin by online members (`local_online` for `me`),
    /// skipping `exclude`; by member counts when nobody is online. `None` when the group has no member left.
    pub fn pick_shard(&mut self, me: u16, local_online: u32, exclude: Option<u16>) -> Option<u16> {
        let weight = |s: usize, online: bool| -> u64 {
            if Some(s as u16) == exclude {
                return 0;
            }
            match (s as u16 == me, online) {
                (true, true) => local_online as u64,
                (true, false) => self.local.len() as u64,
                (false, true) => self.remote[s].online as u64,
                (false, false) => self.remote[s].members as u64,
            }
        };
        let shards = self.remote.len();
        for online in [true, false] {
            let total: u64 = (0..shards).map(|s| weight(s, online)).sum();
            if total == 0 {
                continue;
            }
            let mut slot = self.turn % total;
            self.turn = self.turn.wrapping_add(1);
            for s in 0..shards {
                let w = weight(s, online);
                if slot < w {
                    return Some(s as u16);
                }
                slot -= w;
            }
        }
        None
    }

    /// The next local member (round-robin) for which `can_take` holds.
    pub fn pick_local(&mut self, mut can_take: impl FnMut(&Member) -> bool) -> Option<Member> {
        let n = self.local.len();
        for i in 0..n {
            let idx = (self.next_local + i) % n;
            if can_take(&self.local[idx]) {
                self.next_local = (idx + 1) % n;
                return Some(self.local[idx]);
            }
        }
        None
    }
}

/// Every group known to this shard, by inner filter.
#[derive(Default)]
pub struct SharedGroups {
    trie: Trie<Vec<Group>>,
    shards: u16,
}

impl SharedGroups {
    pub fn new(shards: u16) -> Self {
        SharedGroups {
            trie: Trie::new(),
            shards: shards.max(1),
        }
    }

    fn group_mut(&mut self, group: &str, filter: &str) -> &mut Group {
        let shards = self.shards;
        let groups = self.trie.get_or_insert_with(filter, Vec::new);
        let i = match groups.iter().position(|g| g.name == group) {
            Some(i) => i,
            None => {
                groups.push(Group::new(group, filter, shards));
                groups.len() - 1
            }
        };
        &mut groups[i]
    }

    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    pub fn get_mut(&mut self, group: &str, filter: &str) -> Option<&mut Group> {
        self.trie
            .get_mut(filter)?
            .iter_mut()
            .find(|g| g.name == group)
    }

    pub fn get(&self, group: &str, filter: &str) -> Option<&Group> {
        self.trie.get(filter)?.iter().find(|g| g.name == group)
    }

    /// Add or update a local member; true if it is new.
    pub fn add_local(&mut self, group: &str, filter: &str, m: Member) -> bool {
        let g = self.group_mut(group, filter);
        match g.local.iter_mut().find(|x| x.session == m.session) {
            Some(x) => {
                *x = m;
                false
            }
            None => {
                g.local.push(m);
                true
            }
        }
    }

    /// Remove a local member; true if it was one.
    pub fn remove_local(&mut self, group: &str, filter: &str, session: u32) -> bool {
        let Some(g) = self.get_mut(group, filter) else {
            return false;
        };
        let before = g.local.len();
        g.local.retain(|m| m.session != session);
        let removed = g.local.len() != before;
        self.prune(group, filter);
        removed
    }

    /// What `shard` announced for a group.
    pub fn set_remote(&mut self, shard: u16, group: &str, filter: &str, counts: Counts) {
        if shard >= self.shards {
            return;
        }
        self.group_mut(group, filter).remote[shard as usize] = counts;
        self.prune(group, filter);
    }

    fn prune(&mut self, group: &str, filter: &str) {
        if let Some(v) = self.trie.get_mut(filter) {
            v.retain(|g| !(g.name == group && g.is_empty()));
        }
        self.trie.remove_if(filter, |v| v.is_empty());
    }

    /// `(group, filter)` of every group whose filter matches `topic`.
    pub fn matching(&self, topic: &str, into: &mut Vec<(ByteString, ByteString)>) {
        self.trie.for_each_match(topic, |groups| {
            for g in groups {
                into.push((g.name.clone(), g.filter.clone()));
            }
        });
    }

    /// Every group with its inner filter.
    pub fn for_each(&self, mut f: impl FnMut(&str, &Group)) {
        self.trie.for_each(|filter, groups| {
            for g in groups {
                f(filter, g);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(session: u32) -> Member {
        Member {
            session,
            options: SubscriptionOptions::default(),
            sub_id: None,
        }
    }

    #[test]
    fn weighted_round_robin_follows_online_counts() {
        let mut g = SharedGroups::new(3);
        g.add_local("g", "a/+", member(1));
        g.set_remote(
            1,
            "g",
            "a/+",
            Counts {
                members: 3,
                online: 2,
            },
        );
        g.set_remote(
            2,
            "g",
            "a/+",
            Counts {
                members: 1,
                online: 0,
            },
        );
        let grp = g.get_mut("g", "a/+").unwrap();
        let mut per = [0u32; 3];
        for _ in 0..300 {
            per[grp.pick_shard(0, 1, None).unwrap() as usize] += 1;
        }
        // Shard 0 has 1 online member, shard 1 two, shard 2 none (skipped).
        assert_eq!(per, [100, 200, 0]);
        // Excluding shard 1 leaves shard 0 only.
        assert_eq!(grp.pick_shard(0, 1, Some(1)), Some(0));
    }

    #[test]
    fn nobody_online_falls_back_to_member_counts() {
        let mut g = SharedGroups::new(2);
        g.add_local("g", "t", member(1));
        g.set_remote(
            1,
            "g",
            "t",
            Counts {
                members: 1,
                online: 0,
            },
        );
        let grp = g.get_mut("g", "t").unwrap();
        let picks: Vec<_> = (0..4)
            .map(|_| grp.pick_shard(0, 0, None).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn pick_local_rotates_and_skips() {
        let mut g = SharedGroups::new(1);
        for s in 1..=3 {
            g.add_local("g", "t", member(s));
        }
        let grp = g.get_mut("g", "t").unwrap();
        let picks: Vec<_> = (0..4)
            .map(|_| grp.pick_local(|m| m.session != 2).unwrap().session)
            .collect();
        assert_eq!(picks, [1, 3, 1, 3]);
        assert!(grp.pick_local(|_| false).is_none());
    }

    #[test]
    fn groups_are_pruned_when_the_last_member_goes() {
        let mut g = SharedGroups::new(2);
        assert!(g.add_local("g", "t/#", member(1)));
        assert!(!g.add_local("g", "t/#", member(1)));
        let mut hits = Vec::new();
        g.matching("t/x", &mut hits);
        assert_eq!(hits.len(), 1);
        assert!(g.remove_local("g", "t/#", 1));
        hits.clear();
        g.matching("t/x", &mut hits);
        assert!(hits.is_empty());
        assert!(g.get("g", "t/#").is_none());
    }
}
