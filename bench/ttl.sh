#!/usr/bin/env bash
# Timers at scale: one queue holding N messages that each carry a different TTL
# (`expiration` between SPREAD and 2*SPREAD ms, in shuffled order), beside the same backlog
# without TTLs. Records publish rate, broker CPU per message and RSS; then, while the TTL
# backlog waits, a latency run on another queue shows the broker stays responsive; then it
# polls the queue until every message has expired and reports when and at what CPU cost.
#
#   bench/ttl.sh                 # N=1000000 SPREAD=20000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
SPREAD=${SPREAD:-20000}
PORT=${PORT:-5695}
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
cargo build --release --quiet --bin ferrymq
BIN=target/release/ferrymq
WORK=$(mktemp -d)
"$BIN" server --management-port 0 --prometheus-port 0 --bind 127.0.0.1 --amqp-port "$PORT" --data-dir "$WORK/data" --log-level warn >"$WORK/out" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
URI="amqp://guest:guest@127.0.0.1:$PORT/%2f"
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$PID/stat"; }
rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status"; }
depth() { .venv/bin/python -c "
import pika,sys
c=pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1',$PORT))
print(c.channel().queue_declare(sys.argv[1],passive=True).method.message_count)" "$1"; }
perf() { "$BIN" perf throughput --uri "$URI" --broker-pid "$PID" "$@" | tail -n 1; }

echo "== $N messages without TTL (baseline), queue plain-0"
perf --publish-only --pmessages "$N" --confirm 1000 --queue-prefix plain
echo "== $N messages with distinct TTLs of ${SPREAD}-$((2 * SPREAD)) ms, queue ttl-0"
T0=$(date +%s.%N)
perf --publish-only --pmessages "$N" --confirm 1000 --queue-prefix ttl --expiration-spread "$SPREAD"
echo "RSS with both backlogs: $(rss) MiB; ttl-0 holds $(depth ttl-0)"
echo "== latency at 10,000 msg/s on another queue while the TTL backlog waits"
perf --rate 10000 --time 5 --queue-prefix other
C0=$(cpu_s)
until [ "$(echo "$(date +%s.%N) - $T0 > $SPREAD / 1000 + 3" | bc)" = 1 ]; do sleep 0.5; done
echo "== latency at 10,000 msg/s on another queue while the TTL backlog expires"
perf --rate 10000 --time 5 --queue-prefix other
echo "== polling ttl-0 until it is empty"
while :; do
    d=$(depth ttl-0)
    t=$(echo "$(date +%s.%N) - $T0" | bc)
    printf '  t=%6.1fs depth=%s rss=%sMiB\n' "$t" "$d" "$(rss)"
    [ "$d" = 0 ] && break
    sleep 5
done
echo "broker CPU while the backlog expired (incl. polling): $(echo "$(cpu_s) - $C0" | bc) s; RSS now $(rss) MiB"
