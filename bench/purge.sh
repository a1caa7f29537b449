#!/usr/bin/env bash
# Fills one durable queue with N persistent messages of SIZE bytes (most of them paged to
# disk), then times queue.purge from pika (docs/benchmarks.md, "Purge of a paged backlog"):
#
#   bench/purge.sh [BINARY] [N] [SIZE]   (defaults: target/release/ferrymq, 1000000, 1000)
# Needs the test venv (scripts/test.sh creates it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ferrymq}
N=${2:-1000000}
SIZE=${3:-1000}
PORT=${PORT:-5821}
cargo build --release --quiet --bin ferrymq
D=$(mktemp -d)
"$BIN" server --management-port 0 --prometheus-port 0 --bind 127.0.0.1 --amqp-port "$PORT" --data-dir "$D" --log-level warn >/dev/null 2>&1 &
P=$!
trap 'kill $P 2>/dev/null; wait $P 2>/dev/null; rm -rf "$D"' EXIT
sleep 1.5
target/release/ferrymq perf throughput --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --quiet \
    --publish-only --pmessages "$N" --size "$SIZE" --persistent --durable --confirm 1000 \
    --queue-prefix pb >/dev/null
.venv/bin/python - "$PORT" <<'PY'
import sys, time
import pika
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1])))
ch = c.channel()
depth = ch.queue_declare("pb-0", passive=True).method.message_count
t = time.monotonic()
n = ch.queue_purge("pb-0").method.message_count
print(f"purged {n} of {depth} in {time.monotonic() - t:.3f}s")
c.close()
PY
