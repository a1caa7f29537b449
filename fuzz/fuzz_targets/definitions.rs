//! cargo-fuzz target `definitions`: see `fuzz/harness` and docs/fuzzing.md.
#![no_main]

#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::definitions(data));
