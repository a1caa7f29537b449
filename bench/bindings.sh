#!/usr/bin/env bash
# Declares N queues, binds each to amq.topic (key perf.I.#), deletes them (which removes the
# bindings), timing each step, against one broker build (docs/benchmarks.md, "Bindings"):
#
#   bench/bindings.sh [BINARY] [N]      (defaults: target/release/ferrymq, 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ferrymq}
N=${2:-100000}
PORT=${PORT:-5711}
cargo build --release --quiet --bin ferrymq
D=$(mktemp -d)
"$BIN" server --management-port 0 --prometheus-port 0 --bind 127.0.0.1 --amqp-port "$PORT" --data-dir "$D" --log-level warn >/dev/null 2>&1 &
P=$!
trap 'kill $P 2>/dev/null; wait $P 2>/dev/null; rm -rf "$D"' EXIT
sleep 1.5
target/release/ferrymq perf queues --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --count "$N" \
    --bind-to amq.topic --cleanup --broker-pid "$P" | grep summary
