#!/usr/bin/env bash
# Two broker builds under several load clients, side by side (S1 and S8 by default):
#
#   bench/clients_ab.sh OLD_BINARY NEW_BINARY [SCENARIO...]
#   CLIENTS="amqprs lapin" ROUNDS=5 PERF_STAT=S1 bench/clients_ab.sh OLD NEW S1 S8
#
# Clients: amqprs (bench/amqprs-perf), lapin (bench/lapin-perf), ferry (`ferrymq perf
# throughput` of NEW); the independent clients are taken from beside NEW (or AMQPRS_PERF,
# LAPIN_PERF). Every run starts its broker on a fresh data dir (port 5793) and stops it after;
# within a round each client runs each scenario against both builds, the build that goes first
# alternating from round to round. With PERF_STAT=SCENARIO one more round follows, not in the
# medians, in which `perf stat` counts the broker's syscalls and context switches per message
# (epoll_wait, recvfrom, writev, futex). EXTRA_ARGS go to every client run (e.g. "--rate
# 50000": a publisher that outruns its consumer leaves part of what it published unconsumed,
# and the broker's µs/msg, per published message, then omits their deliveries). Prints every run, then a table of medians (rate,
# broker µs/msg, p50 latency, client µs/msg) with new/old ratios. Raw JSON lines in OUT.
# The machine is shared: read medians and ratios, not single rounds.
set -euo pipefail
OLD=${1:?usage: bench/clients_ab.sh OLD_BINARY NEW_BINARY [SCENARIO...]}
NEW=${2:?usage: bench/clients_ab.sh OLD_BINARY NEW_BINARY [SCENARIO...]}
shift 2
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(S1 S8)
read -r -a CLIENTS <<<"${CLIENTS:-amqprs lapin ferry}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
PORT=${PORT:-5793}
PERF_STAT=${PERF_STAT:-}
EXTRA_ARGS=${EXTRA_ARGS:-}
OUT=${OUT:-$(mktemp -d)}
BIN_DIR=$(dirname "$NEW")
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
EVENTS=syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_futex,context-switches,task-clock

client_cmd() {
    case $1 in
        amqprs) echo "${AMQPRS_PERF:-$BIN_DIR/amqprs-perf}" ;;
        lapin) echo "${LAPIN_PERF:-$BIN_DIR/lapin-perf}" ;;
        ferry) echo "$NEW perf throughput" ;;
        *) echo "unknown client $1 (amqprs, lapin, ferry)" >&2; exit 2 ;;
    esac
}

args() {
    case $1 in
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

run_one() { # CLIENT BUILD SCENARIO ROUND [stat] -> one line in $OUT/runs.tsv
    local client=$1 build=$2 sc=$3 r=$4 stat=${5:-} bin=$OLD
    [ "$build" = new ] && bin=$NEW
    local dir="$WORK/data" f="$OUT/$client-$sc-$build-$r${stat:+-stat}"
    rm -rf "$dir"
    local mgmt=()
    "$bin" server --help 2>/dev/null | grep -q -- --management-port && mgmt=(--management-port 0)
    "$bin" server --help 2>/dev/null | grep -q -- --prometheus-port && mgmt+=(--prometheus-port 0)
    "$bin" server "${mgmt[@]}" --bind 127.0.0.1 --amqp-port "$PORT" --data-dir "$dir" --log-level warn \
        >"$WORK/broker.log" 2>&1 &
    local pid=$!
    wait_port "$PORT" || { cat "$WORK/broker.log" >&2; exit 1; }
    local perf_pid=
    if [ -n "$stat" ]; then
        perf stat -x, -e "$EVENTS" -p "$pid" -o "$f.perf" &
        perf_pid=$!
        sleep 0.2
    fi
    # shellcheck disable=SC2046
    $(client_cmd "$client") --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --quiet --cleanup \
        --queue-prefix "cab-$sc-$r" --broker-pid "$pid" $(args "$sc") $EXTRA_ARGS >"$f.log" 2>&1 ||
        echo "  $client $sc $build round $r FAILED: $(tail -n 1 "$f.log")" >&2
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
    tail -n 1 "$f.log" >"$f.json"
    python3 - "$f" "$client" "$sc" "$build" "$r${stat:+-stat}" >>"$OUT/runs.tsv" <<'EOF'
import json, os, sys
f, client, sc, build, r = sys.argv[1:]
try:
    j = json.load(open(f + ".json"))
except ValueError:
    sys.exit(0)
row = [client, sc, build, r, int(j["publish_rate"]), j["broker_cpu_us_per_msg"],
       j["latency_us"]["p50"], j["perf_cpu_us_per_msg"],
       round(j["consumed"] / max(j["published"], 1), 3)]
if os.path.exists(f + ".perf"):
    counts = {}
    for line in open(f + ".perf"):
        p = line.strip().split(",")
        if len(p) > 2 and p[0].replace(".", "").isdigit():
            counts[p[2].split(":")[-1]] = float(p[0])
    n = max(j["published"], 1)
    row += ["%s=%.3f" % (k.replace("sys_enter_", ""), v / n) for k, v in counts.items()
            if k != "task-clock"]
    row.append("task-clock_us=%.2f" % (counts.get("task-clock", 0) * 1000 / n))
print("\t".join(str(x) for x in row))
EOF
    tail -n 1 "$OUT/runs.tsv" | sed 's/^/  /'
}

: >"$OUT/runs.tsv"
echo "client scenario build round rate broker_us/msg p50_us client_us/msg consumed/published (OUT $OUT)"
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
    for client in "${CLIENTS[@]}"; do
        for sc in "${SCENARIOS[@]}"; do
            for build in $order; do run_one "$client" "$build" "$sc" "$r"; done
        done
    done
done
if [ -n "$PERF_STAT" ]; then
    echo "perf stat round (per message; not in the medians):"
    for client in "${CLIENTS[@]}"; do
        for build in old new; do run_one "$client" "$build" "$PERF_STAT" 0 stat; done
    done
fi

python3 - "$OUT/runs.tsv" <<'EOF' | tee "$OUT/table.md"
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split("\t")
    if p[3].endswith("stat"):
        continue
    runs[(p[0], p[1], p[2])].append((float(p[4]), float(p[5] if p[5] != "None" else "nan"),
                                     float(p[6]), float(p[7]), float(p[8])))
def med(k, i):
    v = [x[i] for x in runs.get(k, [])]
    return statistics.median(v) if v else float("nan")
print("| client | scenario | msg/s old → new | broker µs/msg old → new (rounds new) | new/old µs | p50 µs old → new | client µs/msg new | consumed/published old, new |")
print("| --- | --- | --- | --- | ---: | --- | ---: | --- |")
for (client, sc) in dict.fromkeys((k[0], k[1]) for k in runs):
    o, n = (client, sc, "old"), (client, sc, "new")
    rounds = ", ".join("%.2f" % x[1] for x in runs[n])
    print(f"| {client} | {sc} | {med(o,0):,.0f} → {med(n,0):,.0f} | {med(o,1):.2f} → {med(n,1):.2f} ({rounds}) "
          f"| {med(n,1)/med(o,1):.2f} | {med(o,2):,.0f} → {med(n,2):,.0f} | {med(n,3):.2f} | {med(o,4):.2f}, {med(n,4):.2f} |")
EOF
