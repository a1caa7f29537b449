"""Prometheus metrics as a scraper sees them: rabbitmq_prometheus' names and labels on the
Prometheus port (15692) and on the HTTP API's, parsed by the official Python client's parsers.
Passes against RabbitMQ 3.10 with rabbitmq_prometheus too (FerryMQ's own histograms aside):
AMQP_TEST_PORT=5680 PROMETHEUS_TEST_PORT=15690 MGMT_TEST_PORT=15680 pytest tests/python/test_prometheus.py
"""

import base64
import urllib.error
import urllib.request
import uuid

import pika
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from conftest import wait_until

# Every metric the RabbitMQ-Overview Grafana dashboard (rabbitmq_prometheus 3.10 and later)
# queries: a dashboard panel with one of these missing shows "No data".
DASHBOARD_METRICS = [
    "rabbitmq_identity_info", "rabbitmq_build_info",
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
    "rabbitmq_queues", "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_consumers",
    "rabbitmq_channel_consumers",
    "rabbitmq_global_consumers", "rabbitmq_global_publishers",
    "rabbitmq_global_messages_received_total", "rabbitmq_global_messages_received_confirm_total",
    "rabbitmq_global_messages_routed_total", "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total",
    "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_delivered_consume_auto_ack_total",
    "rabbitmq_global_messages_delivered_consume_manual_ack_total",
    "rabbitmq_global_messages_delivered_get_auto_ack_total",
    "rabbitmq_global_messages_delivered_get_manual_ack_total",
    "rabbitmq_global_messages_get_empty_total", "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_queues_declared_total", "rabbitmq_queues_created_total", "rabbitmq_queues_deleted_total",
    "rabbitmq_connections_opened_total", "rabbitmq_connections_closed_total",
    "rabbitmq_channels_opened_total", "rabbitmq_channels_closed_total",
    "rabbitmq_process_resident_memory_bytes", "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_disk_space_available_bytes", "rabbitmq_disk_space_available_limit_bytes",
    "rabbitmq_process_open_fds", "rabbitmq_process_max_fds",
    "rabbitmq_erlang_uptime_seconds",
]

FERRYMQ_HISTOGRAMS = [
    "ferrymq_delivery_latency_seconds", "ferrymq_fsync_seconds", "ferrymq_group_commit_writes",
]


