//! Replays the fuzz corpus (`fuzz/corpus/<target>/`), the minimised crashing inputs
//! (`fuzz/regressions/<target>/`) and the seeds through the same harnesses the cargo-fuzz
//! targets run (`fuzz/harness`), on the stable toolchain, so every input the fuzzer kept
//! or crashed on stays fixed. See docs/fuzzing.md.

#[path = "../../fuzz/harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `fuzz/<kind>/<target>`, sorted (an absent folder has none).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every stored input of `target` through its harness; returns how many ran.
fn replay(target: &str) -> usize {
    let (_, run) = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).expect("read a corpus file");
            // Name the input in the test output if it fails.
            eprintln!("replaying {}", path.display());
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn amqp_frames_corpus_replays() {
    assert!(replay("amqp_frames") > 0, "the corpus is in the repository");
}

#[test]
fn field_tables_corpus_replays() {
    assert!(
        replay("field_tables") > 0,
        "the corpus is in the repository"
    );
}

#[test]
fn handshake_corpus_replays() {
    assert!(replay("handshake") > 0, "the corpus is in the repository");
}

#[test]
fn definitions_corpus_replays() {
    assert!(replay("definitions") > 0, "the corpus is in the repository");
}

#[test]
fn segment_recovery_corpus_replays() {
    assert!(
        replay("segment_recovery") > 0,
        "the corpus is in the repository"
    );
}

#[test]
fn seeds_pass_their_harnesses() {
    for (target, name, data) in harness::seeds::all() {
        eprintln!("seed {target}/{name}");
        let (_, run) = harness::TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("a known target");
        run(&data);
    }
}

/// Writes the seeds into the corpus folders:
/// `cargo test -p ferrymq --test fuzz_corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes files into fuzz/corpus; run by hand when the seeds change"]
fn write_seed_corpus() {
    for (target, name, data) in harness::seeds::all() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("write a seed");
    }
}
