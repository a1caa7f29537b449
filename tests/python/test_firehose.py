"""The firehose tracer as a RabbitMQ user switches it on and reads it: `PUT /api/vhosts/{v}`
with `{"tracing": true}`, a queue bound to `amq.rabbitmq.trace`, `publish.<exchange>` and
`deliver.<queue>` copies with RabbitMQ's headers. Passes against RabbitMQ 3.10 too:
AMQP_TEST_PORT=5680 MGMT_TEST_PORT=15680 pytest tests/python/test_firehose.py"""

import base64
import json
import time
import urllib.request
import uuid

import pika
import pytest

from conftest import wait_until


def api(broker, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{broker.http_port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def set_tracing(broker, on: bool):
    status, _ = api(broker, "PUT", "/api/vhosts/%2F", {"tracing": on})
    assert status in (201, 204), status
    wait_until(lambda: api(broker, "GET", "/api/vhosts/%2F")[1]["tracing"] is on, what="tracing flag")


def s(v):
    return v.decode() if isinstance(v, bytes) else v


def drain(ch, queue, want, timeout=15):
    """Trace messages from `queue` until `want` have come (or the deadline)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        got.append((method.routing_key, props.headers or {}, body))
    return got


@pytest.fixture
def traced(broker):
    conn = broker.connect()
    ch = conn.channel()
    tq = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(tq, "amq.rabbitmq.trace", "#")
    set_tracing(broker, True)
    try:
        yield conn, ch, tq
    finally:
        set_tracing(broker, False)
        if conn.is_open:
            conn.close()


def test_publish_and_deliver_are_traced_with_rabbitmqs_headers(broker, traced):
    conn, ch, tq = traced
    q = f"fh-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(q, exclusive=True)
    props = pika.BasicProperties(message_id="m-1", content_type="text/plain",
                                 headers={"k": "v"}, delivery_mode=2)
    ch.basic_publish("", q, b"hello", properties=props)
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"hello"
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, _ = ch.basic_get(q, auto_ack=True)  # the redelivery
    traces = drain(ch, tq, 3)
    keys = [k for k, _, _ in traces]
    assert keys == ["publish.", f"deliver.{q}", f"deliver.{q}"], keys
    _, h, body = traces[0]
    assert body == b"hello"
    assert s(h["exchange_name"]) == ""
    assert [s(k) for k in h["routing_keys"]] == [q]
    assert [s(k) for k in h["routed_queues"]] == [q]
    assert s(h["user"]) == "guest" and s(h["vhost"]) == "/"
    assert isinstance(h["channel"], int) and h["channel"] >= 1
    assert "->" in s(h["connection"]) and s(h["node"])
    p = h["properties"]
    assert s(p["message_id"]) == "m-1" and s(p["content_type"]) == "text/plain"
    assert p["delivery_mode"] == 2 and s(p["headers"]["k"]) == "v"
    assert [traces[1][1]["redelivered"], traces[2][1]["redelivered"]] == [0, 1]
    assert s(traces[1][1]["exchange_name"]) == ""


def test_consumer_deliveries_and_named_exchanges_are_traced(broker, traced):
    conn, ch, tq = traced
    x = f"fh-x-{uuid.uuid4().hex[:6]}"
    q = f"fh-{uuid.uuid4().hex[:8]}"
    ch.exchange_declare(x, "topic", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, "orders.*")
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish(x, "orders.new", b"o1")
    ch.basic_publish(x, "nowhere", b"lost")
    wait_until(lambda: conn.process_data_events(0.05) or got, what="the delivery")
    traces = drain(ch, tq, 3)
    by_key = {}
    for k, h, b in traces:
        by_key.setdefault(k, []).append((h, b))
    assert sorted(b for _, b in by_key[f"publish.{x}"]) == [b"lost", b"o1"]
    unrouted = [h for h, b in by_key[f"publish.{x}"] if b == b"lost"][0]
    assert list(unrouted["routed_queues"]) == []
    assert [b for _, b in by_key[f"deliver.{q}"]] == [b"o1"]


def test_transactional_publishes_are_traced_when_they_arrive(broker, traced):
    # As RabbitMQ: traced on arrival, before the commit, and also when rolled back.
    conn, ch, tq = traced
    q = f"fh-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(q, exclusive=True)
    ch.tx_select()
    ch.basic_publish("", q, b"in-tx")
    ch.basic_publish("", q, b"rolled-back")
    reader = conn.channel()
    traces = drain(reader, tq, 2)
    assert [(k, b) for k, _, b in traces] == [("publish.", b"in-tx"), ("publish.", b"rolled-back")]
    ch.tx_rollback()
    ch.tx_commit()
    assert reader.basic_get(q, auto_ack=True)[0] is None


def test_off_means_no_traces_and_the_flag_shows_in_the_api(broker):
    conn = broker.connect()
    ch = conn.channel()
    tq = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(tq, "amq.rabbitmq.trace", "#")
    set_tracing(broker, True)
    assert api(broker, "GET", "/api/vhosts/%2F")[1]["tracing"] is True
    set_tracing(broker, False)
    q = f"fh-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"quiet")
    ch.basic_get(q, auto_ack=True)
    assert drain(ch, tq, 1, timeout=1) == []
    conn.close()


def test_a_trace_queue_that_also_gets_ordinary_messages_does_not_trace_its_traces(broker, traced):
    # The queue bound to the trace exchange also takes ordinary messages: delivering those
    # is traced into the same queue (a deadlock if tracing ran under the queue's lock), and
    # the trace copies delivered from it are not traced again (no feedback loop).
    conn, ch, tq = traced
    seen = []
    ch.basic_consume(tq, lambda c, m, p, b: seen.append((m.routing_key, b)), auto_ack=True)
    for i in range(20):
        ch.basic_publish("", tq, f"plain-{i}".encode())
    wait_until(lambda: conn.process_data_events(0.05) or len(seen) >= 60, timeout=15,
               what="60 deliveries")
    conn.process_data_events(0.5)
    plain = [b for k, b in seen if k == tq]
    assert len(plain) == 20
    # 20 publish traces and 20 deliver traces of the plain ones; the trace copies' own
    # deliveries add nothing.
    assert sum(1 for k, _ in seen if k == "publish.") == 20
    assert sum(1 for k, _ in seen if k == f"deliver.{tq}") == 20
    assert len(seen) == 60


def test_publishing_to_the_trace_exchange_is_refused(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("amq.rabbitmq.trace", "publish.x", b"forged")
    assert e.value.reply_code == 403
    conn.close()


def test_tracing_must_be_a_boolean(broker):
    if broker.external:
        pytest.skip("RabbitMQ 3.10 takes any value as false")
    status, _ = api(broker, "PUT", "/api/vhosts/%2F", {"tracing": "yes"})
    assert status == 400
    assert api(broker, "GET", "/api/vhosts/%2F")[1]["tracing"] is False


# ---------------------------------------------------------------------------------------
# Live traces (FerryMQ's /api/traces, what the console's trace page reads)


def test_a_live_trace_follows_a_message_through_dead_lettering(broker):
    if broker.external:
        pytest.skip("FerryMQ's live traces (RabbitMQ's rabbitmq_tracing writes files)")
    name = f"t-{uuid.uuid4().hex[:6]}"
    assert api(broker, "PUT", f"/api/traces/%2F/{name}", {"pattern": "#", "max_payload_bytes": 4})[0] == 201
    assert api(broker, "GET", "/api/vhosts/%2F")[1]["tracing"] is True
    listed = api(broker, "GET", "/api/traces")[1]
    assert [t["name"] for t in listed if t["name"] == name] == [name]
    conn = broker.connect()
    ch = conn.channel()
    dlx, work, dead = f"dlx-{name}", f"work-{name}", f"dead-{name}"
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dead, exclusive=True)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(work, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", work, b"payload-long", properties=pika.BasicProperties(message_id="order-7"))
    method, _, _ = ch.basic_get(work, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    ch.basic_get(dead, auto_ack=True)

    def events():
        out = api(broker, "GET", f"/api/traces/%2F/{name}?since=0")[1]
        return out if len(out["items"]) >= 3 else None
    out = wait_until(events, timeout=15, what="three trace events")
    path = [(e["kind"], e["routing_key"]) for e in out["items"]]
    # Dead-lettering is not a client publish (not traced, as in RabbitMQ's firehose): the
    # letter shows where it is delivered next, from the DLX, with its x-death.
    assert path == [("publish", "publish."), ("deliver", f"deliver.{work}"),
                    ("deliver", f"deliver.{dead}")], path
    first = out["items"][0]
    assert first["headers"]["properties"]["message_id"] == "order-7"
    assert first["headers"]["routed_queues"] == [work]
    assert first["payload"] == "payl" and first["payload_bytes"] == 12
    # The dead letter carries its x-death: where it died and why.
    assert out["items"][2]["headers"]["exchange_name"] == dlx
    death = out["items"][2]["headers"]["properties"]["headers"]["x-death"][0]
    assert death["queue"] == work and death["reason"] == "rejected"
    # Reading on from `next` gives only what came after.
    after = api(broker, "GET", f"/api/traces/%2F/{name}?since={out['next']}")[1]
    assert after["items"] == []
    conn.close()
    assert api(broker, "DELETE", f"/api/traces/%2F/{name}")[0] == 204
    assert api(broker, "GET", "/api/vhosts/%2F")[1]["tracing"] is False
    assert api(broker, "GET", f"/api/traces/%2F/{name}")[0] == 404


def test_live_trace_requests_are_checked(broker):
    if broker.external:
        pytest.skip("FerryMQ's live traces")
    for body in [{"pattern": 5}, {"pattern": "x" * 300}, {"max_payload_bytes": "lots"}]:
        assert api(broker, "PUT", "/api/traces/%2F/bad", body)[0] == 400, body
    assert api(broker, "PUT", "/api/traces/no-such-vhost/t", {})[0] == 404
    assert api(broker, "GET", "/api/traces/%2F/none?since=x")[0] in (400, 404)
    assert api(broker, "DELETE", "/api/traces/%2F/none")[0] == 404


def test_a_backlog_taken_at_once_is_traced_whole(broker, traced):
    # A consumer without prefetch takes a backlog larger than what one dispatch notes for
    # the tracer (4,096 in FerryMQ) at once: every delivery is still traced.
    conn, ch, tq = traced
    ch.queue_unbind(tq, "amq.rabbitmq.trace", "#")
    ch.queue_bind(tq, "amq.rabbitmq.trace", "deliver.#")
    q = f"fh-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(q, exclusive=True)
    n = 6000
    for i in range(n):
        ch.basic_publish("", q, str(i).encode())
    wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == n,
               what="the backlog")
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    wait_until(lambda: conn.process_data_events(0.05) or len(got) >= n, timeout=30,
               what="the backlog's deliveries")
    wait_until(lambda: ch.queue_declare(tq, passive=True).method.message_count >= n, timeout=15,
               what=f"{n} deliver traces")
    conn.process_data_events(0.5)
    assert ch.queue_declare(tq, passive=True).method.message_count == n
    first = [ch.basic_get(tq, auto_ack=True)[2] for _ in range(3)]
    assert first == [b"0", b"1", b"2"]
