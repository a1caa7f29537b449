#!/usr/bin/env bash
# Runs every test: Rust unit + integration tests (lapin), then Python interop tests (pika)
# against the real `ferrymq` binary. Installs what it needs (a venv with pinned clients).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run doctests.
    cargo test --workspace --doc --quiet
else
    cargo test --workspace
fi

FERRYMQ_BIN="$PWD/target/debug/ferrymq" .venv/bin/python -m pytest -q tests/python
