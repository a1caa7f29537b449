"""The HTTP API (RabbitMQ's management API) as its users call it: with an HTTP client and
with RabbitMQ's own rabbitmqadmin. Passes against RabbitMQ 3.10 with rabbitmq_management
too: AMQP_TEST_PORT=5680 MGMT_TEST_PORT=15680 pytest tests/python/test_management.py"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pika
import pytest


def q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


class Http:
    def __init__(self, port, user="guest", password="guest"):
        self.base = f"http://127.0.0.1:{port}"
        self.auth = None if user is None else "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()

    def call(self, method, path, body=None, raw=None, headers=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.auth:
            req.add_header("Authorization", self.auth)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
                return r.status, (json.loads(text) if text else None), r.headers
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = text
            return e.code, parsed, e.headers

    def get(self, path):
        return self.call("GET", path)

    def ok(self, method, path, body=None):
        status, out, _ = self.call(method, path, body)
        assert status in (200, 201, 204), (method, path, status, out)
        return out


def eventually(f, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.25)


@pytest.fixture
def api(broker):
    h = Http(broker.http_port)
    created = {"vhosts": [], "users": [], "queues": [], "exchanges": []}
    h.created = created
    yield h
    for v in created["vhosts"]:
        h.call("DELETE", f"/api/vhosts/{q(v)}")
    for u in created["users"]:
        h.call("DELETE", f"/api/users/{q(u)}")
    for name in created["queues"]:
        h.call("DELETE", f"/api/queues/%2F/{q(name)}")
    for name in created["exchanges"]:
        h.call("DELETE", f"/api/exchanges/%2F/{q(name)}")


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_queue(api, **body):
    name = uniq("mq")
    api.created["queues"].append(name)
    status, out, _ = api.call("PUT", f"/api/queues/%2F/{q(name)}", body)
    assert status == 201, out
    return name


def new_user(api, tags, password="pw"):
    name = uniq("user")
    api.created["users"].append(name)
    assert api.call("PUT", f"/api/users/{name}", {"password": password, "tags": tags})[0] == 201
    return name


# ---------------------------------------------------------------------------------------
# Authentication and tags


def test_requests_without_valid_credentials_get_401_with_a_basic_challenge(broker):
    status, body, headers = Http(broker.http_port, user=None).get("/api/overview")
    assert (status, body) == (401, None)
    assert headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'
    for h in (Http(broker.http_port, "guest", "wrong"), Http(broker.http_port, "nobody", "x")):
        status, body, headers = h.get("/api/overview")
        assert status == 401
        assert body == {"error": "not_authorized", "reason": "Login failed"}
        assert headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'


def test_tags_decide_what_a_user_may_do(broker, api):
    plain = new_user(api, "")
    status, body, _ = Http(broker.http_port, plain, "pw").get("/api/overview")
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Not management user"})

    mgmt = new_user(api, "management")
    m = Http(broker.http_port, mgmt, "pw")
    assert m.get("/api/whoami")[1] == {"name": mgmt, "tags": ["management"]}
    assert m.get("/api/overview")[0] == 200
    for path in ("/api/users", "/api/permissions", "/api/definitions"):
        assert m.get(path)[:2] == (401, {"error": "not_authorised",
                                          "reason": "Not administrator user"}), path
    assert m.get("/api/nodes")[:2] == (401, {"error": "not_authorised",
                                             "reason": "Not monitor user"})
    # No permissions on any vhost: it sees none of them, and may not look into '/'.
    assert m.get("/api/vhosts")[1] == []
    assert m.get("/api/queues")[1] == []
    assert m.get("/api/queues/%2F")[:2] == (401, {
        "error": "not_authorised", "reason": "User not authorised to access virtual host"})
    # Once it has permissions on '/', it sees '/' and its queues.
    api.ok("PUT", f"/api/permissions/%2F/{mgmt}", {"configure": "^own-", "write": ".*", "read": ".*"})
    assert [v["name"] for v in m.get("/api/vhosts")[1]] == ["/"]
    assert m.get("/api/queues/%2F")[0] == 200
    # Its configure permission decides what it may declare.
    status, body, _ = m.call("PUT", "/api/queues/%2F/not-own", {})
    assert (status, body["error"]) == (401, "not_authorised")
    name = "own-" + uuid.uuid4().hex[:6]
    api.created["queues"].append(name)
    assert m.call("PUT", f"/api/queues/%2F/{name}", {})[0] == 201
    # A monitoring user sees the node.
    mon = new_user(api, "monitoring")
    assert Http(broker.http_port, mon, "pw").get("/api/nodes")[0] == 200


# ---------------------------------------------------------------------------------------
# Overview, nodes, health


def test_overview_counts_objects_and_messages(broker, api):
    name = new_queue(api)
    conn = broker.connect()
    ch = conn.channel()
    for i in range(3):
        ch.basic_publish("", name, b"m%d" % i)
    # Let the publishes arrive (the overview counts queue lengths).
    eventually(lambda: api.get(f"/api/queues/%2F/{q(name)}")[1].get("messages") == 3, "3 messages")
    # RabbitMQ's counts lag by up to its stats interval.
    ov = eventually(lambda: (lambda o: o if o["object_totals"].get("connections", 0) >= 1 else None)(
        api.get("/api/overview")[1]), "the connection counted")
    for key in ("management_version", "rabbitmq_version", "product_name", "node",
                "exchange_types", "message_stats", "listeners"):
        assert key in ov, key
    assert ov["object_totals"]["queues"] >= 1
    assert ov["object_totals"]["exchanges"] >= 7
    eventually(lambda: api.get("/api/overview")[1]["queue_totals"].get("messages_ready", 0) >= 3,
               "queue totals count the ready messages")
    assert any(l["protocol"] == "amqp" and l["port"] == broker.port for l in ov["listeners"])
    types = {t["name"] for t in ov["exchange_types"]}
    assert {"direct", "fanout", "topic", "headers"} <= types
    conn.close()


def test_health_checks_and_aliveness(broker, api):
    assert api.get("/api/health/checks/alarms")[:2] == (200, {"status": "ok"})
    assert api.get("/api/health/checks/virtual-hosts")[:2] == (200, {"status": "ok"})
    status, body, _ = api.get(f"/api/health/checks/port-listener/{broker.port}")
    assert (status, body) == (200, {"status": "ok", "port": broker.port})
    status, body, _ = api.get("/api/health/checks/port-listener/1")
    assert status == 503 and body["status"] == "failed" and body["missing"] == 1
    assert broker.port in body["ports"]
    assert api.get("/api/aliveness-test/%2F")[:2] == (200, {"status": "ok"})
    api.call("DELETE", "/api/queues/%2F/aliveness-test")
    assert api.get("/api/aliveness-test/no-such-vhost")[0] == 404
    nodes = api.get("/api/nodes")[1]
    assert len(nodes) == 1 and nodes[0]["running"] is True and nodes[0]["mem_used"] > 0


def test_errors_have_rabbitmq_status_codes_and_bodies(api):
    assert api.get("/api/no-such-thing")[:2] == (404, {"error": "Object Not Found",
                                                       "reason": "Not Found"})
    assert api.get("/api/queues/%2F/no-such-queue")[:2] == (404, {"error": "Object Not Found",
                                                                  "reason": "Not Found"})
    status, body, _ = api.call("PUT", "/api/queues/%2F/x", raw=b"{bad")
    assert (status, body) == (400, {"error": "bad_request", "reason": "not_json"})
    status, _, headers = api.call("DELETE", "/api/overview")
    assert status == 405
    assert "GET" in headers["Allow"]


# ---------------------------------------------------------------------------------------
# Queues, exchanges, bindings


def test_queue_declare_show_purge_delete(broker, api):
    name = uniq("mq")
    api.created["queues"].append(name)
    path = f"/api/queues/%2F/{q(name)}"
    body = {"durable": True, "auto_delete": False, "arguments": {"x-max-length": 10}}
    assert api.call("PUT", path, body)[0] == 201
    assert api.call("PUT", path, body)[0] == 204
    status, err, _ = api.call("PUT", path, {"durable": False})
    assert status == 400 and err["error"] == "bad_request"
    assert "inequivalent arg 'durable'" in err["reason"]
    # A client sees the queue the API declared.
    conn = broker.connect()
    ch = conn.channel()
    ok = ch.queue_declare(name, passive=True)
    assert ok.method.message_count == 0
    for i in range(4):
        ch.basic_publish("", name, b"x" * i)
    shown = eventually(lambda: (lambda b: b if b.get("messages") == 4 and "state" in b else None)(api.get(path)[1]),
                       "4 messages shown")
    assert shown["name"] == name and shown["vhost"] == "/" and shown["durable"] is True
    assert shown["arguments"] == {"x-max-length": 10}
    assert shown["messages_ready"] == 4 and shown["messages_unacknowledged"] == 0
    assert shown["type"] == "classic" and shown["state"] == "running"
    status, err, _ = api.call("DELETE", path + "?if-empty=true")
    assert status == 400 and "not empty" in err["reason"]
    assert api.call("DELETE", path + "/contents")[0] == 204
    assert ch.queue_declare(name, passive=True).method.message_count == 0
    assert api.call("DELETE", path)[0] == 204
    assert api.get(path)[0] == 404
    conn.close()


def test_queue_details_show_consumers_and_unacked(broker, api):
    name = new_queue(api)
    conn = broker.connect(client_properties={"connection_name": "api-consumer-test"})
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    ch.basic_publish("", name, b"one")
    ch.basic_consume(name, lambda *a: None, consumer_tag="ctag-api")
    conn.process_data_events(time_limit=0.5)
    path = f"/api/queues/%2F/{q(name)}"
    shown = eventually(lambda: (lambda b: b if b.get("messages_unacknowledged") == 1 and b.get("consumers") == 1 else None)(
        api.get(path)[1]), "one unacked")
    assert shown["consumers"] == 1
    assert [c["consumer_tag"] for c in shown["consumer_details"]] == ["ctag-api"]
    consumers = [c for c in api.get("/api/consumers/%2F")[1] if c["queue"]["name"] == name]
    assert len(consumers) == 1 and consumers[0]["ack_required"] is True
    assert consumers[0]["channel_details"]["connection_name"].startswith("127.0.0.1:")
    conn.close()


def test_exchanges_bindings_and_publish(broker, api):
    x = uniq("mx")
    api.created["exchanges"].append(x)
    name = new_queue(api)
    assert api.call("PUT", f"/api/exchanges/%2F/{x}", {"type": "topic", "durable": True})[0] == 201
    status, err, _ = api.call("PUT", f"/api/exchanges/%2F/{x}", {"type": "fanout"})
    assert status == 400
    shown = api.get(f"/api/exchanges/%2F/{x}")[1]
    assert (shown["name"], shown["type"], shown["durable"]) == (x, "topic", True)
    assert any(e["name"] == "amq.topic" for e in api.get("/api/exchanges/%2F")[1])

    status, _, headers = api.call("POST", f"/api/bindings/%2F/e/{x}/q/{name}",
                                  {"routing_key": "orders.#", "arguments": {}})
    assert status == 201 and headers["Location"]
    bindings = api.get(f"/api/bindings/%2F/e/{x}/q/{name}")[1]
    assert [(b["source"], b["routing_key"], b["destination_type"]) for b in bindings] == [
        (x, "orders.#", "queue")]
    key = bindings[0]["properties_key"]
    assert api.get(f"/api/bindings/%2F/e/{x}/q/{name}/{q(key)}")[0] == 200
    qb = api.get(f"/api/queues/%2F/{q(name)}/bindings")[1]
    assert {b["source"] for b in qb} == {"", x}
    assert [b["destination"] for b in api.get(f"/api/exchanges/%2F/{x}/bindings/source")[1]] == [name]

    # Publish through the API: routed, and a client receives it with its properties.
    out = api.ok("POST", f"/api/exchanges/%2F/{x}/publish", {
        "routing_key": "orders.new", "payload": "hello", "payload_encoding": "string",
        "properties": {"headers": {"k": "v"}, "content_type": "text/plain", "delivery_mode": 2}})
    assert out == {"routed": True}
    assert api.ok("POST", f"/api/exchanges/%2F/{x}/publish", {
        "routing_key": "invoices", "payload": "", "payload_encoding": "string",
        "properties": {}}) == {"routed": False}
    conn = broker.connect()
    ch = conn.channel()
    method, props, body = eventually(lambda: (lambda r: r if r[0] else None)(
        ch.basic_get(name, auto_ack=True)), "the published message")
    assert body == b"hello" and method.routing_key == "orders.new"
    assert props.headers == {"k": "v"} and props.content_type == "text/plain"
    assert props.delivery_mode == 2
    conn.close()

    assert api.call("DELETE", f"/api/bindings/%2F/e/{x}/q/{name}/{q(key)}")[0] == 204
    assert api.get(f"/api/bindings/%2F/e/{x}/q/{name}")[1] == []
    assert api.call("DELETE", f"/api/exchanges/%2F/{x}")[0] == 204
    assert api.get(f"/api/exchanges/%2F/{x}")[0] == 404


def test_get_peeks_takes_and_encodes_messages(broker, api):
    name = new_queue(api)
    conn = broker.connect()
    ch = conn.channel()
    ch.basic_publish("", name, b"first", pika.BasicProperties(message_id="m1"))
    ch.basic_publish("", name, b"\xff\x00binary")
    ch.basic_publish("", name, b"third")
    path = f"/api/queues/%2F/{q(name)}"
    eventually(lambda: api.get(path)[1].get("messages") == 3, "3 messages")
    peek = {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000}
    got = api.ok("POST", path + "/get", peek)
    assert [m["payload_encoding"] for m in got] == ["string", "base64"]
    assert got[0]["payload"] == "first" and got[0]["properties"]["message_id"] == "m1"
    assert base64.b64decode(got[1]["payload"]) == b"\xff\x00binary"
    assert got[0]["message_count"] == 2 and got[0]["payload_bytes"] == 5
    assert got[0]["redelivered"] is False
    # A peek leaves them where they were, now marked redelivered.
    again = api.ok("POST", path + "/get", dict(peek, count=1))
    assert again[0]["payload"] == "first" and again[0]["redelivered"] is True
    assert api.get(path)[1].get("messages") == 3
    truncated = api.ok("POST", path + "/get", dict(peek, count=1, truncate=2))
    assert truncated[0]["payload"] == "fi" and truncated[0]["payload_bytes"] == 5
    b64 = api.ok("POST", path + "/get", dict(peek, count=1, encoding="base64"))
    assert b64[0]["payload_encoding"] == "base64" and base64.b64decode(b64[0]["payload"]) == b"first"
    # ack_requeue_false takes them.
    taken = api.ok("POST", path + "/get", {"count": 10, "ackmode": "ack_requeue_false",
                                           "encoding": "auto"})
    assert [m["payload_bytes"] for m in taken] == [5, 8, 5]
    eventually(lambda: api.get(path)[1].get("messages") == 0, "the queue emptied")
    assert api.ok("POST", path + "/get", {"count": 1, "ackmode": "ack_requeue_false",
                                          "encoding": "auto"}) == []
    # An unknown ackmode is refused (RabbitMQ answers 500, FerryMQ 400) and takes nothing.
    status, _, _ = api.call("POST", path + "/get", {"count": 1, "ackmode": "bogus",
                                                    "encoding": "auto"})
    assert status in (400, 500)
    conn.close()


def test_lists_page_sort_and_filter(broker, api):
    vhost = uniq("paging")
    api.created["vhosts"].append(vhost)
    assert api.call("PUT", f"/api/vhosts/{vhost}", {})[0] == 201
    conn = broker.connect(vhost=vhost)
    ch = conn.channel()
    n = 10_000
    for i in range(n):
        ch.queue_declare(f"page-{i:05d}")
    status, page, _ = api.get(f"/api/queues/{vhost}?page=3&page_size=100")
    assert status == 200
    assert (page["page"], page["page_size"], page["page_count"]) == (3, 100, 100)
    assert page["total_count"] == n and page["filtered_count"] == n and page["item_count"] == 100
    assert [x["name"] for x in page["items"]][:2] == ["page-00200", "page-00201"]
    filtered = api.get(f"/api/queues/{vhost}?page=1&page_size=500&name=^page-0012&use_regex=true")[1]
    assert filtered["filtered_count"] == 10 and filtered["total_count"] == n
    rev = api.get(f"/api/queues/{vhost}?page=1&page_size=2&sort=name&sort_reverse=true")[1]
    assert [x["name"] for x in rev["items"]] == ["page-09999", "page-09998"]
    cols = api.get(f"/api/queues/{vhost}?page=1&page_size=1&columns=name,messages")[1]
    assert cols["items"] == [{"name": "page-00000", "messages": 0}]
    status, err, _ = api.get(f"/api/queues/{vhost}?page=102&page_size=100")
    assert (status, err["error"]) == (400, "page_out_of_range")
    status, err, _ = api.get(f"/api/queues/{vhost}?page=1&page_size=501")
    assert (status, err["error"]) == (400, "invalid_pagination_parameters")
    conn.close()


# ---------------------------------------------------------------------------------------
# Connections


def test_connections_are_listed_and_can_be_closed(broker, api):
    label = uniq("conn")
    conn = broker.connect(client_properties={"connection_name": label})
    mine = eventually(lambda: [c for c in api.get("/api/connections")[1]
                               if c.get("client_properties", {}).get("connection_name") == label],
                      "the connection listed")
    c = mine[0]
    assert c["user"] == "guest" and c["vhost"] == "/" and c["protocol"].startswith("AMQP 0-9-1")
    assert c["peer_host"] == "127.0.0.1" and c["port"] == broker.port
    assert c["user_provided_name"] == label
    assert c["name"] == f"127.0.0.1:{c['peer_port']} -> 127.0.0.1:{broker.port}"
    assert api.get(f"/api/connections/{q(c['name'])}")[1]["name"] == c["name"]
    assert any(x["name"] == c["name"] for x in api.get("/api/vhosts/%2F/connections")[1])
    status, _, _ = api.call("DELETE", f"/api/connections/{q(c['name'])}",
                            headers={"X-Reason": "maintenance window"})
    assert status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(100):
            conn.process_data_events(time_limit=0.1)
    assert e.value.reply_code == 320
    assert "maintenance window" in e.value.reply_text


def test_channels_are_listed_with_their_modes_and_counts(broker, api):
    name = new_queue(api)
    label = uniq("chan")
    conn = broker.connect(client_properties={"connection_name": label})
    a = conn.channel()
    a.confirm_delivery()
    a.basic_qos(prefetch_count=7)
    for _ in range(3):
        a.basic_publish("", name, b"x")
    a.basic_consume(name, lambda *args: None, consumer_tag="ch-api")
    b = conn.channel()
    b.tx_select()
    conn.process_data_events(time_limit=0.5)

    def mine():
        conn_names = {c["name"] for c in api.get("/api/connections")[1]
                      if c.get("client_properties", {}).get("connection_name") == label}
        # RabbitMQ shows connection_details as [] until its stats arrive.
        chans = [c for c in api.get("/api/channels")[1]
                 if isinstance(c.get("connection_details"), dict)
                 and c["connection_details"].get("name") in conn_names]
        ok = len(chans) == 2 and any(
            c.get("messages_unacknowledged") == 3
            and (c.get("message_stats") or {}).get("deliver") == 3 for c in chans)
        return sorted(chans, key=lambda c: c["number"]) if ok else None
    first, second = eventually(mine, "both channels listed", timeout=30)
    assert first["name"] == f"{first['connection_details']['name']} ({first['number']})"
    assert (first["confirm"], first["transactional"]) == (True, False)
    assert (second["confirm"], second["transactional"]) == (False, True)
    assert first["prefetch_count"] == 7 and first["consumer_count"] == 1
    assert first["message_stats"]["publish"] == 3
    assert first["message_stats"]["deliver"] == 3
    assert api.get(f"/api/channels/{q(first['name'])}")[1]["number"] == first["number"]
    per_conn = api.get(f"/api/connections/{q(first['connection_details']['name'])}/channels")[1]
    assert sorted(c["number"] for c in per_conn) == [first["number"], second["number"]]
    consumer = [c for c in api.get("/api/consumers")[1] if c["consumer_tag"] == "ch-api"][0]
    assert consumer["channel_details"]["name"] == first["name"]
    assert consumer["prefetch_count"] == 7
    b.close()
    eventually(lambda: len(api.get(f"/api/connections/{q(first['connection_details']['name'])}/channels")[1]) == 1,
               "the closed channel unlisted", timeout=30)
    conn.close()


# ---------------------------------------------------------------------------------------
# Users, vhosts, permissions, policies, limits, definitions


def test_users_vhosts_and_permissions_work_for_clients(broker, api):
    vhost = uniq("vh")
    api.created["vhosts"].append(vhost)
    assert api.call("PUT", f"/api/vhosts/{vhost}", {"description": "test"})[0] == 201
    assert api.call("PUT", f"/api/vhosts/{vhost}", {})[0] == 204
    assert api.get(f"/api/vhosts/{vhost}")[1]["name"] == vhost
    # The creator gets full permissions on it.
    perms = api.get(f"/api/vhosts/{vhost}/permissions")[1]
    assert [(p["user"], p["configure"]) for p in perms] == [("guest", ".*")]
    user = new_user(api, "management", password="s3cret")
    shown = api.get(f"/api/users/{user}")[1]
    assert shown["tags"] == ["management"] and shown["password_hash"]
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        broker.connect(user=user, password="s3cret", vhost=vhost)
    assert api.call("PUT", f"/api/permissions/{vhost}/{user}",
                    {"configure": "", "write": ".*", "read": ".*"})[0] == 201
    assert api.get(f"/api/permissions/{vhost}/{user}")[1]["write"] == ".*"
    conn = broker.connect(user=user, password="s3cret", vhost=vhost)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("nope")
    assert e.value.reply_code == 403
    conn.close()
    # A password change through the API applies at the next login.
    assert api.call("PUT", f"/api/users/{user}", {"password": "other", "tags": "management"})[0] == 204
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        broker.connect(user=user, password="s3cret", vhost=vhost)
    broker.connect(user=user, password="other", vhost=vhost).close()
    assert api.call("DELETE", f"/api/permissions/{vhost}/{user}")[0] == 204
    assert api.get(f"/api/permissions/{vhost}/{user}")[0] == 404
    assert api.call("DELETE", f"/api/users/{user}")[0] == 204
    assert api.get(f"/api/users/{user}")[0] == 404
    assert api.call("DELETE", f"/api/vhosts/{vhost}")[0] == 204
    assert api.get(f"/api/vhosts/{vhost}")[0] == 404


def test_policies_apply_to_queues_and_show_as_their_policy(broker, api):
    vhost = uniq("pol")
    api.created["vhosts"].append(vhost)
    api.ok("PUT", f"/api/vhosts/{vhost}", {})
    body = {"pattern": "^capped\\.", "definition": {"max-length": 2},
            "apply-to": "queues", "priority": 1}
    assert api.call("PUT", f"/api/policies/{vhost}/cap", body)[0] == 201
    listed = api.get(f"/api/policies/{vhost}")[1]
    assert [(p["name"], p["pattern"], p["definition"], p["apply-to"]) for p in listed] == [
        ("cap", "^capped\\.", {"max-length": 2}, "queues")]
    conn = broker.connect(vhost=vhost)
    ch = conn.channel()
    ch.queue_declare("capped.q")
    for i in range(5):
        ch.basic_publish("", "capped.q", b"%d" % i)
    shown = eventually(lambda: (lambda b: b if b.get("messages") == 2 and b.get("policy") else None)(
        api.get(f"/api/queues/{vhost}/capped.q")[1]), "the policy's max-length applied")
    assert shown["policy"] == "cap"
    assert shown["effective_policy_definition"] == {"max-length": 2}
    status, err, _ = api.call("PUT", f"/api/policies/{vhost}/bad",
                              {"pattern": ".*", "definition": {"no-such-key": 1}})
    assert status == 400
    assert api.call("DELETE", f"/api/policies/{vhost}/cap")[0] == 204
    assert api.get(f"/api/policies/{vhost}/cap")[0] == 404
    conn.close()


def test_limits_are_set_and_enforced(broker, api):
    vhost = uniq("lim")
    api.created["vhosts"].append(vhost)
    api.ok("PUT", f"/api/vhosts/{vhost}", {})
    assert api.call("PUT", f"/api/vhost-limits/{vhost}/max-connections", {"value": 1})[0] == 204
    assert api.get(f"/api/vhost-limits/{vhost}")[1] == [
        {"vhost": vhost, "value": {"max-connections": 1}}]
    first = broker.connect(vhost=vhost)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        broker.connect(vhost=vhost)
    first.close()
    status, err, _ = api.call("PUT", f"/api/vhost-limits/{vhost}/max-connections", {})
    assert (status, err) == (400, {"error": "bad_request", "reason": "[{key_missing,value}]"})
    assert api.call("DELETE", f"/api/vhost-limits/{vhost}/max-connections")[0] == 204
    assert api.get(f"/api/vhost-limits/{vhost}")[1] == []
    user = new_user(api, "management")
    assert api.call("PUT", f"/api/user-limits/{user}/max-channels", {"value": 3})[0] == 204
    assert {"user": user, "value": {"max-channels": 3}} in api.get("/api/user-limits")[1]


def test_definitions_export_and_import(broker, api):
    vhost = uniq("defs")
    api.created["vhosts"].append(vhost)
    api.ok("PUT", f"/api/vhosts/{vhost}", {})
    api.ok("PUT", f"/api/queues/{vhost}/kept", {"durable": True, "arguments": {"x-max-length": 7}})
    api.ok("PUT", f"/api/exchanges/{vhost}/kept-x", {"type": "fanout", "durable": True})
    api.ok("POST", f"/api/bindings/{vhost}/e/kept-x/q/kept", {"routing_key": ""})
    whole = api.get("/api/definitions")[1]
    assert any(x["name"] == vhost for x in whole["vhosts"])
    assert any(x["name"] == "kept" and x["vhost"] == vhost for x in whole["queues"])
    one = api.get(f"/api/definitions/{vhost}")[1]
    assert [x["name"] for x in one["queues"]] == ["kept"]
    assert [x["name"] for x in one["exchanges"]] == ["kept-x"]
    assert [(b["source"], b["destination"]) for b in one["bindings"]] == [("kept-x", "kept")]
    # Imported into another vhost, the same objects appear there.
    other = uniq("defs2")
    api.created["vhosts"].append(other)
    api.ok("PUT", f"/api/vhosts/{other}", {})
    assert api.call("POST", f"/api/definitions/{other}", one)[0] in (201, 204)
    copied = eventually(lambda: (lambda r: r[1] if r[0] == 200 else None)(
        api.get(f"/api/queues/{other}/kept")), "the imported queue")
    assert copied["arguments"] == {"x-max-length": 7} and copied["durable"] is True
    assert api.get(f"/api/bindings/{other}/e/kept-x/q/kept")[1] != []
    status, body, _ = api.call("POST", "/api/definitions", raw=b"[not json")
    assert (status, body) == (400, {"error": "bad_request", "reason": "failed_to_parse_json"})


def test_message_stats_count_publishes_deliveries_and_acks(broker, api):
    name = new_queue(api)
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for _ in range(20):
        ch.basic_publish("", name, b"x")
    for _ in range(20):
        method, _, _ = ch.basic_get(name)
        ch.basic_ack(method.delivery_tag)
    path = f"/api/queues/%2F/{q(name)}"

    def stats():
        s = api.get(path)[1].get("message_stats", {})
        return s if s.get("publish") == 20 and s.get("ack") == 20 else None
    s = eventually(stats, "the queue's counters", timeout=30)
    assert s["get"] == 20 and s["deliver_get"] == 20
    assert "rate" in s["publish_details"]
    ov = eventually(lambda: (lambda m: m if m.get("publish", 0) >= 20 else None)(
        api.get("/api/overview")[1]["message_stats"]), "overview counters", timeout=30)
    assert ov["confirm"] >= 20 and ov["ack"] >= 20
    conn.close()


# ---------------------------------------------------------------------------------------
# RabbitMQ's own rabbitmqadmin


def _rabbitmqadmin():
    path = os.environ.get("RABBITMQADMIN") or shutil.which("rabbitmqadmin")
    if not path:
        pytest.fail("rabbitmqadmin not found: scripts/test.sh fetches it from Debian's "
                    "rabbitmq-server package (set RABBITMQADMIN)")
    return path


def test_rabbitmqadmin_works_unchanged(broker, api):
    # Run with this interpreter: the script's shebang names /usr/bin/python3.
    admin = [sys.executable, _rabbitmqadmin(), "-H", "127.0.0.1", "-P", str(broker.http_port),
             "-u", "guest", "-p", "guest"]

    def run(*args):
        out = subprocess.run(admin + list(args), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        assert "***" not in out.stdout + out.stderr, (args, out.stdout, out.stderr)
        return out.stdout
    name = uniq("adm")
    x = uniq("admx")
    api.created["queues"].append(name)
    api.created["exchanges"].append(x)
    run("declare", "queue", f"name={name}", "durable=true")
    run("declare", "exchange", f"name={x}", "type=direct")
    run("declare", "binding", f"source={x}", f"destination={name}", "routing_key=k")
    assert name in run("list", "queues")
    assert x in run("list", "exchanges")
    assert "Message published" in run("publish", f"exchange={x}", "routing_key=k", "payload=hi-admin")
    assert "hi-admin" in run("get", f"queue={name}", "ackmode=ack_requeue_true")
    eventually(lambda: {"name": name, "messages": 1} in json.loads(
        run("-f", "raw_json", "list", "queues", "name", "messages")), "the message listed")
    run("purge", "queue", f"name={name}")
    eventually(lambda: api.get(f"/api/queues/%2F/{q(name)}")[1].get("messages") == 0, "purged")
    run("delete", "queue", f"name={name}")
    assert api.get(f"/api/queues/%2F/{q(name)}")[0] == 404
    assert "guest" in run("list", "users")
    assert "rabbitmq_version" in run("show", "overview")


# ---------------------------------------------------------------------------------------
# Hostile and careless callers


def test_publish_refuses_a_user_id_that_is_not_the_callers(broker, api):
    # As on AMQP (and as RabbitMQ's API answers): consumers trust user_id to name the
    # publisher's login.
    name = new_queue(api)
    path = "/api/exchanges/%2F/amq.default/publish"
    status, body, _ = api.call("POST", path, {
        "routing_key": name, "payload": "x", "payload_encoding": "string",
        "properties": {"user_id": "someone-else"}})
    assert status == 400 and body["error"] == "bad_request", body
    assert "user_id property set to 'someone-else'" in body["reason"]
    assert api.ok("POST", path, {"routing_key": name, "payload": "y",
                                 "payload_encoding": "string",
                                 "properties": {"user_id": "guest"}}) == {"routed": True}
    got = api.ok("POST", f"/api/queues/%2F/{q(name)}/get",
                 {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert [m["payload"] for m in got] == ["y"]


def test_bodies_with_too_many_json_values_are_refused_unparsed(broker, api):
    if broker.external:
        pytest.skip("a FerryMQ limit")
    # Parsed JSON takes many times its text ([0,0,...] sixteen times): a 64 MiB body of
    # it cost the broker 1.8 GB and seconds of a runtime thread, before permissions.
    name = uniq("big")
    api.created["queues"].append(name)
    big = json.dumps({"arguments": {"x-pad": [0] * 200_000}}).encode()
    status, body, _ = api.call("PUT", f"/api/queues/%2F/{q(name)}", raw=big)
    assert (status, body["error"]) == (400, "bad_request"), body
    assert "JSON values" in body["reason"]
    assert api.get(f"/api/queues/%2F/{q(name)}")[0] == 404
    status, body, _ = api.call("POST", "/api/exchanges/%2F/amq.default/publish", raw=big)
    assert status == 400 and "JSON values" in body["reason"]
    # A large payload is one value: still fine.
    new = new_queue(api)
    assert api.ok("POST", "/api/exchanges/%2F/amq.default/publish", {
        "routing_key": new, "payload": "p,:[{" * 400_000, "payload_encoding": "string",
        "properties": {}}) == {"routed": True}


def test_get_stops_after_64_mib_of_payloads_taken_even_when_truncated(broker, api):
    if broker.external:
        pytest.skip("a FerryMQ limit")
    name = new_queue(api)
    conn = broker.connect()
    ch = conn.channel()
    for _ in range(5):
        ch.basic_publish("", name, b"z" * (20 * 1024 * 1024))
    path = f"/api/queues/%2F/{q(name)}"
    eventually(lambda: api.get(path)[1].get("messages") == 5, "5 messages")
    got = api.ok("POST", path + "/get", {"count": 10, "ackmode": "ack_requeue_true",
                                         "encoding": "auto", "truncate": 1})
    # 20, 40, 60 MiB taken: under the limit, so a fourth; 80 MiB: no more.
    assert len(got) == 4 and all(m["payload"] == "z" for m in got)
    assert api.get(path)[1].get("messages") == 5
    conn.close()


def test_names_longer_than_255_bytes_are_refused(broker, api):
    long = "n" * 300
    status, body, _ = api.call("PUT", f"/api/queues/%2F/{long}", {"durable": True})
    assert (status, body["error"]) == (400, "bad_request"), body
    assert "255 bytes" in body["reason"]
    if not broker.external:
        # RabbitMQ declares it, but nothing can be published to it there either.
        status, body, _ = api.call("PUT", f"/api/exchanges/%2F/{long}", {"type": "fanout"})
        assert (status, body["error"]) == (400, "bad_request"), body
    assert api.get(f"/api/queues/%2F/{long}")[0] == 404


def test_api_publishes_are_counted_in_the_overview(broker, api):
    def published():
        return api.get("/api/overview")[1].get("message_stats", {}).get("publish", 0)
    before = published()
    name = new_queue(api)
    for _ in range(3):
        assert api.ok("POST", "/api/exchanges/%2F/amq.default/publish", {
            "routing_key": name, "payload": "x", "payload_encoding": "string",
            "properties": {}}) == {"routed": True}
    eventually(lambda: published() >= before + 3, "the API's publishes counted", timeout=30)


def test_a_peer_that_never_finishes_its_headers_is_disconnected(broker):
    """Slow or silent HTTP clients cannot hold connections (and file descriptors) for ever:
    each must finish a request's headers within 10 seconds."""
    import socket
    silent = socket.create_connection(("127.0.0.1", broker.http_port))
    partial = socket.create_connection(("127.0.0.1", broker.http_port))
    partial.sendall(b"GET /api/overview HTTP/1.1\r\nHost: x\r\n")
    for s in (silent, partial):
        s.settimeout(60)
        try:
            data = s.recv(4096)
            # Closed, possibly after a 408 answer.
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
            if data:
                assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
        s.close()
    # The listener still serves others.
    assert Http(broker.http_port).get("/api/whoami")[0] == 200


