//! Deterministic simulation of the broker core with network and disk faults (issue 20); see `sim/mod.rs`.
//!
//! CI runs a fixed set of seeds. By hand: `SIM_SEEDS=N cargo test --release --test simulation` runs N seeds
//! (from `SIM_FIRST`, default 0), `SIM_SEED=S` exactly one, `SIM_STEPS` steps per seed (default 3000);
//! `SIM_SECONDS=T` keeps taking seeds from `SIM_FIRST` on until T seconds have passed (long runs by hand).

mod sim;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn acknowledged_messages_survive_network_and_disk_faults() {
    let steps = env("SIM_STEPS").unwrap_or(3000);
    let first = env("SIM_FIRST").unwrap_or(0);
    let until =
        env("SIM_SECONDS").map(|t| std::time::Instant::now() + std::time::Duration::from_secs(t));
    let seeds: Box<dyn Iterator<Item = u64>> = match (env("SIM_SEED"), until) {
        (Some(s), _) => Box::new(std::iter::once(s)),
        (None, Some(_)) => Box::new(first..),
        (None, None) => Box::new(first..first + env("SIM_SEEDS").unwrap_or(8)),
    };
    let (mut ran, mut crashes, mut acked, mut refused, mut handoffs, mut v5) = (0, 0, 0, 0, 0, 0);
    let started = std::time::Instant::now();
    for seed in seeds {
        if until.is_some_and(|u| std::time::Instant::now() > u) {
            break;
        }
        ran += 1;
        match sim::World::new(seed).run(steps) {
            Ok(r) => {
                crashes += r.crashes;
                acked += r.acked;
                refused += r.refused;
                handoffs += r.handoffs;
                v5 += r.v5_clients;
                assert_eq!(r.steps, steps);
            }
            Err(e) => panic!(
                "seed {seed}: {e}\nreproduce: SIM_SEED={seed} SIM_STEPS={steps} cargo test --test simulation"
            ),
        }
    }
    eprintln!(
        "{ran} seeds (from {first}) x {steps} steps in {:.1} s: {crashes} crashes, {acked} acknowledged QoS 1/2 messages checked, {refused} refused, {handoffs} connections handed off between shards, {v5} v5 clients",
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked > 0,
        "the simulation acknowledged nothing: it checks nothing"
    );
}
