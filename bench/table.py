"""Turns bench/compare.sh's JSON results into one markdown table: medians, ratio, spread."""

import glob
import json
import statistics
import sys

out_dir, scenarios = sys.argv[1], sys.argv[2:]

# (label, metric extractor, unit, higher is better)
METRICS = {
    "S1": ("S1 transient 16 B, 1→1→1, autoack", "consume_rate", "msg/s", True),
    "S2": ("S2 persistent 16 B, durable queue, confirms 1000, ack/100", "consume_rate", "msg/s", True),
    "S3": ("S3 transient 1 KiB", "consume_rate", "msg/s", True),
    "S4": ("S4 fanout 1 → 10 queues → 10 consumers", "consume_rate", "msg/s", True),
    "S5": ("S5 publish only", "publish_rate", "msg/s", True),
    "S6": ("S6 drain 1M prefilled", "consume_rate", "msg/s", True),
    "S7": ("S7 p99 latency at 10,000 msg/s", "p99", "µs", False),
    "S8": ("S8 8 pub / 8 queues / 8 cons", "consume_rate", "msg/s", True),
    "PPUB": ("persistent publish, durable queue, confirms 1000 (no consumer)", "publish_rate", "msg/s", True),
    "CONN": ("idle connections: broker RSS", "broker_rss_after_mib", "MiB", False),
    "QUEUES": ("empty queues: broker RSS", "broker_rss_after_mib", "MiB", False),
    "MEM": ("1M queued 16 B messages: broker RSS", "broker_rss_mib", "MiB", False),
}


def value(doc, key):
    if key == "p99":
        return doc["latency_us"]["p99"]
    return doc[key]


def load(s, broker, key):
    vals, cpu = [], []
    for f in sorted(glob.glob(f"{out_dir}/{s}-{broker}-*.json")):
        try:
            doc = json.loads(open(f).read())
        except (ValueError, OSError):
            continue
        vals.append(value(doc, key))
        if doc.get("broker_cpu_us_per_msg") is not None:
            cpu.append(doc["broker_cpu_us_per_msg"])
    return vals, cpu


def fmt(v):
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def spread(vals):
    if len(vals) < 2:
        return "-"
    m = statistics.median(vals)
    return f"±{(max(vals) - min(vals)) / 2 / m * 100:.0f}%" if m else "-"


print("| scenario | unit | RabbitMQ median | FerryMQ median | FerryMQ / RabbitMQ | spread R / F | broker CPU µs/msg R / F |")
print("| --- | --- | ---: | ---: | ---: | --- | --- |")
for s in scenarios:
    label, key, unit, higher = METRICS[s]
    r, rc = load(s, "rabbitmq", key)
    f, fc = load(s, "ferrymq", key)
    rm = statistics.median(r) if r else None
    fm = statistics.median(f) if f else None
    if rm and fm:
        ratio = fm / rm if higher else rm / fm
        ratio_s = f"{ratio:.1f}x" + ("" if higher else " less")
    else:
        ratio_s = "n/a"
    cpu = f"{fmt(statistics.median(rc)) if rc else 'n/a'} / {fmt(statistics.median(fc)) if fc else 'n/a'}"
    if s in ("CONN", "QUEUES", "MEM"):
        cpu = "-"
    print(f"| {label} | {unit} | {fmt(rm)} | {fmt(fm)} | {ratio_s} | {spread(r)} / {spread(f)} | {cpu} |")
