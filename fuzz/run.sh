#!/usr/bin/env bash
# Fuzzes one target, then minimises its corpus (docs/fuzzing.md):
#
#   fuzz/run.sh TARGET [SECONDS]
#   FUZZ_CMIN=edges fuzz/run.sh TARGET [SECONDS]
#
# TARGET: amqp_frames, field_tables, handshake, definitions or segment_recovery. The run
# stops after SECONDS (default 1800) or 10 million executions, whichever comes first, or at
# the first crash (saved in fuzz/artifacts/TARGET/; minimise it with
# `cargo +nightly fuzz tmin -s none TARGET FILE`). One libFuzzer process, at low priority:
# the machine is shared. libFuzzer's output is kept in fuzz/artifacts/TARGET.log, so two
# targets can run at the same time (build once first: `cargo +nightly fuzz build -s none`).
# SECONDS=0 skips fuzzing and only minimises the corpus. FUZZ_TIMEOUT (default 30) is the
# seconds one input may take before it counts as a hang; raise it when something on the
# machine pauses the fuzzer (SIGSTOP during a benchmark), or a pause ends the run as a
# timeout. The minimisation keeps, by default,
# the smallest inputs that together reach every feature libFuzzer tracks (`cargo fuzz cmin`:
# edges and how often each is hit); FUZZ_CMIN=edges keeps only enough to reach every edge
# (a merge with -use_counters=0), for a target whose corpus would outgrow the repository's
# 2 MB budget (ADR 0010). Needs the nightly toolchain; installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")"

target=${1:?usage: fuzz/run.sh TARGET [SECONDS]}
seconds=${2:-1800}
cmin=${FUZZ_CMIN:-features}
unit_timeout=${FUZZ_TIMEOUT:-30}
case "$cmin" in features | edges) ;; *) echo "FUZZ_CMIN is features or edges" >&2; exit 2 ;; esac
case "$target" in
    # Longest input per target: a few frames of a session, a table, a document, a segment.
    amqp_frames) max_len=16384 ;;
    field_tables) max_len=4096 ;;
    handshake) max_len=16384 ;;
    definitions) max_len=8192 ;;
    segment_recovery) max_len=16384 ;;
    *) echo "unknown target '$target'" >&2; exit 2 ;;
esac

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Temp files of the harnesses (segments, definitions) go to memory when it can: fsyncs and
# directory churn on a real disk would dominate the run.
scratch_root=/tmp
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    scratch_root=/dev/shm
fi
scratch=$(mktemp -d "$scratch_root/ferrymq-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export TMPDIR="$scratch"

mkdir -p "corpus/$target" "artifacts/$target"
log="artifacts/$target.log"
size() { echo "$(ls "corpus/$target" | wc -l) files, $(du -sb "corpus/$target" | cut -f1) bytes"; }
echo "corpus/$target before the run: $(size)"
if [ "$seconds" -gt 0 ]; then
    # No sanitizer: the code under test is safe Rust; overflow checks and debug assertions
    # stay on (cargo-fuzz's default), and the harnesses' allocation guard stands in for
    # ASan's malloc limit. libFuzzer runs in this process (no -jobs, which would write
    # fuzz-0.log here and clash with a second target running at the same time); its output
    # goes to artifacts/TARGET.log, so several targets can run at once. Not inside
    # artifacts/TARGET/: cargo-fuzz lists every file there as a crashing input.
    status=0
    echo "fuzzing $target for up to $seconds s or 10M executions; log: fuzz/$log"
    nice -n 10 cargo +nightly fuzz run -s none "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -runs=10000000 -max_len="$max_len" \
        -timeout="$unit_timeout" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" 2>"$log" || status=$?
    grep -E '^(#[0-9]+.*(INITED|DONE)|Done|stat::|==[0-9]+== ERROR|SUMMARY|artifact_prefix|alloc_guard|thread .* panicked)' \
        "$log" | tail -n 25 || true
    if [ "$status" -ne 0 ]; then
        echo "fuzzing $target stopped with status $status: see fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
    echo "corpus/$target before cmin: $(size)"
fi

# Keep only inputs that add coverage, so the corpus in the repository stays small.
if [ "$cmin" = edges ]; then
    min=$(mktemp -d "corpus/.$target-min.XXXXXX")
    nice -n 10 cargo +nightly fuzz run -s none "$target" "$min" "corpus/$target" -- \
        -merge=1 -use_counters=0 -max_len="$max_len" 2>>"$log"
    grep -E '^MERGE-OUTER: [0-9]+ new files' "$log" | tail -n 1 || true
    rm -rf "corpus/$target"
    mv "$min" "corpus/$target"
else
    nice -n 10 cargo +nightly fuzz cmin -s none "$target" "corpus/$target" -- -max_len="$max_len"
fi
echo "corpus/$target after cmin ($cmin): $(size)"
