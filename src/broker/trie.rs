//! A topic-level trie keyed by filter levels. Used for the shard's subscriptions (value: the subscribers of one
//! filter) and for the cross-shard interest summary (value: a bitmask of interested shards).
//!
//! Nodes live in one arena `Vec` with a free list, so a filter costs one node per level it does not share with
//! other filters, and removal returns nodes for reuse. Matching follows the spec: `+` matches one level, `#` the
//! parent and any number of levels, and neither matches a first level that starts with `$`.

use std::collections::HashMap;

type NodeId = u32;
const ROOT: NodeId = 0;

#[derive(Debug)]
struct Node<V> {
    parent: NodeId,
    /// The level string this node is reached by from its parent (empty for the root).
    level: Box<str>,
    children: HashMap<Box<str>, NodeId, ahash::RandomState>,
    plus: Option<NodeId>,
    hash: Option<NodeId>,
    value: Option<V>,
}

impl<V> Node<V> {
    fn new(parent: NodeId, level: &str) -> Self {
        Node {
            parent,
            level: level.into(),
            children: HashMap::default(),
            plus: None,
            hash: None,
            value: None,
        }
    }
    fn is_empty(&self) -> bool {
        self.value.is_none()
            && self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }
}

#[derive(Debug)]
pub struct Trie<V> {
    nodes: Vec<Node<V>>,
    free: Vec<NodeId>,
    filters: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::new(ROOT, "")],
            free: Vec::new(),
            filters: 0,
        }
    }
}

