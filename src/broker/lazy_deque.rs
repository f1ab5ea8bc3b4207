//! A `VecDeque` that costs one pointer until it is first pushed to.
//!
//! Every session has a send queue and an in-flight window, and most sessions of a large fleet are idle with both
//! empty: an inline `VecDeque` is 32 bytes each, paid by every idle connection. This keeps the deque boxed and
//! allocates it on the first push (it is kept afterwards, so an active session does not allocate per message).
//! The methods mirror `VecDeque`'s, so code reads the same as with the std type.

use std::collections::vec_deque::{IntoIter, Iter, IterMut, VecDeque};
use std::ops::{Index, IndexMut};

// The box is the point (one pointer inline instead of the deque's 32 bytes), not an oversight.
#[allow(clippy::box_collection)]
pub struct LazyDeque<T>(Option<Box<VecDeque<T>>>);

impl<T> LazyDeque<T> {
    pub const fn new() -> Self {
        LazyDeque(None)
    }

    fn deque(&mut self) -> &mut VecDeque<T> {
        self.0.get_or_insert_with(Default::default)
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |d| d.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_back(&mut self, value: T) {
        self.deque().push_back(value)
    }

    pub fn push_front(&mut self, value: T) {
        self.deque().push_front(value)
    }

    pub fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_front()
    }

    pub fn pop_back(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_back()
    }

    pub fn front(&self) -> Option<&T> {
        self.0.as_ref()?.front()
    }

    pub fn front_mut(&mut self) -> Option<&mut T> {
        self.0.as_mut()?.front_mut()
    }

    pub fn back(&self) -> Option<&T> {
        self.0.as_ref()?.back()
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.0.as_ref()?.get(index)
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.0.as_mut()?.get_mut(index)
    }

    pub fn remove(&mut self, index: usize) -> Option<T> {
        self.0.as_mut()?.remove(index)
    }

    pub fn insert(&mut self, index: usize, value: T) {
        self.deque().insert(index, value)
    }

    pub fn clear(&mut self) {
        if let Some(d) = self.0.as_mut() {
            d.clear()
        }
    }

    pub fn retain(&mut self, f: impl FnMut(&T) -> bool) {
        if let Some(d) = self.0.as_mut() {
            d.retain(f)
        }
    }

    pub fn retain_mut(&mut self, f: impl FnMut(&mut T) -> bool) {
        if let Some(d) = self.0.as_mut() {
            d.retain_mut(f)
        }
    }

    pub fn iter(&self) -> Iter<'_, T> {
        self.0.as_ref().map(|d| d.iter()).unwrap_or_default()
    }

    /// The elements in `range` (which must lie within `0..len()`, as for `VecDeque::range`).
    pub fn range(&self, range: std::ops::Range<usize>) -> Iter<'_, T> {
        match &self.0 {
            Some(d) => d.range(range),
            None => {
                assert!(
                    range.is_empty() && range.start == 0,
                    "LazyDeque range {range:?} out of an empty deque"
                );
                Iter::default()
            }
        }
    }

    pub fn iter_mut(&mut self) -> IterMut<'_, T> {
        self.0.as_mut().map(|d| d.iter_mut()).unwrap_or_default()
    }
}

impl<T> Default for LazyDeque<T> {
    fn default() -> Self {
        LazyDeque::new()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for LazyDeque<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> From<VecDeque<T>> for LazyDeque<T> {
    fn from(d: VecDeque<T>) -> Self {
        LazyDeque(Some(Box::new(d)))
    }
}

impl<T> FromIterator<T> for LazyDeque<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let d: VecDeque<T> = iter.into_iter().collect();
        if d.is_empty() {
            LazyDeque::new()
        } else {
            d.into()
        }
    }
}

impl<T> Extend<T> for LazyDeque<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let mut iter = iter.into_iter().peekable();
        if iter.peek().is_some() {
            self.deque().extend(iter)
        }
    }
}

impl<T> Index<usize> for LazyDeque<T> {
    type Output = T;
    fn index(&self, index: usize) -> &T {
        match &self.0 {
            Some(d) => &d[index],
            None => panic!("LazyDeque index {index} out of range (empty)"),
        }
    }
}

impl<T> IndexMut<usize> for LazyDeque<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        match &mut self.0 {
            Some(d) => &mut d[index],
            None => panic!("LazyDeque index {index} out of range (empty)"),
        }
    }
}

impl<T> IntoIterator for LazyDeque<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        self.0.map(|d| *d).unwrap_or_default().into_iter()
    }
}

impl<'a, T> IntoIterator for &'a LazyDeque<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut LazyDeque<T> {
    type Item = &'a mut T;
    type IntoIter = IterMut<'a, T>;
    fn into_iter(self) -> IterMut<'a, T> {
        self.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_unused_deque_is_one_pointer_and_allocates_nothing() {
        assert_eq!(
            std::mem::size_of::<LazyDeque<[u64; 8]>>(),
            std::mem::size_of::<usize>()
        );
        let mut d: LazyDeque<u32> = LazyDeque::new();
        assert!(d.is_empty());
        assert_eq!(d.pop_front(), None);
        assert_eq!(d.iter().count(), 0);
        d.retain(|_| true);
        d.extend(std::iter::empty());
        assert!(d.0.is_none(), "reads and empty extends must not allocate");
    }

    #[derive(Debug, Clone)]
    enum Op {
        PushBack(u8),
        PushFront(u8),
        PopFront,
        PopBack,
        Remove(usize),
        Insert(usize, u8),
        Retain(u8),
        Clear,
        Bump(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::PushBack),
            any::<u8>().prop_map(Op::PushFront),
            Just(Op::PopFront),
            Just(Op::PopBack),
            (0usize..8).prop_map(Op::Remove),
            (0usize..8, any::<u8>()).prop_map(|(i, v)| Op::Insert(i, v)),
            any::<u8>().prop_map(Op::Retain),
            Just(Op::Clear),
            (0usize..8).prop_map(Op::Bump),
        ]
    }

    proptest! {
        /// Behaves exactly like `VecDeque` under any sequence of operations.
        #[test]
        fn matches_vecdeque(ops in proptest::collection::vec(op(), 0..64)) {
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut d: LazyDeque<u8> = LazyDeque::new();
            for op in ops {
                match op {
                    Op::PushBack(v) => { model.push_back(v); d.push_back(v) }
                    Op::PushFront(v) => { model.push_front(v); d.push_front(v) }
                    Op::PopFront => prop_assert_eq!(model.pop_front(), d.pop_front()),
                    Op::PopBack => prop_assert_eq!(model.pop_back(), d.pop_back()),
                    Op::Remove(i) => prop_assert_eq!(model.remove(i), d.remove(i)),
                    Op::Insert(i, v) => if i <= model.len() { model.insert(i, v); d.insert(i, v) },
                    Op::Retain(m) => { model.retain(|&x| x % 3 != m % 3); d.retain(|&x| x % 3 != m % 3) }
                    Op::Clear => { model.clear(); d.clear() }
                    Op::Bump(i) => {
                        if let Some(x) = model.get_mut(i) { *x = x.wrapping_add(1) }
                        if let Some(x) = d.get_mut(i) { *x = x.wrapping_add(1) }
                    }
                }
                prop_assert_eq!(model.len(), d.len());
                prop_assert_eq!(model.front(), d.front());
                prop_assert_eq!(model.back(), d.back());
                prop_assert!(model.iter().eq(d.iter()));
            }
            let owned: Vec<u8> = d.into_iter().collect();
            prop_assert_eq!(owned, model.into_iter().collect::<Vec<u8>>());
        }
    }
}
