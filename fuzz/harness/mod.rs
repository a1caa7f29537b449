//! Fuzz harnesses, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`, nightly) and the
//! corpus replay test (`tests/rust/fuzz_corpus.rs`, stable), so the corpus is replayed
//! through exactly the code paths the fuzzer explored. Each harness takes arbitrary bytes;
//! it may return early on input the code refuses, and panics only on a bug.

pub mod alloc_guard;
pub mod definitions;
pub mod frames;
pub mod handshake;
pub mod seeds;
pub mod segments;
pub mod tables;

pub use definitions::definitions;
pub use frames::amqp_frames;
pub use handshake::handshake;
pub use segments::segment_recovery;
pub use tables::field_tables;

/// A harness: runs one input through the code under test.
pub type Harness = fn(&[u8]);

/// Every target: its name (the corpus folder) and its harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("amqp_frames", amqp_frames),
    ("field_tables", field_tables),
    ("handshake", handshake),
    ("definitions", definitions),
    ("segment_recovery", segment_recovery),
];