/// The first level of `rest` and what follows its `/`. A plain byte scan: levels are short, and `split_once`'s
/// searcher costs more to set up than the scan takes.
#[inline]
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.bytes().position(|b| b == b'/') {
        // `/` is ASCII, so both sides are on character boundaries.
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

impl<V> Trie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of filters holding a value.
    pub fn len(&self) -> usize {
        self.filters
    }

    pub fn is_empty(&self) -> bool {
        self.filters == 0
    }

    fn alloc_in(
        nodes: &mut Vec<Node<V>>,
        free: &mut Vec<NodeId>,
        parent: NodeId,
        level: &str,
    ) -> NodeId {
        match free.pop() {
            Some(id) => {
                nodes[id as usize] = Node::new(parent, level);
                id
            }
            None => {
                nodes.push(Node::new(parent, level));
                (nodes.len() - 1) as NodeId
            }
        }
    }

    /// The value of `filter`, created with `make` (with its path) if missing.
    pub fn get_or_insert_with(&mut self, filter: &str, make: impl FnOnce() -> V) -> &mut V {
        let filters = &mut self.filters;
        let slot = Self::slot(&mut self.nodes, &mut self.free, filter);
        if slot.is_none() {
            *filters += 1;
        }
        slot.get_or_insert_with(make)
    }

    /// The value slot of `filter`, created (with its path) if missing.
    fn entry(&mut self, filter: &str) -> &mut Option<V> {
        Self::slot(&mut self.nodes, &mut self.free, filter)
    }

    fn slot<'a>(
        nodes: &'a mut Vec<Node<V>>,
        free: &mut Vec<NodeId>,
        filter: &str,
    ) -> &'a mut Option<V> {
        let mut node = ROOT;
        for level in filter.split('/') {
            let next = match level {
                "+" => nodes[node as usize].plus,
                "#" => nodes[node as usize].hash,
                _ => nodes[node as usize].children.get(level).copied(),
            };
            node = match next {
                Some(n) => n,
                None => {
                    let n = Self::alloc_in(nodes, free, node, level);
                    let parent = &mut nodes[node as usize];
                    match level {
                        "+" => parent.plus = Some(n),
                        "#" => parent.hash = Some(n),
                        _ => {
                            parent.children.insert(level.into(), n);
                        }
                    }
                    n
                }
            };
        }
        &mut nodes[node as usize].value
    }

    fn find(&self, filter: &str) -> Option<NodeId> {
        let mut node = ROOT;
        for level in filter.split('/') {
            let n = &self.nodes[node as usize];
            node = match level {
                "+" => n.plus?,
                "#" => n.hash?,
                _ => *n.children.get(level)?,
            };
        }
        Some(node)
    }

    pub fn get(&self, filter: &str) -> Option<&V> {
        self.find(filter)
            .and_then(|n| self.nodes[n as usize].value.as_ref())
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        let n = self.find(filter)?;
        self.nodes[n as usize].value.as_mut()
    }

    /// Insert or replace; returns the previous value.
    pub fn insert(&mut self, filter: &str, value: V) -> Option<V> {
        let slot = self.entry(filter);
        let old = slot.replace(value);
        if old.is_none() {
            self.filters += 1;
        }
        old
    }

    /// Remove the value at `filter` and prune the nodes left empty.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        let node = self.find(filter)?;
        let old = self.nodes[node as usize].value.take()?;
        self.filters -= 1;
        self.prune(node);
        Some(old)
    }

    /// Call after emptying a value obtained through `get_mut`/`entry` to drop it and prune.
    pub fn remove_if(&mut self, filter: &str, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        let node = self.find(filter)?;
        if self.nodes[node as usize].value.as_ref().is_some_and(pred) {
            self.remove(filter)
        } else {
            None
        }
    }

    fn prune(&mut self, mut node: NodeId) {
        while node != ROOT && self.nodes[node as usize].is_empty() {
            let parent = self.nodes[node as usize].parent;
            let level = std::mem::take(&mut self.nodes[node as usize].level);
            let p = &mut self.nodes[parent as usize];
            match &*level {
                "+" => p.plus = None,
                "#" => p.hash = None,
                _ => {
                    p.children.remove(&*level);
                }
            }
            self.free.push(node);
            node = parent;
        }
    }

    /// Visit the value of every filter that matches topic name `topic`. Allocation-free.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a V)) {
        if self.filters == 0 {
            return;
        }
        let dollar = topic.starts_with('$');
        self.walk(ROOT, Some(topic), true, dollar, &mut f);
    }

    /// `rest` is the unmatched remainder of the topic (`None` once every level is consumed).
    fn walk<'a>(
        &'a self,
        node: NodeId,
        rest: Option<&str>,
        first: bool,
        dollar: bool,
        f: &mut impl FnMut(&'a V),
    ) {
        let n = &self.nodes[node as usize];
        let wild_ok = !(first && dollar);
        // `#` matches the parent level and everything below it.
        if wild_ok {
            if let Some(v) = n.hash.and_then(|h| self.nodes[h as usize].value.as_ref()) {
                f(v);
            }
        }
        let Some(rest) = rest else {
            if let Some(v) = &n.value {
                f(v);
            }
            return;
        };
        let (level, next) = split_level(rest);
        if let Some(&c) = n.children.get(level) {
            self.walk(c, next, false, dollar, f);
        }
        if wild_ok {
            if let Some(p) = n.plus {
                self.walk(p, next, false, dollar, f);
            }
        }
    }

    /// The reverse walk, for a trie keyed by topic *names* (the retained store): visit every stored name that
    /// the wildcard `filter` matches.
    pub fn for_each_matched_by<'a>(&'a self, filter: &str, mut f: impl FnMut(&'a V)) {
        self.rwalk(ROOT, Some(filter), true, &mut f);
    }

    fn rwalk<'a>(
        &'a self,
        node: NodeId,
        rest: Option<&str>,
        first: bool,
        f: &mut impl FnMut(&'a V),
    ) {
        let n = &self.nodes[node as usize];
        let Some(rest) = rest else {
            if let Some(v) = &n.value {
                f(v);
            }
            return;
        };
        let (level, next) = split_level(rest);
        match level {
            "#" => {
                // The parent itself ("a/#" matches "a"), then the whole subtree.
                if !first {
                    if let Some(v) = &n.value {
                        f(v);
                    }
                }
                for (name, &c) in &n.children {
                    if !(first && name.starts_with('$')) {
                        self.subtree(c, f);
                    }
                }
            }
            "+" => {
                for (name, &c) in &n.children {
                    if !(first && name.starts_with('$')) {
                        self.rwalk(c, next, false, f);
                    }
                }
            }
            _ => {
                if let Some(&c) = n.children.get(level) {
                    self.rwalk(c, next, false, f);
                }
            }
        }
    }

    fn subtree<'a>(&'a self, node: NodeId, f: &mut impl FnMut(&'a V)) {
        let n = &self.nodes[node as usize];
        if let Some(v) = &n.value {
            f(v);
        }
        for &c in n.children.values() {
            self.subtree(c, f);
        }
    }

    /// Visit every (filter, value) pair; the filter is rebuilt from the levels.
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        let mut path = Vec::new();
        self.each_rec(ROOT, &mut path, &mut f);
    }

    fn each_rec(&self, node: NodeId, path: &mut Vec<NodeId>, f: &mut impl FnMut(&str, &V)) {
        let n = &self.nodes[node as usize];
        if let Some(v) = &n.value {
            let filter: Vec<&str> = path
                .iter()
                .map(|&p| &*self.nodes[p as usize].level)
                .collect();
            f(&filter.join("/"), v);
        }
        let kids = n.children.values().copied().chain(n.plus).chain(n.hash);
        for c in kids {
            path.push(c);
            self.each_rec(c, path, f);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::topic::topic_matches;
    use proptest::prelude::*;

    fn matches(t: &Trie<u32>, topic: &str) -> Vec<u32> {
        let mut v = Vec::new();
        t.for_each_match(topic, |x| v.push(*x));
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar_rule() {
        let mut t = Trie::new();
        t.insert("sport/tennis/+", 1);
        t.insert("sport/#", 2);
        t.insert("#", 3);
        t.insert("+/monitor/Clients", 4);
        t.insert("$SYS/#", 5);
        t.insert("sport", 6);
        assert_eq!(matches(&t, "sport/tennis/player1"), vec![1, 2, 3]);
        assert_eq!(matches(&t, "sport"), vec![2, 3, 6]);
        assert_eq!(matches(&t, "$SYS/monitor/Clients"), vec![5]);
        assert_eq!(matches(&t, "a/monitor/Clients"), vec![3, 4]);
        assert_eq!(matches(&t, "sport/"), vec![2, 3]);
    }

    #[test]
    fn remove_prunes_and_reuses_nodes() {
        let mut t = Trie::new();
        t.insert("a/b/c/d", 1);
        let before = t.nodes.len();
        assert_eq!(t.remove("a/b/c/d"), Some(1));
        assert!(t.is_empty());
        assert_eq!(t.free.len(), 4);
        t.insert("x/y/z/w", 2);
        assert_eq!(t.nodes.len(), before);
        assert_eq!(matches(&t, "a/b/c/d"), Vec::<u32>::new());
        assert_eq!(matches(&t, "x/y/z/w"), vec![2]);
    }

    #[test]
    fn reverse_walk_for_retained_names() {
        let mut t = Trie::new();
        for (i, name) in ["a", "a/b", "a/b/c", "$SYS/x", "b/b", "a/"]
            .iter()
            .enumerate()
        {
            t.insert(name, i as u32);
        }
        let by = |f: &str| {
            let mut v = Vec::new();
            t.for_each_matched_by(f, |x| v.push(*x));
            v.sort();
            v
        };
        assert_eq!(by("a/#"), vec![0, 1, 2, 5]);
        assert_eq!(by("#"), vec![0, 1, 2, 4, 5]);
        assert_eq!(by("+/b"), vec![1, 4]);
        assert_eq!(by("$SYS/#"), vec![3]);
        assert_eq!(by("+/+"), vec![1, 4, 5]);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$s".to_string())
        ]
    }
    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![level(), Just("+".to_string())]
    }
    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }
    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(filter_level(), 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#".into());
                }
                v.join("/")
            })
    }

    proptest! {
        // The trie must agree with the codec's reference matcher for any set of filters, including after removals.
        #[test]
        fn trie_agrees_with_topic_matches(filters in proptest::collection::vec(filter(), 0..12),
                                          removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                                          topics in proptest::collection::vec(topic(), 1..8)) {
            let mut t = Trie::new();
            let mut live: Vec<(String, u32)> = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                t.insert(f, i as u32);
                live.retain(|(g, _)| g != f);
                live.push((f.clone(), i as u32));
            }
            for r in removed {
                if live.is_empty() { break; }
                let (f, _) = live.remove(r.index(live.len()));
                prop_assert!(t.remove(&f).is_some());
            }
            prop_assert_eq!(t.len(), live.len());
            // The reverse walk over a trie of names agrees too.
            let mut names = Trie::new();
            for (i, topic) in topics.iter().enumerate() {
                names.insert(topic, i as u32);
            }
            for (f, _) in &live {
                let mut got = Vec::new();
                names.for_each_matched_by(f, |x| got.push(*x));
                got.sort();
                let mut want: Vec<u32> = Vec::new();
                for (i, topic) in topics.iter().enumerate() {
                    if topic_matches(f, topic) && names.get(topic) == Some(&(i as u32)) {
                        want.push(i as u32);
                    }
                }
                prop_assert_eq!(got, want, "filter {}", f);
            }
            for topic in &topics {
                let mut want: Vec<u32> = live.iter().filter(|(f, _)| topic_matches(f, topic)).map(|(_, v)| *v).collect();
                want.sort();
                prop_assert_eq!(matches(&t, topic), want, "topic {}", topic);
            }
        }
    }
}
