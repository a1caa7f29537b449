"""`ferrymq ctl` against a broker, checked with pika: the same commands must work against
FerryMQ and against RabbitMQ 3.10 with rabbitmq_management (ctl talks only to the HTTP API):
AMQP_TEST_PORT=5680 MGMT_TEST_PORT=15680 pytest tests/python/test_ctl.py"""

import json
import os
import subprocess
import uuid

import pika
import pytest

from conftest import _binary
from test_management import eventually  # RabbitMQ lists connections after its stats interval


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Ctl:
    def __init__(self, broker):
        self.uri = f"http://guest:guest@127.0.0.1:{broker.http_port}"

    def run(self, *args, stdin=b"", code=0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMQ_CTL_")}
        out = subprocess.run([_binary(), "ctl", "--uri", self.uri, *args], input=stdin,
                             capture_output=True, timeout=120, env=env)
        assert out.returncode == code, (args, out.returncode, out.stderr.decode())
        return out

    def json(self, *args):
        return json.loads(self.run("--format", "json", *args).stdout)

    def tsv(self, *args):
        lines = self.run("--format", "tsv", *args).stdout.decode().splitlines()
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


@pytest.fixture
def ctl(broker):
    c = Ctl(broker)
    c.cleanup = []
    yield c
    for args in reversed(c.cleanup):
        subprocess.run([_binary(), "ctl", "--uri", c.uri, *args], capture_output=True, timeout=60)


def test_topology_declared_with_ctl_routes_for_pika(broker, ctl):
    vhost, q, x = uniq("ctl-v"), uniq("ctl-q"), uniq("ctl-x")
    ctl.run("declare", "vhost", vhost)
    ctl.cleanup.append(("delete", "vhost", vhost))
    v = ("--vhost", vhost)
    ctl.run(*v, "declare", "queue", q, "--arguments", '{"x-max-length": 100}')
    ctl.run(*v, "declare", "exchange", x, "--type", "topic")
    ctl.run(*v, "declare", "binding", "--source", x, "--destination", q, "--routing-key", "a.*")

    conn = broker.connect(vhost=vhost)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(x, "a.b", b"routed")
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"routed"
    conn.close()

    assert q in [i["name"] for i in ctl.json(*v, "list", "queues")]
    rows = ctl.tsv(*v, "list", "bindings", "--columns", "source,destination,routing_key")
    assert {"source": x, "destination": q, "routing_key": "a.*"} in rows
    exchanges = ctl.json(*v, "list", "exchanges", "--name", f"^{x}$", "--columns", "name,type")
    assert exchanges == [{"name": x, "type": "topic"}]

    ctl.run(*v, "delete", "binding", "--source", x, "--destination", q, "--routing-key", "a.*")
    assert not [r for r in ctl.tsv(*v, "list", "bindings") if r["source"] == x]
    ctl.run(*v, "delete", "queue", q)
    ctl.run(*v, "delete", "exchange", x)
    conn = broker.connect(vhost=vhost)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare(q, passive=True)
    assert e.value.reply_code == 404
    conn.close()


def test_publish_peek_and_get_with_pika_on_the_other_side(broker, ctl):
    q = uniq("ctl-m")
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(q)
    ctl.cleanup.append(("delete", "queue", q))
    assert ctl.json("publish", "--routing-key", q, "--payload", "from ctl", "--persistent",
                    "--header", "k=v", "--content-type", "text/plain") == {"routed": True}
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"from ctl"
    assert (props.delivery_mode, props.content_type, props.headers) == (2, "text/plain", {"k": "v"})

    ch.confirm_delivery()
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, bytes([0xFF, 0x00]))
    peeked = ctl.json("peek", q, "--count", "2", "--body", "base64")
    assert [m["payload"] for m in peeked] == ["b25l", "/wA="]
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    got = ctl.tsv("get", q)
    assert [(r["payload"], r["redelivered"]) for r in got] == [("one", "true")]
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ctl.run("purge", "queue", q)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    conn.close()


