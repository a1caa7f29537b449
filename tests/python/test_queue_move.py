"""POST /api/queues/{vhost}/{name}/move, FerryMQ's extension that moves a queue's messages
to another queue (the web console's "Move messages"): checked with pika as the independent
client, including what a hostile or careless caller sends."""

import pika
import pytest

from test_management import Http, eventually, q, uniq


@pytest.fixture
def api(broker):
    return Http(broker.http_port)


def confirmed(conn):
    """A channel whose publishes return once the broker has them (confirms), so a move
    right after sees every message."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def declare(ch, durable=True):
    name = uniq("mv")
    ch.queue_declare(queue=name, durable=durable)
    return name


def publish(ch, queue, bodies, **props):
    for b in bodies:
        ch.basic_publish("", queue, b, pika.BasicProperties(delivery_mode=2, **props))


def drain(ch, queue):
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((props, body))


def depth(api, queue):
    status, body, _ = api.get(f"/api/queues/%2F/{q(queue)}")
    assert status == 200, body
    return body["messages"]


def move(api, src, body, user=None):
    return api.call("POST", f"/api/queues/%2F/{q(src)}/move", body)


def test_moves_every_ready_message_in_order_keeping_properties(broker, api):
    conn = broker.connect()
    ch = confirmed(conn)
    src, dst = declare(ch), declare(ch)
    bodies = [f"m{i}".encode() for i in range(25)]
    publish(ch, src, bodies, headers={"tenant": "acme"}, content_type="text/plain", message_id="x")
    status, out, _ = move(api, src, {"destination": dst})
    assert status == 200, out
    assert out["moved"] == 25
    assert depth(api, src) == 0
    got = drain(ch, dst)
    assert [b for _, b in got] == bodies
    props = got[0][0]
    assert props.headers == {"tenant": "acme"}
    assert props.content_type == "text/plain" and props.message_id == "x"
    assert props.delivery_mode == 2
    conn.close()


def test_count_moves_only_the_first_messages(broker, api):
    conn = broker.connect()
    ch = confirmed(conn)
    src, dst = declare(ch), declare(ch)
    publish(ch, src, [b"a", b"b", b"c", b"d", b"e"])
    status, out, _ = move(api, src, {"destination": dst, "count": 2})
    assert (status, out["moved"]) == (200, 2)
    assert [b for _, b in drain(ch, dst)] == [b"a", b"b"]
    assert [b for _, b in drain(ch, src)] == [b"c", b"d", b"e"]
    # A count beyond what is there moves what is there; one beyond the cap is capped.
    publish(ch, src, [b"f"])
    status, out, _ = move(api, src, {"destination": dst, "count": 10**15})
    assert (status, out["moved"]) == (200, 1)
    # An empty source moves nothing, successfully.
    status, out, _ = move(api, src, {"destination": dst})
    assert (status, out["moved"]) == (200, 0)
    conn.close()


def test_moved_persistent_messages_survive_a_crash(broker, api):
    conn = broker.connect()
    ch = confirmed(conn)
    src, dst = declare(ch), declare(ch)
    publish(ch, src, [b"one", b"two", b"three"])
    conn.close()
    assert move(api, src, {"destination": dst})[1]["moved"] == 3
    # kill -9 right after the answer: what the answer counted must be on disk.
    broker.proc.kill()
    broker.proc.wait()
    broker.restart()
    conn = broker.connect()
    ch = confirmed(conn)
    assert [b for _, b in drain(ch, dst)] == [b"one", b"two", b"three"]
    assert drain(ch, src) == []
    conn.close()


@pytest.mark.parametrize("body,status", [
    ({"destination": "DST", "count": 0}, 400),
    ({"destination": "DST", "count": -3}, 400),
    ({"destination": "DST", "count": 1.5}, 400),
    ({"destination": "DST", "count": "lots"}, 400),
    ({"destination": "DST", "count": 1e300}, 400),
    ({"destination": "DST", "count": [1]}, 400),
    ({}, 400),
    ({"destination": 7}, 400),
    ({"destination": "SRC"}, 400),
    ({"destination": "no-such-queue"}, 404),
])
def test_bad_requests_are_refused_and_take_nothing(broker, api, body, status):
    conn = broker.connect()
    ch = confirmed(conn)
    src, dst = declare(ch), declare(ch)
    publish(ch, src, [b"keep"])
    body = {k: (dst if v == "DST" else src if v == "SRC" else v) for k, v in body.items()}
    got, out, _ = move(api, src, body)
    assert got == status, out
    assert "error" in out
    assert depth(api, src) == 1 and depth(api, dst) == 0
    conn.close()


def test_unknown_source_or_vhost_is_404_and_a_malformed_body_400(broker, api):
    conn = broker.connect()
    ch = confirmed(conn)
    dst = declare(ch)
    assert move(api, "nope", {"destination": dst})[0] == 404
    assert api.call("POST", f"/api/queues/nope/x/move", {"destination": dst})[0] == 404
    assert api.call("POST", f"/api/queues/%2F/{q(dst)}/move", raw=b"{not json")[0] == 400
    conn.close()


def test_moves_need_read_on_the_source_and_write_on_the_destination(broker, api):
    conn = broker.connect()
    ch = confirmed(conn)
    src, dst = declare(ch), declare(ch)
    publish(ch, src, [b"x"])
    cases = {
        # read nothing: may not take from the source
        "no-read": {"configure": "", "write": ".*", "read": "^$"},
        # may publish to the default exchange but not write into the destination queue
        "no-dest": {"configure": "", "write": "^amq\\.default$", "read": ".*"},
        # may write the destination but not publish to the default exchange
        "no-default": {"configure": "", "write": f"^{dst}$", "read": ".*"},
    }
    for label, perms in cases.items():
        user = uniq(label)
        api.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})
        api.ok("PUT", f"/api/permissions/%2F/{user}", perms)
        status, out, _ = Http(broker.http_port, user, "pw").call(
            "POST", f"/api/queues/%2F/{q(src)}/move", {"destination": dst})
        assert status == 401, (label, status, out)
        assert depth(api, src) == 1 and depth(api, dst) == 0, label
    # Without read permission, a queue that does not exist is refused like one that does:
    # the answer does not tell which queues exist.
    user = uniq("no-read-probe")
    api.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})
    api.ok("PUT", f"/api/permissions/%2F/{user}", cases["no-read"])
    status, _, _ = Http(broker.http_port, user, "pw").call(
        "POST", "/api/queues/%2F/no-such-queue-at-all/move", {"destination": dst})
    assert status == 401
    # Wrong credentials: 401 too, nothing taken.
    status, _, _ = Http(broker.http_port, "guest", "wrong").call(
        "POST", f"/api/queues/%2F/{q(src)}/move", {"destination": dst})
    assert status == 401
    # With both, it moves.
    user = uniq("ok")
    api.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "management"})
    api.ok("PUT", f"/api/permissions/%2F/{user}",
           {"configure": "", "write": f"^(amq\\.default|{dst})$", "read": f"^{src}$"})
    status, out, _ = Http(broker.http_port, user, "pw").call(
        "POST", f"/api/queues/%2F/{q(src)}/move", {"destination": dst})
    assert (status, out["moved"]) == (200, 1)
    eventually(lambda: depth(api, dst) == 1, "the message in the destination")
    conn.close()


def test_a_full_destination_stops_the_move_and_keeps_the_rest_in_order(broker, api):
    conn = broker.connect()
    ch = confirmed(conn)
    src = declare(ch)
    dst = uniq("full")
    ch.queue_declare(queue=dst, durable=True,
                     arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    publish(ch, src, [b"1", b"2", b"3", b"4"])
    status, out, _ = move(api, src, {"destination": dst})
    assert status == 200, out
    assert out == {"moved": 2, "complete": False}
    assert [b for _, b in drain(ch, dst)] == [b"1", b"2"]
    assert [b for _, b in drain(ch, src)] == [b"3", b"4"]
    conn.close()


def test_a_cc_header_does_not_copy_the_moved_message_into_the_queues_it_names(broker, api):
    # The message went to src and (by its CC header) to other when it was published; moved,
    # it goes to dst only: the header stays, but another copy in `other` would be a
    # duplicate, put there without write permission on it.
    conn = broker.connect()
    ch = confirmed(conn)
    src, dst, other = declare(ch), declare(ch), declare(ch)
    ch.basic_publish("", src, b"cc", pika.BasicProperties(delivery_mode=2, headers={"CC": [other]}))
    assert depth(api, other) == 1
    status, out, _ = move(api, src, {"destination": dst})
    assert (status, out) == (200, {"moved": 1, "complete": True})
    got = drain(ch, dst)
    assert [b for _, b in got] == [b"cc"]
    assert got[0][0].headers == {"CC": [other]}
    assert [b for _, b in drain(ch, other)] == [b"cc"]
    conn.close()


def test_with_the_firehose_on_every_moved_message_is_traced_as_taken_and_published(broker, api):
    conn = broker.connect()
    ch = confirmed(conn)
    src, dst = declare(ch), declare(ch)
    tq = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(tq, "amq.rabbitmq.trace", "#")
    publish(ch, src, [f"t{i}".encode() for i in range(10)])
    api.ok("PUT", "/api/vhosts/%2F", {"tracing": True})
    try:
        status, out, _ = move(api, src, {"destination": dst})
        assert (status, out["moved"]) == (200, 10)
    finally:
        api.ok("PUT", "/api/vhosts/%2F", {"tracing": False})
    keys = [m.routing_key for m, _, _ in iter(lambda: ch.basic_get(tq, auto_ack=True), (None, None, None))]
    assert keys.count(f"deliver.{src}") == 10, keys
    assert keys.count("publish.") == 10, keys
    conn.close()