def test_topic_permissions_are_set_listed_and_cleared(broker, api):
    vhost = uniq("tp")
    api.created["vhosts"].append(vhost)
    api.ok("PUT", f"/api/vhosts/{vhost}", {})
    user = new_user(api, "management")
    api.ok("PUT", f"/api/permissions/{vhost}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
    body = {"exchange": "amq.topic", "write": "^orders\\.", "read": ".*"}
    assert api.call("PUT", f"/api/topic-permissions/{vhost}/{user}", body)[0] == 201
    want = {"user": user, "vhost": vhost, "exchange": "amq.topic", "write": "^orders\\.", "read": ".*"}
    assert want in api.get("/api/topic-permissions")[1]
    assert api.get(f"/api/vhosts/{vhost}/topic-permissions")[1] == [want]
    assert api.get(f"/api/users/{user}/topic-permissions")[1] == [want]
    assert api.get(f"/api/topic-permissions/{vhost}/{user}")[1] == [want]
    # A client's publish is checked against them.
    conn = broker.connect(user=user, password="pw", vhost=vhost)
    ch = conn.channel()
    # In confirm mode a publish waits for its answer, so the refusal is raised by it.
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "orders.new", b"ok")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("amq.topic", "invoices.new", b"no")
    assert e.value.reply_code == 403
    conn.close()
    assert api.call("DELETE", f"/api/topic-permissions/{vhost}/{user}")[0] == 204
    assert api.get(f"/api/vhosts/{vhost}/topic-permissions")[1] == []
    assert api.get(f"/api/topic-permissions/{vhost}/{user}")[0] == 404


