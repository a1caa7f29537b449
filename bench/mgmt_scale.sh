#!/usr/bin/env bash
# The management plane at scale: latency of /api/queues (one console page, and the whole
# list), /api/overview, /api/connections (a page) and /metrics (aggregated and per object),
# and broker memory, with QUEUES queues and CONNS idle connections open, for FerryMQ and,
# with RABBIT=1, for a RabbitMQ already running with rabbitmq_management and
# rabbitmq_prometheus (RABBIT_AMQP, RABBIT_MGMT, RABBIT_PROM ports; RABBIT_PID, or the
# beam.smp process whose command line holds RABBIT_NODE).
#
#   bench/mgmt_scale.sh                       (QUEUES=100000 CONNS=10000 REPS=5)
#   RABBIT=1 RABBIT_AMQP=5680 RABBIT_MGMT=15680 RABBIT_PROM=15690 bench/mgmt_scale.sh
#
# Prints, per path, the median of REPS requests (seconds) and the answer's size; and the
# broker's RSS before and after. The queues are declared with `ferrymq perf queues`, the
# connections held open with `ferrymq perf connections --hold`.
set -euo pipefail
BIN=${BIN:-target/release/ferrymq}
QUEUES=${QUEUES:-100000}
CONNS=${CONNS:-10000}
REPS=${REPS:-5}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true

wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

measure() { # NAME AMQP MGMT PROM PID
    local name=$1 amqp=$2 mgmt=$3 prom=$4 pid=$5
    echo "== $name: $QUEUES queues, $CONNS connections"
    echo "$name RSS at start: $(rss_mib "$pid") MiB"
    "$BIN" perf queues --uri "amqp://guest:guest@127.0.0.1:$amqp/%2f" --count "$QUEUES" \
        --prefix "scale-q-" --broker-pid "$pid" | grep summary || true
    "$BIN" perf connections --uri "amqp://guest:guest@127.0.0.1:$amqp/%2f" --count "$CONNS" \
        --broker-pid "$pid" --hold 3600 >"$WORK/conns-$name.log" 2>&1 &
    local holder=$!
    for _ in $(seq 1 1200); do
        grep -q summary "$WORK/conns-$name.log" && break
        sleep 0.5
    done
    grep summary "$WORK/conns-$name.log" || { cat "$WORK/conns-$name.log" >&2; exit 1; }
    # RabbitMQ's statistics reach the API and metrics after its collection interval.
    sleep 10
    echo "$name RSS with queues and connections: $(rss_mib "$pid") MiB"
    local paths=(
        "$mgmt|/api/queues?page=1&page_size=100"
        "$mgmt|/api/queues?page=1&page_size=100&sort=messages&sort_reverse=true&name=q-9999&use_regex=true"
        "$mgmt|/api/queues"
        "$mgmt|/api/overview"
        "$mgmt|/api/connections?page=1&page_size=100"
        "$prom|/metrics"
        "$prom|/metrics/per-object"
    )
    for pp in "${paths[@]}"; do
        local port=${pp%%|*} path=${pp#*|} times=() size=0
        for _ in $(seq 1 "$REPS"); do
            local out
            out=$(curl -s -o "$WORK/body" -u guest:guest -w '%{time_total} %{http_code}' \
                --max-time 600 "http://127.0.0.1:$port$path" || echo "600 000")
            times+=("${out% *}")
            size=$(stat -c %s "$WORK/body" 2>/dev/null || echo 0)
            [ "${out#* }" = 200 ] || echo "  $path answered ${out#* }" >&2
        done
        python3 -c "import statistics,sys; print(f'$name {sys.argv[1]:<95} median {statistics.median(float(x) for x in sys.argv[3:]):8.3f} s  {int(sys.argv[2]):>12,} bytes')" \
            "$path" "$size" "${times[@]}"
    done
    echo "$name RSS after the requests: $(rss_mib "$pid") MiB"
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
}

"$BIN" server --bind 127.0.0.1 --amqp-port 5793 --management-port 15793 --prometheus-port 15794 \
    --data-dir "$WORK/data" --log-level warn >"$WORK/broker.log" 2>&1 &
FERRY=$!
wait_port 5793
wait_port 15793
measure FerryMQ 5793 15793 15794 "$FERRY"
kill "$FERRY"; wait "$FERRY" 2>/dev/null || true

if [ -n "${RABBIT:-}" ]; then
    RPID=${RABBIT_PID:-$(pgrep -f "beam.smp.*${RABBIT_NODE:-rabbit}" | head -n 1)}
    measure RabbitMQ "${RABBIT_AMQP:-5680}" "${RABBIT_MGMT:-15680}" "${RABBIT_PROM:-15690}" "$RPID"
    echo "(the $QUEUES queues scale-q-* stay in RabbitMQ: delete them, or reset the node)"
fi
