#!/usr/bin/env bash
# S1 (16 B, 1 publisher -> 1 queue -> 1 consumer, autoack) over plain AMQP and over TLS, and
# what peers that open a connection and stall cost the broker, on FerryMQ and (RABBITMQ=1)
# RabbitMQ 3.10 with the same certificate. Rounds alternate plain / TLS (/ RabbitMQ plain /
# RabbitMQ TLS). Brokers are stopped at the end.
#
#   bench/tls.sh                      # FerryMQ only, 3 rounds of 10 s, stall test with 2000
#   RABBITMQ=1 ROUNDS=5 bench/tls.sh  # with RabbitMQ, 5 rounds
#
# Environment: ROUNDS (3), DURATION (10), STALLED (2000, 0 skips the stall test),
# BIN (a ferrymq binary; default: a fresh release build), OUT (bench/results/tls-<time>),
# FERRY_PORT (5890; uses 5890-5893), RABBIT_PORT (5880; and 5881), KEEP_WORK=1 keeps the
# temporary directory (certificates, broker logs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
STALLED=${STALLED:-2000}
RABBITMQ=${RABBITMQ:-0}
OUT=${OUT:-bench/results/tls-$(date -u +%Y%m%dT%H%M%SZ)}
FERRY_PORT=${FERRY_PORT:-5890} RABBIT_PORT=${RABBIT_PORT:-5880}
# TLS ports are the plain ones + 1; the stall test's fresh brokers use FerryMQ's + 2 and + 3.
FERRY_TLS=$((FERRY_PORT + 1)) RABBIT_TLS=$((RABBIT_PORT + 1))
STALL_PORT=$((FERRY_PORT + 2)) STALL_TLS=$((FERRY_PORT + 3))
mkdir -p "$OUT"
WORK=$(mktemp -d)
chmod 755 "$WORK"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet --bin ferrymq
    BIN=target/release/ferrymq
fi