def test_users_permissions_policies_limits_and_definitions(broker, ctl):
    user, vhost, pol = uniq("ctl-u"), uniq("ctl-v"), uniq("ctl-p")
    ctl.run("declare", "vhost", vhost)
    ctl.cleanup.append(("delete", "vhost", vhost))
    ctl.run("declare", "user", user, "--user-password", "pw", "--tags", "management")
    ctl.cleanup.append(("delete", "user", user))
    v = ("--vhost", vhost)
    ctl.run(*v, "declare", "permissions", user, "--configure", "^mine\\.")
    ctl.run(*v, "declare", "topic-permissions", user, "--exchange", "amq.topic", "--write", "^w\\.")
    ctl.run(*v, "declare", "policy", pol, "--pattern", "^mine\\.", "--definition",
            '{"max-length": 3}', "--apply-to", "queues")
    ctl.run(*v, "declare", "vhost-limit", "max-queues", "--value", "7")
    ctl.run("declare", "user-limit", user, "max-connections", "--value", "2")

    conn = broker.connect(user=user, password="pw", vhost=vhost)
    ch = conn.channel()
    ch.queue_declare("mine.q", durable=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("other")
    assert e.value.reply_code == 403
    conn.close()

    assert [p["user"] for p in ctl.json(*v, "list", "permissions")].count(user) == 1
    assert ctl.json(*v, "list", "policies")[0]["definition"] == {"max-length": 3}
    assert ctl.json(*v, "list", "vhost-limits")[0]["value"] == {"max-queues": 7}
    assert ctl.json("list", "user-limits", "--name", f"^{user}$")[0]["value"] == {"max-connections": 2}

    # A vhost's definitions out, the vhost gone, then back in.
    exported = ctl.json(*v, "export")
    assert [q["name"] for q in exported["queues"]] == ["mine.q"]
    assert [p["name"] for p in exported["policies"]] == [pol]
    ctl.run("delete", "vhost", vhost)
    ctl.run("declare", "vhost", vhost)
    ctl.run(*v, "import", stdin=json.dumps(exported).encode())
    assert [q["name"] for q in ctl.json(*v, "list", "queues")] == ["mine.q"]
    assert [p["name"] for p in ctl.json(*v, "list", "policies")] == [pol]


def test_close_connection_by_name(broker, ctl):
    label = uniq("ctl-conn")
    conn = broker.connect(client_properties={"connection_name": label})
    conn.channel()
    name = eventually(lambda: [c["name"] for c in ctl.json("list", "connections")
                               if c.get("client_properties", {}).get("connection_name") == label],
                      "the connection listed")[0]
    ctl.run("close", "connection", name, "--reason", "bye from ctl")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(100):
            conn.process_data_events(time_limit=0.1)
    assert e.value.reply_code == 320
    assert "bye from ctl" in e.value.reply_text


def test_health_status_and_exit_codes(broker, ctl):
    checks = ctl.json("health")
    assert {c["check"] for c in checks} >= {"alarms", "virtual-hosts", f"port-listener {broker.port}"}
    assert all(c["status"] == "ok" for c in checks)
    ctl.run("health", "--listener-port", "1", code=7)
    status = ctl.json("status")
    assert status["rabbitmq_version"].startswith("3.")
    assert f"amqp:{broker.port}" in status["listening"].split()

    ctl.run("--password", "wrong", "list", "queues", code=4)
    ctl.run("delete", "queue", uniq("missing"), code=5)
    q = uniq("ctl-clash")
    ctl.run("declare", "queue", q)
    ctl.cleanup.append(("delete", "queue", q))
    err = ctl.run("declare", "queue", q, "--durable", "false", code=3).stderr.decode()
    assert "inequivalent arg 'durable'" in err
    ctl.run("list", "nothing", code=2)


def test_trace_on_and_off(broker, ctl, request):
    vhost = uniq("ctl-t")
    ctl.run("declare", "vhost", vhost)
    ctl.cleanup.append(("delete", "vhost", vhost))
    v = ("--vhost", vhost)
    ctl.run(*v, "trace", "on")
    assert ctl.json(*v, "list", "vhosts", "--name", f"^{vhost}$")[0]["tracing"] is True
    ctl.run(*v, "trace", "off")
    assert ctl.json(*v, "list", "vhosts", "--name", f"^{vhost}$")[0]["tracing"] is False
