#!/usr/bin/env bash
# Side-by-side benchmark: RabbitMQ (Debian package) vs FerryMQ (release build), same machine.
# Runs each scenario against both brokers in alternation (A B A B ...) for ROUNDS rounds and
# prints median, ratio and spread per scenario. Both brokers are stopped at the end.
#
#   bench/compare.sh                 # all scenarios, 3 rounds of 10 s
#   ROUNDS=5 DURATION=20 bench/compare.sh S1 S4
#   CLIENT=lapin bench/compare.sh S1 S8   # throughput scenarios driven by lapin (bench/lapin-perf)
#   CLIENT=amqprs bench/compare.sh S1 S8  # ... or by amqprs (bench/amqprs-perf)
#
# Environment: CLIENT for the throughput scenarios' publishers and consumers: ferry (default,
# `ferrymq perf`'s pre-encoded, batched client), lapin or amqprs (one awaited publish at a time
# and deliveries read one by one, as applications do); ROUNDS (3), DURATION seconds (10), PREFILL for S6 (1000000),
# CONNECTIONS (10000), QUEUES (100000), BACKLOG for MEM (1000000), OUT directory for raw JSON (bench/results/<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
PREFILL=${PREFILL:-1000000}
CONNECTIONS=${CONNECTIONS:-10000}
QUEUES=${QUEUES:-100000}
BACKLOG=${BACKLOG:-1000000}
OUT=${OUT:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
CLIENT=${CLIENT:-ferry}
RABBIT_PORT=${RABBIT_PORT:-5680}
FERRY_PORT=${FERRY_PORT:-5690}
SCENARIOS=("$@")
# MEM runs first, on fresh brokers, so its RSS is the backlog's and not earlier runs' leftovers.
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(MEM S1 S2 S3 S4 S5 S6 S7 S8 PPUB CONN QUEUES)
mkdir -p "$OUT"
WORK=$(mktemp -d)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if ! command -v rabbitmq-server >/dev/null; then
    echo "installing rabbitmq-server from Debian..."
    apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
fi
# The Debian package may start a service on 5672; ours runs separately. Its /usr/sbin
# wrappers switch to the rabbitmq user through su, which resets the open-file limit to 1024
# (RabbitMQ sizes its handle limits at boot), so call RabbitMQ's own scripts directly.
RMQ_BIN=/usr/lib/rabbitmq/bin
[ -x "$RMQ_BIN/rabbitmq-server" ] || RMQ_BIN=$(dirname "$(command -v rabbitmq-server)")
BIN=target/release/ferrymq
case $CLIENT in
    ferry) cargo build --release --quiet --bin ferrymq
           PERF=("$BIN" perf throughput) ;;
    lapin) cargo build --release --quiet --bin ferrymq --bin lapin-perf
           PERF=(target/release/lapin-perf) ;;
    amqprs) cargo build --release --quiet --bin ferrymq --bin amqprs-perf
           PERF=(target/release/amqprs-perf) ;;
    *) echo "CLIENT must be ferry, lapin or amqprs" >&2; exit 2 ;;
esac

RNODE=ferrybench@localhost
export RABBITMQ_NODENAME=$RNODE RABBITMQ_NODE_PORT=$RABBIT_PORT RABBITMQ_DIST_PORT=$((RABBIT_PORT + 20000)) \
    RABBITMQ_MNESIA_BASE=$WORK/rabbit-mnesia RABBITMQ_LOG_BASE=$WORK/rabbit-log \
    RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/rabbit-plugins RABBITMQ_CONFIG_FILE=$WORK/rabbitmq
export ERL_CRASH_DUMP=$WORK/erl_crash.dump
mkdir -p "$WORK/rabbit-mnesia" "$WORK/rabbit-log"
echo "[]." > "$WORK/rabbit-plugins"
# Debian's wrapper runs the broker as the rabbitmq user when started by root.
chmod 755 "$WORK"
if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$WORK/rabbit-mnesia" "$WORK/rabbit-log"; fi
: > "$WORK/rabbitmq.conf"

