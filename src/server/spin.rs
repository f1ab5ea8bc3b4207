//! How long an idle shard keeps polling before it sleeps: up to `idle_spin_us`, adapted to the traffic.
//!
//! Spinning only pays when the next event comes within the spin window: then it saves a sleep and a kernel
//! wake-up per event (latency). When events are further apart than the window, every spin is CPU burned for
//! nothing (a fleet of devices publishing every few minutes would cost a third of a core per shard at a few
//! thousand events per second). So the window follows what the last idle periods showed: work found while
//! spinning, or a sleep cut short by an event that came soon after, grows it back to the maximum; a sleep over
//! four times the maximum window (events clearly sparser than the window) halves it, down to zero. In between it
//! stays: at 10k msg/s over 10 connections (events ~100 µs apart) spinning halves p50 latency, so it is kept.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SpinBudget {
    max: Duration,
    current: Duration,
}

impl SpinBudget {
    pub fn new(max: Duration) -> Self {
        SpinBudget { max, current: max }
    }

    /// How long to keep polling in this idle period.
    pub fn budget(&self) -> Duration {
        self.current
    }

    /// Work turned up while spinning: spinning pays.
    pub fn on_spin_hit(&mut self) {
        self.current = self.max;
    }

    /// The shard slept for `slept` after its spin window ran out.
    pub fn on_sleep(&mut self, slept: Duration) {
        if slept < self.max {
            // A slightly longer spin would have caught this event: grow (from a floor, so zero can recover).
            self.current = (self.current * 2).max(self.max / 8).min(self.max);
        } else if slept >= self.max * 4 {
            self.current /= 2;
            if self.current < Duration::from_micros(2) {
                self.current = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(100);

    #[test]
    fn sparse_events_stop_the_spinning_and_dense_ones_bring_it_back() {
        let mut s = SpinBudget::new(MAX);
        assert_eq!(s.budget(), MAX);
        // Events a little further apart than the window: keep spinning.
        for _ in 0..8 {
            s.on_sleep(Duration::from_micros(250));
        }
        assert_eq!(s.budget(), MAX);
        // Events 10 ms apart: every sleep outlasts the window.
        for _ in 0..8 {
            s.on_sleep(Duration::from_millis(10));
        }
        assert_eq!(s.budget(), Duration::ZERO);
        // Events 40 µs apart: the sleeps are short, the window grows until spinning catches them.
        s.on_sleep(Duration::from_micros(40));
        assert_eq!(s.budget(), MAX / 8);
        s.on_sleep(Duration::from_micros(30));
        s.on_sleep(Duration::from_micros(20));
        assert_eq!(s.budget(), MAX / 2);
        s.on_spin_hit();
        assert_eq!(s.budget(), MAX);
    }

    #[test]
    fn zero_maximum_never_spins() {
        let mut s = SpinBudget::new(Duration::ZERO);
        s.on_sleep(Duration::from_micros(1));
        s.on_spin_hit();
        s.on_sleep(Duration::from_millis(1));
        assert_eq!(s.budget(), Duration::ZERO);
    }
}