def scrape(port, path="/metrics", auth=None):
    """Samples {(name, frozenset(labels)): value}, parsed as the server's content type says;
    FerryMQ's OpenMetrics is also parsed as the classic text format old agents read."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read().decode()
        ctype = r.headers.get("Content-Type", "")
    if "openmetrics" in ctype:
        assert text.endswith("# EOF\n")
        families = list(parse_openmetrics(text))
        # A scraper that only knows the 0.0.4 text format reads the same samples.
        classic = {s.name for f in parse_text(text) for s in f.samples}
        assert {s.name for f in families for s in f.samples} <= classic | {"# EOF"}
    else:
        families = list(parse_text(text))
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def names(samples):
    return {n for n, _ in samples}


def value(samples, name, **labels):
    want = set(labels.items())
    hits = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    assert hits, f"{name}{labels} not exposed"
    return sum(hits)


def test_the_grafana_overview_dashboard_finds_every_metric_it_queries(broker):
    got = names(scrape(broker.prometheus_port))
    missing = [m for m in DASHBOARD_METRICS if m not in got]
    assert not missing, missing
    if not broker.external:
        assert set(FERRYMQ_HISTOGRAMS) <= {n.rsplit("_", 1)[0] for n in got if n.endswith("_count")}


def test_the_http_api_listener_serves_the_same_metrics_to_monitoring_users(broker):
    if broker.external:
        pytest.skip("RabbitMQ serves /metrics only on the rabbitmq_prometheus port")
    # The management port asks for a login, as for the rest of the API; 15692 does not.
    assert set(DASHBOARD_METRICS) <= names(scrape(broker.http_port, auth="guest:guest"))
    for path in ["/metrics", "/metrics/per-object", "/metrics/detailed?family=queue_metrics"]:
        with pytest.raises(urllib.error.HTTPError) as e:
            scrape(broker.http_port, path)
        assert e.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as e:
            scrape(broker.http_port, path, auth="guest:wrong")
        assert e.value.code == 401


def test_queue_depths_per_queue_and_in_sum(broker):
    name = f"prom-{uuid.uuid4().hex[:8]}"
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(name)
    for _ in range(5):
        ch.basic_publish("", name, b"x" * 10)
    _, _, _ = ch.basic_get(name, auto_ack=False)
    try:
        def depth():
            s = scrape(broker.prometheus_port, "/metrics/per-object")
            return (value(s, "rabbitmq_queue_messages_ready", vhost="/", queue=name),
                    value(s, "rabbitmq_queue_messages_unacked", vhost="/", queue=name),
                    value(s, "rabbitmq_queue_messages", vhost="/", queue=name))
        wait_until(lambda: depth() == (4, 1, 5), timeout=30, what="per-queue depth")
        agg = scrape(broker.prometheus_port)
        assert value(agg, "rabbitmq_queue_messages_ready") >= 4
        # Aggregated output carries no per-queue series.
        assert not any(dict(ls).get("queue") == name for _, ls in agg)
    finally:
        ch.queue_delete(name)
        conn.close()


def test_global_counters_count_publishes_and_deliveries_and_never_go_back(broker):
    name = f"prom-{uuid.uuid4().hex[:8]}"
    before = scrape(broker.prometheus_port)
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name)
    for _ in range(3):
        ch.basic_publish("", name, b"m")
    ch.basic_publish("", f"nowhere-{name}", b"dropped")
    for _ in range(2):
        method, _, _ = ch.basic_get(name, auto_ack=False)
        ch.basic_ack(method.delivery_tag)
    ch.basic_get(name, auto_ack=True)
    ch.basic_get(name, auto_ack=True)  # empty
    ch.queue_delete(name)
    conn.close()

    def grown(metric, by, **labels):
        return value(scrape(broker.prometheus_port), metric, **labels) - value(before, metric, **labels) >= by

    wait_until(lambda: grown("rabbitmq_global_messages_received_total", 4), timeout=30, what="received")
    wait_until(lambda: grown("rabbitmq_global_messages_received_confirm_total", 4), timeout=30, what="confirm")
    wait_until(lambda: grown("rabbitmq_global_messages_unroutable_dropped_total", 1), timeout=30, what="dropped")
    after = scrape(broker.prometheus_port)
    # The queue is gone; what it delivered still counts.
    classic = {"queue_type": "rabbit_classic_queue"}
    assert value(after, "rabbitmq_global_messages_delivered_get_manual_ack_total", **classic) \
        - value(before, "rabbitmq_global_messages_delivered_get_manual_ack_total", **classic) >= 2
    assert value(after, "rabbitmq_global_messages_acknowledged_total", **classic) \
        - value(before, "rabbitmq_global_messages_acknowledged_total", **classic) >= 2
    assert value(after, "rabbitmq_global_messages_get_empty_total", **classic) \
        - value(before, "rabbitmq_global_messages_get_empty_total", **classic) >= 1
    assert value(after, "rabbitmq_queues_deleted_total") - value(before, "rabbitmq_queues_deleted_total") >= 1
    assert value(after, "rabbitmq_connections_closed_total") - value(before, "rabbitmq_connections_closed_total") >= 1
    for (n, ls), v in before.items():
        if n.startswith("rabbitmq_") and n.endswith("_total") and (n, ls) in after:
            assert after[(n, ls)] >= v, f"{n}{dict(ls)} went back"


def test_channel_and_connection_series_per_object(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=7)
    name = f"prom-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(name, exclusive=True)
    ch.basic_consume(name, lambda *a: None)
    try:
        def prefetches():
            s = scrape(broker.prometheus_port, "/metrics/per-object")
            return [v for (n, ls), v in s.items() if n == "rabbitmq_consumer_prefetch"]
        wait_until(lambda: 7 in prefetches(), timeout=30, what="the channel's prefetch")
        s = scrape(broker.prometheus_port, "/metrics/per-object")
        assert value(s, "rabbitmq_queue_consumers", queue=name) == 1
        assert any(n == "rabbitmq_connection_incoming_bytes_total" and v > 0 for (n, _), v in s.items())
        # Nothing published in confirm mode: nothing unconfirmed (one series per channel).
        unconfirmed = [v for (n, _), v in s.items() if n == "rabbitmq_channel_messages_unconfirmed"]
        assert unconfirmed and set(unconfirmed) == {0}
    finally:
        conn.close()


def test_detailed_gives_the_families_and_vhosts_asked_for(broker):
    name = f"prom-{uuid.uuid4().hex[:8]}"
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(name)
    try:
        def detailed():
            return scrape(broker.prometheus_port,
                          "/metrics/detailed?family=queue_coarse_metrics&family=no_such_family&vhost=%2F")
        wait_until(lambda: any(dict(ls).get("queue") == name for _, ls in detailed()),
                   timeout=30, what="the queue in detailed output")
        s = detailed()
        got = {n for n in names(s) if n.startswith("rabbitmq_detailed_")}
        assert {"rabbitmq_detailed_queue_messages_ready", "rabbitmq_detailed_queue_messages_unacked",
                "rabbitmq_detailed_queue_messages"} <= got, got
        # Nothing of the families not asked for (RabbitMQ adds its queue reductions).
        assert all(n.startswith("rabbitmq_detailed_queue_") for n in got), got
        other = scrape(broker.prometheus_port,
                       "/metrics/detailed?family=queue_coarse_metrics&vhost=no-such-vhost")
        assert not any(dict(ls).get("queue") == name for _, ls in other)
    finally:
        ch.queue_delete(name)
        conn.close()


def test_ferrymq_histograms_count_deliveries_and_fsyncs(broker):
    if broker.external:
        pytest.skip("FerryMQ's own metrics")
    before = scrape(broker.prometheus_port)
    name = f"prom-{uuid.uuid4().hex[:8]}"
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name, durable=True)
    persistent = pika.BasicProperties(delivery_mode=2)
    for _ in range(200):
        ch.basic_publish("", name, b"p", properties=persistent)
        ch.basic_get(name, auto_ack=True)
    ch.queue_delete(name)
    conn.close()
    after = scrape(broker.prometheus_port)
    # One message in 64 is timed (one at a time per queue): 200 taken as they come time 3.
    assert value(after, "ferrymq_delivery_latency_seconds_count") \
        - value(before, "ferrymq_delivery_latency_seconds_count") >= 3
    assert value(after, "ferrymq_fsync_seconds_count") > value(before, "ferrymq_fsync_seconds_count")
    assert value(after, "ferrymq_group_commit_writes_sum") \
        - value(before, "ferrymq_group_commit_writes_sum") >= 200
    assert value(after, "ferrymq_fsync_seconds_bucket", le="+Inf") == value(after, "ferrymq_fsync_seconds_count")


def test_hostile_queries_get_an_answer_not_a_crash(broker):
    if broker.external:
        pytest.skip("FerryMQ's bounds")
    many = "&".join(f"family=f{i}&vhost=v{i}" for i in range(1500))
    for path in ["/metrics/detailed?" + many, "/metrics/detailed?family=%ZZ&vhost=%", "/metrics/detailed",
                 "/metrics?x=" + "a" * 4000]:
        scrape(broker.prometheus_port, path)
    huge = "&".join(f"family=f{i}&vhost=v{i}" for i in range(10000))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{broker.prometheus_port}/metrics/detailed?{huge}", timeout=10)
    assert e.value.code == 414
    # Only the metrics are served on the Prometheus port.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{broker.prometheus_port}/api/overview", timeout=10)
    assert e.value.code == 404
    # Still up.
    assert "rabbitmq_queues" in names(scrape(broker.prometheus_port))


def test_queue_names_with_quotes_and_newlines_do_not_break_the_exposition(broker):
    # A client names queues; a name that broke the text format would blind monitoring.
    if broker.external:
        pytest.skip("RabbitMQ 3.10 writes label values unescaped: such a name breaks its /metrics")
    name = f'we"ird\\name\n{uuid.uuid4().hex[:6]}'
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(name)
    ch.basic_publish("", name, b"x")
    try:
        def ready():
            s = scrape(broker.prometheus_port, "/metrics/per-object")
            return [v for (n, ls), v in s.items()
                    if n == "rabbitmq_queue_messages_ready" and dict(ls).get("queue") == name]
        assert wait_until(ready, timeout=30, what="the oddly named queue") == [1]
    finally:
        ch.queue_delete(name)
        conn.close()
