//! Deterministic simulation of the broker core with network and disk faults (issue 20); see `sim/mod.rs`.
//!
//! CI runs a fixed set of seeds. By hand: `SIM_SEEDS=N cargo test --release --test simulation` runs N seeds
//! (from `SIM_FIRST`, default 0), `SIM_SEED=S` exactly one, `SIM_STEPS` steps per seed (default 3000).

mod sim;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn acknowledged_messages_survive_network_and_disk_faults() {
    let steps = env("SIM_STEPS").unwrap_or(3000);
    let seeds: Vec<u64> = match env("SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env("SIM_FIRST").unwrap_or(0);
            (first..first + env("SIM_SEEDS").unwrap_or(12)).collect()
        }
    };
    let (mut crashes, mut acked, mut refused) = (0, 0, 0);
    for &seed in &seeds {
        match sim::World::new(seed).run(steps) {
            Ok(r) => {
                crashes += r.crashes;
                acked += r.acked;
                refused += r.refused;
                assert_eq!(r.steps, steps);
            }
            Err(e) => panic!(
                "seed {seed}: {e}\nreproduce: SIM_SEED={seed} SIM_STEPS={steps} cargo test --test simulation"
            ),
        }
    }
    eprintln!(
        "{} seeds x {steps} steps: {crashes} crashes, {acked} acknowledged QoS 1/2 messages checked, {refused} refused",
        seeds.len()
    );
    assert!(
        acked > 0,
        "the simulation acknowledged nothing: it checks nothing"
    );
}