# A CA and a server certificate for 127.0.0.1 (EC P-256), as in docs/security.md.
(
    cd "$WORK"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=bench CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout server.key -out server.csr 2>/dev/null
    printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile server.ext -out server.pem 2>/dev/null
    chmod 644 ./*.pem ./*.key
)

RMQ_BIN=/usr/lib/rabbitmq/bin
RNODE=ferrytls@localhost
cleanup() {
    [ "$RABBITMQ" = 1 ] && "$RMQ_BIN/rabbitmqctl" -n "$RNODE" stop >/dev/null 2>&1 || true
    [ -n "${FERRY_PID:-}" ] && kill "$FERRY_PID" 2>/dev/null && wait "$FERRY_PID" 2>/dev/null || true
    [ -n "${KEEP_WORK:-}" ] && echo "work dir kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 120); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.5
    done
    echo "port $1 did not open" >&2
    return 1
}

# A long handshake timeout, so that stalled peers stay for the memory reading.
printf 'handshake_timeout = 120\n' >"$WORK/ferrymq.toml"
"$BIN" server --management-port 0 --prometheus-port 0 --config "$WORK/ferrymq.toml" --bind 127.0.0.1 --amqp-port "$FERRY_PORT" \
    --data-dir "$WORK/ferry-data" --log-level error --tls-port "$FERRY_TLS" \
    --tls-certfile "$WORK/server.pem" --tls-keyfile "$WORK/server.key" >"$WORK/ferry.out" 2>&1 &
FERRY_PID=$!
wait_port "$FERRY_TLS"

if [ "$RABBITMQ" = 1 ]; then
    if ! command -v rabbitmq-server >/dev/null; then
        apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    export RABBITMQ_NODENAME=$RNODE RABBITMQ_NODE_PORT=$RABBIT_PORT \
        RABBITMQ_DIST_PORT=$((RABBIT_PORT + 20000)) RABBITMQ_MNESIA_BASE=$WORK/rabbit-mnesia \
        RABBITMQ_LOG_BASE=$WORK/rabbit-log RABBITMQ_ENABLED_PLUGINS_FILE=$WORK/rabbit-plugins \
        RABBITMQ_CONFIG_FILE=$WORK/rabbitmq
    export ERL_CRASH_DUMP=$WORK/erl_crash.dump
    mkdir -p "$WORK/rabbit-mnesia" "$WORK/rabbit-log"
    echo "[]." >"$WORK/rabbit-plugins"
    cat >"$WORK/rabbitmq.conf" <<EOF
listeners.tcp.default = $RABBIT_PORT
listeners.ssl.default = $RABBIT_TLS
ssl_options.cacertfile = $WORK/ca.pem
ssl_options.certfile = $WORK/server.pem
ssl_options.keyfile = $WORK/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
handshake_timeout = 120000
ssl_handshake_timeout = 120000
EOF
    if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq: "$WORK/rabbit-mnesia" "$WORK/rabbit-log"; fi
    "$RMQ_BIN/rabbitmq-server" >"$WORK/rabbit.out" 2>&1 &
    wait_port "$RABBIT_TLS"
    RABBIT_PID=$("$RMQ_BIN/rabbitmqctl" -n "$RNODE" eval 'os:getpid().' | tr -dc '0-9')
fi

run_one() { # name uri pid round
    local f="$OUT/$1-$4.json"
    # shellcheck disable=SC2086
    if "$BIN" perf throughput --uri "$2" --cacert "$WORK/ca.pem" --quiet --cleanup \
        --queue-prefix "tls-$1" --broker-pid "$3" --time "$DURATION" >"$f.log" 2>&1; then
        tail -n 1 "$f.log" >"$f"
    else
        echo "  FAILED: $(tail -n 1 "$f.log")"
    fi
    echo "  $1 round $4: $(cat "$f" 2>/dev/null || echo failed)"
}

RUNS=("ferrymq-plain amqp://guest:guest@127.0.0.1:$FERRY_PORT/%2f $FERRY_PID"
      "ferrymq-tls amqps://guest:guest@127.0.0.1:$FERRY_TLS/%2f $FERRY_PID")
if [ "$RABBITMQ" = 1 ]; then
    RUNS+=("rabbitmq-plain amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2f $RABBIT_PID"
           "rabbitmq-tls amqps://guest:guest@127.0.0.1:$RABBIT_TLS/%2f $RABBIT_PID")
fi
for r in $(seq 1 "$ROUNDS"); do
    for run in "${RUNS[@]}"; do
        # shellcheck disable=SC2086
        run_one $run "$r"
    done
done

python3 - "$OUT" <<'EOF'
import glob, json, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(f"{out}/*.json")):
    name = f.rsplit("/", 1)[1].rsplit("-", 1)[0]
    d = json.load(open(f))
    # Per consumed message: with TLS a publisher can get far ahead of the broker (its bytes
    # wait in socket buffers), so perf's per-message figure (over max(published, consumed))
    # would understate a broker that falls behind.
    cpu = d.get("broker_cpu_us_per_msg")
    if cpu is not None and d["consumed"]:
        cpu = cpu * max(d["published"], d["consumed"]) / d["consumed"]
    rows.setdefault(name, []).append((d["consume_rate"], cpu))
print("| S1 | runs (consumed msg/s) | median msg/s | broker CPU µs per consumed msg (median) |")
print("| --- | --- | ---: | ---: |")
med = {}
for name, v in rows.items():
    rates = [r for r, _ in v]
    cpus = [c for _, c in v if c is not None]
    med[name] = statistics.median(rates)
    cpu = f"{statistics.median(cpus):.2f}" if cpus else "n/a"
    print(f"| {name} | {' / '.join(f'{r:,.0f}' for r in rates)} | {med[name]:,.0f} | {cpu} |")
for b in ("ferrymq", "rabbitmq"):
    if f"{b}-plain" in med and f"{b}-tls" in med:
        print(f"\n{b}: TLS / plain = {med[b + '-tls'] / med[b + '-plain']:.2f}")
if "ferrymq-tls" in med and "rabbitmq-tls" in med:
    print(f"TLS: FerryMQ / RabbitMQ = {med['ferrymq-tls'] / med['rabbitmq-tls']:.1f}x")
EOF

[ "$STALLED" -gt 0 ] || exit 0
# Peers that connect and stall: silent; with a partial first message (the first 100 bytes
# of a real ClientHello / the protocol header alone); or with the largest incomplete unit the
# broker must buffer (a TLS record announcing 16 KiB with 16,000 bytes sent / a 4 KiB frame
# with 4,000 bytes sent). Each FerryMQ figure comes from a fresh broker (memory freed by
# earlier peers would otherwise be reused); RabbitMQ's from the running node.
stall() { # port pid tls(0/1) mode(0 silent, 1 partial, 2 largest) label
    python3 - "$@" "$STALLED" <<'PY'
import socket, ssl, struct, sys, time
port, pid, tls, mode, label, n = (int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1",
                                  int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if tls and mode == 1:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello, what = out.read()[:100], "partial ClientHello"
elif tls and mode == 2:
    hello, what = bytes([0x16, 3, 1, 0x40, 0x00]) + bytes(16000), "16 KiB record, incomplete"
elif mode == 1:
    hello, what = b"AMQP\x00\x00", "partial protocol header"
elif mode == 2:
    hello = b"AMQP\x00\x00\x09\x01" + bytes([1, 0, 0]) + struct.pack(">I", 4088) + bytes(4000)
    what = "4 KiB frame, incomplete"
else:
    hello, what = b"", "silent"
time.sleep(1)
before = rss()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if hello:
        s.sendall(hello)
    socks.append(s)
time.sleep(3)
after = rss()
print(f"| {label} | {what} | {n} | {before:.1f} | {after:.1f} | {(after - before) * 1024 / n:.1f} |")
for s in socks:
    s.close()
time.sleep(1)
PY
}
fresh_ferry() {
    [ -n "${STALL_PID:-}" ] && kill "$STALL_PID" 2>/dev/null && wait "$STALL_PID" 2>/dev/null || true
    rm -rf "$WORK/stall-data"
    "$BIN" server --management-port 0 --prometheus-port 0 --config "$WORK/ferrymq.toml" --bind 127.0.0.1 --amqp-port "$STALL_PORT" \
        --data-dir "$WORK/stall-data" --log-level error --tls-port "$STALL_TLS" \
        --tls-certfile "$WORK/server.pem" --tls-keyfile "$WORK/server.key" >>"$WORK/ferry.out" 2>&1 &
    STALL_PID=$!
    wait_port "$STALL_TLS"
}
echo
echo "| broker, port | peers | count | RSS before MiB | RSS after MiB | KiB per peer |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for mode in 0 1 2; do
    fresh_ferry; stall "$STALL_PORT" "$STALL_PID" 0 "$mode" "FerryMQ plain"
    fresh_ferry; stall "$STALL_TLS" "$STALL_PID" 1 "$mode" "FerryMQ TLS"
done
kill "$STALL_PID" 2>/dev/null && wait "$STALL_PID" 2>/dev/null || true
if [ "$RABBITMQ" = 1 ]; then
    for mode in 0 1 2; do
        stall "$RABBIT_PORT" "$RABBIT_PID" 0 "$mode" "RabbitMQ plain"
        stall "$RABBIT_TLS" "$RABBIT_PID" 1 "$mode" "RabbitMQ TLS"
    done
fi
