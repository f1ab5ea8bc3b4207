//! Whole client conversations into two sans-io shards (issue 20); the driver is shared with
//! `tests/conversation_fuzz.rs`. Run: `cargo +nightly fuzz run conversation` (in fuzz/).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "conversation_driver.rs"]
mod driver;

fuzz_target!(|data: &[u8]| {
    driver::run(data);
});