# ---------------------------------------------------------------------------------------
# The endpoints the tests above do not reach


def test_bulk_delete_and_users_without_permissions(broker, api):
    a, b = new_user(api, []), new_user(api, [])
    bare = {u["name"] for u in api.ok("GET", "/api/users/without-permissions")}
    assert {a, b} <= bare
    api.ok("PUT", f"/api/permissions/%2F/{a}", {"configure": ".*", "write": ".*", "read": ".*"})
    bare = {u["name"] for u in api.ok("GET", "/api/users/without-permissions")}
    assert a not in bare and b in bare
    status, _, _ = api.call("POST", "/api/users/bulk-delete", {"users": [a, b]})
    assert status == 204
    names = {u["name"] for u in api.ok("GET", "/api/users")}
    assert a not in names and b not in names


def test_extensions_cluster_name_and_the_remaining_health_checks(broker, api):
    assert isinstance(api.ok("GET", "/api/extensions"), list)
    assert api.ok("GET", "/api/cluster-name")["name"]
    for path in ["/api/health/checks/local-alarms", "/api/health/checks/node-is-quorum-critical",
                 "/api/health/checks/protocol-listener/amqp"]:
        assert api.ok("GET", path)["status"] == "ok", path
    status, out, _ = api.call("GET", "/api/health/checks/protocol-listener/stomp")
    assert status == 503 and out["status"] == "failed"


