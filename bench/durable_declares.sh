#!/usr/bin/env bash
# Durable declarations at scale: COUNT durable queues declared by one pipelining client
# (`ferrymq perf queues --durable`, 1,000 in flight), first alone, then again on a fresh
# broker while another client publishes at 5,000 msg/s to its own queue, whose end-to-end
# latency shows whether declaring stalls publishers. Then the broker is killed and
# restarted on the same data directory, to time the recovery of COUNT durable queues.
#
#   bench/durable_declares.sh                 # COUNT=100000, this tree's release build
#   BIN=/path/to/other/ferrymq bench/durable_declares.sh   # another build (same perf client)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-100000}
PORT=${PORT:-5696}
CAP=${CAP:-600}   # seconds a declaration run may take before it is cut
cargo build --release --quiet --bin ferrymq
PERF=target/release/ferrymq
BIN=${BIN:-$PERF}
URI="amqp://guest:guest@127.0.0.1:$PORT/%2f"
WORK=$(mktemp -d)
PID=
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=; }
trap 'stop; rm -rf "$WORK"' EXIT
start() {
    "$BIN" server --management-port 0 --prometheus-port 0 --bind 127.0.0.1 --amqp-port "$PORT" --data-dir "$WORK/data" --log-level warn \
        >>"$WORK/out" 2>&1 &
    PID=$!
    for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.05; done
    echo "broker did not start" >&2; exit 1
}
declare_all() {
    timeout "$CAP" "$PERF" perf queues --uri "$URI" --count "$COUNT" --durable --broker-pid "$PID" \
        | grep summary || echo "declarations cut after $CAP s"
}

echo "== $COUNT durable declarations"
start
declare_all
echo "== restart after kill -9 with $COUNT durable queues"
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
T0=$(date +%s.%N)
start
echo "listening again after $(echo "$(date +%s.%N) - $T0" | bc) s"
stop
rm -rf "$WORK/data"

echo "== publish latency at 5,000 msg/s: alone, then while $COUNT durable queues are declared"
start
"$PERF" perf throughput --uri "$URI" --rate 5000 --time 8 --quiet --queue-prefix alone | tail -n 1
"$PERF" perf throughput --uri "$URI" --rate 5000 --time 12 --quiet --queue-prefix lat >"$WORK/lat" &
LAT=$!
sleep 2
CAP=9 declare_all
wait "$LAT"
tail -n 1 "$WORK/lat"
