#!/usr/bin/env bash
# A/B of two broker builds on S1, S8 and S2 (bench/compare.sh's scenarios), side by side:
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [SCENARIO...]     (ROUNDS=5 by default)
#   CLIENT=lapin bench/ab.sh OLD_BINARY NEW_BINARY S1 S8     (or CLIENT=amqprs)
#
# Each round starts both brokers on fresh data dirs (ports 5791/5792), runs the scenario
# against each (which one goes first alternates), and stops them. The same perf client drives
# both: the new binary's `perf throughput`, or with CLIENT=lapin the lapin-perf binary beside
# it (or LAPIN_PERF), with CLIENT=amqprs the amqprs-perf one (or AMQPRS_PERF).
# bench/clients_ab.sh runs several clients in one go, with perf stat syscall counts. Prints every round and the medians with the ratio new/old.
# POLL=1: while the NEW broker runs, a client polls its /api/queues and /metrics once a second
# (the management plane's cost: pass the same binary as OLD and NEW).
# The machine is shared: read ratios of medians, not single rounds.
set -euo pipefail
OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [SCENARIO...]}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [SCENARIO...]}
shift 2
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(S1 S8 S2)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
case ${CLIENT:-ferry} in
    ferry) PERF=("$NEW" perf throughput) ;;
    lapin) PERF=("${LAPIN_PERF:-$(dirname "$NEW")/lapin-perf}") ;;
    amqprs) PERF=("${AMQPRS_PERF:-$(dirname "$NEW")/amqprs-perf}") ;;
    *) echo "CLIENT must be ferry, lapin or amqprs" >&2; exit 2 ;;
esac
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

args() {
    case "$1" in
        S1) echo "--time $DURATION" ;;
        S2) echo "--time $DURATION --persistent --durable --confirm 1000 --ack-every 100 --prefetch 1000" ;;
        S8) echo "--time $DURATION --publishers 8 --queues 8 --consumers 8" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}

run_one() { # BIN PORT SCENARIO ROUND -> prints "rate cpu_us"
    local bin=$1 port=$2 sc=$3 r=$4
    local dir="$WORK/d-$port-$r-$sc"
    # Builds from before the HTTP API have no such flag; newer ones must not collide on 15672.
    local mgmt=()
    "$bin" server --help 2>/dev/null | grep -q -- --management-port && mgmt=(--management-port 0)
    "$bin" server --help 2>/dev/null | grep -q -- --prometheus-port && mgmt+=(--prometheus-port 0)
    local poll=""
    if [ -n "${POLL:-}" ] && [ "$bin" = "$NEW" ] && [ "$port" = 5792 ]; then
        mgmt=(--management-port 15792 --prometheus-port 0)
        poll=1
    fi
    "$bin" server "${mgmt[@]}" --bind 127.0.0.1 --amqp-port "$port" --data-dir "$dir" --log-level warn \
        >"$WORK/broker-$port.log" 2>&1 &
    local pid=$!
    wait_port "$port" || { cat "$WORK/broker-$port.log" >&2; exit 1; }
    local poller=""
    if [ -n "$poll" ]; then
        wait_port 15792
        ( while sleep 1; do
            curl -s -o /dev/null -u guest:guest 'http://127.0.0.1:15792/api/queues' || true
            curl -s -o /dev/null 'http://127.0.0.1:15792/metrics' || true
          done ) &
        poller=$!
    fi
    # shellcheck disable=SC2046
    "${PERF[@]}" --uri "amqp://guest:guest@127.0.0.1:$port/%2f" --quiet --cleanup \
        --queue-prefix "ab-$sc-$r" --broker-pid "$pid" $(args "$sc") | tail -n 1 |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(int(j["publish_rate"]), j["broker_cpu_us_per_msg"])'
    [ -n "$poller" ] && { kill "$poller"; wait "$poller" 2>/dev/null || true; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

for sc in "${SCENARIOS[@]}"; do
    old_r=(); new_r=(); old_c=(); new_c=()
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
        for which in $order; do
            # Not a process substitution: the broker must be gone before the next round.
            if [ "$which" = old ]; then
                run_one "$OLD" 5791 "$sc" "$r" >"$WORK/result"
                read -r rate cpu <"$WORK/result"; old_r+=("$rate"); old_c+=("$cpu")
            else
                run_one "$NEW" 5792 "$sc" "$r" >"$WORK/result"
                read -r rate cpu <"$WORK/result"; new_r+=("$rate"); new_c+=("$cpu")
            fi
        done
        echo "$sc round $r: old ${old_r[-1]} msg/s (${old_c[-1]} us/msg)  new ${new_r[-1]} msg/s (${new_c[-1]} us/msg)"
    done
    mo=$(median "${old_r[@]}"); mn=$(median "${new_r[@]}")
    co=$(median "${old_c[@]}"); cn=$(median "${new_c[@]}")
    python3 -c "print(f'$sc median: old {$mo:,.0f}  new {$mn:,.0f}  new/old {$mn/$mo:.3f}  broker us/msg {$co:.2f} -> {$cn:.2f}')"
done