cleanup() {
    "$RMQ_BIN/rabbitmqctl" -n "$RNODE" stop >/dev/null 2>&1 || true
    [ -n "${FERRY_PID:-}" ] && kill "$FERRY_PID" 2>/dev/null && wait "$FERRY_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 120); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.5
    done
    echo "port $1 did not open; last broker log lines:" >&2
    for f in "$WORK"/*.out; do tail -n 20 "$f" >&2; done
    return 1
}

echo "starting RabbitMQ on $RABBIT_PORT and FerryMQ on $FERRY_PORT (logs in $WORK)"
"$RMQ_BIN/rabbitmq-server" >"$WORK/rabbit.out" 2>&1 &
"$BIN" server --management-port 0 --prometheus-port 0 --bind 127.0.0.1 --amqp-port "$FERRY_PORT" --data-dir "$WORK/ferry-data" --log-level warn \
    >"$WORK/ferry.out" 2>&1 &
FERRY_PID=$!
wait_port "$FERRY_PORT"
wait_port "$RABBIT_PORT"
RABBIT_PID=$("$RMQ_BIN/rabbitmqctl" -n "$RNODE" eval 'os:getpid().' | tr -dc '0-9')
echo "RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null) pid $RABBIT_PID; FerryMQ pid $FERRY_PID; client $CLIENT"

args_for() {
    case $1 in
        S1) echo "--time $DURATION" ;;
        S2) echo "--time $DURATION --persistent --durable --confirm 1000 --ack-every 100 --prefetch 1000" ;;
        S3) echo "--time $DURATION --size 1024" ;;
        S4) echo "--time $DURATION --fanout --queues 10 --consumers 10" ;;
        S5) echo "--time $DURATION --publish-only" ;;
        S6) echo "--time 600 --prefill $PREFILL --consume-only" ;;
        S7) echo "--time $DURATION --rate 10000" ;;
        S8) echo "--time $DURATION --publishers 8 --queues 8 --consumers 8" ;;
        PPUB) echo "--time $DURATION --persistent --durable --publish-only --confirm 1000" ;;
        MEM) echo "--time 600 --publish-only --pmessages $BACKLOG --confirm 1000" ;;
    esac
}

run_one() { # scenario broker port pid round
    local s=$1 b=$2 port=$3 pid=$4 r=$5 f="$OUT/$1-$2-$5.json"
    local uri="amqp://guest:guest@127.0.0.1:$port/%2f" ok=0
    case $s in
        CONN) "$BIN" perf connections --uri "$uri" --count "$CONNECTIONS" --broker-pid "$pid" >"$f.log" 2>&1 || ok=$? ;;
        QUEUES) "$BIN" perf queues --uri "$uri" --count "$QUEUES" --broker-pid "$pid" --cleanup >"$f.log" 2>&1 || ok=$? ;;
        *) # shellcheck disable=SC2046
           "${PERF[@]}" --uri "$uri" --quiet --cleanup --queue-prefix "bench-$s" --broker-pid "$pid" $(args_for "$s") >"$f.log" 2>&1 || ok=$? ;;
    esac
    # A failed run is reported and left out of the medians; the comparison goes on.
    if [ "$ok" -eq 0 ]; then tail -n 1 "$f.log" >"$f"; else echo "  FAILED (exit $ok): $(tail -n 1 "$f.log")"; fi
    echo "  $s $b round $r: $(cat "$f" 2>/dev/null || echo failed)"
}

for s in "${SCENARIOS[@]}"; do
    rounds=$ROUNDS
    # Memory scenarios are deterministic enough to run once per broker.
    case $s in CONN|QUEUES|MEM) rounds=1 ;; esac
    for r in $(seq 1 "$rounds"); do
        run_one "$s" rabbitmq "$RABBIT_PORT" "$RABBIT_PID" "$r"
        run_one "$s" ferrymq "$FERRY_PORT" "$FERRY_PID" "$r"
    done
done

python3 bench/table.py "$OUT" "${SCENARIOS[@]}" | tee "$OUT/table.md"