def test_definitions_download_is_an_attachment(broker, api):
    status, out, headers = api.call("GET", "/api/definitions?download=defs.json")
    assert status == 200 and "users" in out and "queues" in out
    assert "attachment" in (headers.get("Content-Disposition") or "")


def test_delete_if_unused_refuses_a_queue_with_consumers(broker, api):
    name = new_queue(api)
    conn = broker.connect()
    ch = conn.channel()
    ch.basic_consume(name, lambda *a: None)
    eventually(lambda: api.ok("GET", f"/api/queues/%2F/{name}").get("consumers") == 1, "the consumer")
    status, _, _ = api.call("DELETE", f"/api/queues/%2F/{name}?if-unused=true")
    assert status == 400
    assert api.call("GET", f"/api/queues/%2F/{name}")[0] == 200
    conn.close()
    eventually(lambda: api.call("DELETE", f"/api/queues/%2F/{name}?if-unused=true")[0] == 204,
               "delete once unused")


def test_overview_keeps_samples_as_msg_rates_age_asks(broker, api):
    name = new_queue(api)
    conn = broker.connect()
    ch = conn.channel()
    for _ in range(10):
        ch.basic_publish("", name, b"s")
    conn.close()

    def samples():
        o = api.ok("GET", "/api/overview?msg_rates_age=600&msg_rates_incr=5&lengths_age=600&lengths_incr=5")
        got = o.get("message_stats", {}).get("publish_details", {}).get("samples") or []
        ready = o.get("queue_totals", {}).get("messages_ready_details", {}).get("samples") or []
        return len(got) >= 2 and ready and (got, ready)
    got, ready = eventually(samples, "two samples", timeout=30)
    assert all({"sample", "timestamp"} <= set(s) for s in got + ready)
    # Newest first, as RabbitMQ lists them.
    assert got[0]["timestamp"] >= got[-1]["timestamp"]


def test_channels_show_message_rates(broker, api):
    # Rates come from samples 5 s apart: publish until a channel shows one.
    name = new_queue(api)
    conn = broker.connect()
    ch = conn.channel()
    deadline = time.monotonic() + 40
    rate = 0
    while time.monotonic() < deadline and not rate:
        for _ in range(20):
            ch.basic_publish("", name, b"r")
        conn.process_data_events(0.2)
        rate = max((c.get("message_stats", {}).get("publish_details", {}).get("rate", 0)
                    for c in api.ok("GET", "/api/channels")), default=0)
    conn.close()
    assert rate > 0
