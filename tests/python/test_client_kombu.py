"""kombu (over py-amqp, its default `amqp://` transport), used as its user guide uses it:
Producer/Consumer with Exchange and Queue declarations, SimpleQueue, exchanges of each type,
priorities, reject/requeue and dead-lettering, and publishing with retry across a broker
restart.

Every test also passes against RabbitMQ 3.10 (AMQP_TEST_PORT=5681, RABBITMQCTL for the
restart test)."""

import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue, binding


def n(prefix):
    return f"kombu-{prefix}-{uuid.uuid4().hex[:8]}"


def kombu_url(broker):
    # kombu's URL names the vhost after the slash: "//" is the vhost "/".
    return f"amqp://guest:guest@127.0.0.1:{broker.port}//"


def connect(broker):
    # Publisher confirms (kombu's transport option): a publish returns once the broker has
    # routed it, so the counts the tests check include it.
    return Connection(kombu_url(broker), transport_options={"confirm_publish": True})


def collect(conn, queues, count, accept=("json", "text/plain"), **consumer_kwargs):
    """Consumes until `count` messages arrived, acking each; returns (queue name, message)."""
    got = []

    def on_message(body, message):
        got.append((message.delivery_info["routing_key"], message))
        message.ack()
    with Consumer(conn, queues, callbacks=[on_message], accept=list(accept), **consumer_kwargs):
        for _ in range(100):
            if len(got) >= count:
                break
            conn.drain_events(timeout=10)
    assert len(got) == count
    return got


def test_producer_and_consumer_with_declared_entities(broker):
    media = Exchange(n("media"), "direct", durable=False, auto_delete=True)
    video = Queue(n("video"), exchange=media, routing_key="video", auto_delete=True)
    with connect(broker) as conn:
        producer = conn.Producer(serializer="json")
        producer.publish({"name": "clip.mp4", "size": 301, "tags": ["a", "ü"]},
                         exchange=media, routing_key="video", declare=[video],
                         headers={"origin": "upload"}, correlation_id="c-9", priority=3,
                         delivery_mode="persistent")
        received = []

        def on_message(body, message):
            received.append((body, message))
            message.ack()
        with conn.Consumer(video, callbacks=[on_message], accept=["json"]):
            conn.drain_events(timeout=10)
        (body, message), = received
        assert body == {"name": "clip.mp4", "size": 301, "tags": ["a", "ü"]}
        assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
        assert message.headers == {"origin": "upload"}
        assert (message.properties["correlation_id"], message.properties["priority"],
                message.properties["delivery_mode"]) == ("c-9", 3, 2)
        assert (message.delivery_info["exchange"], message.delivery_info["routing_key"],
                message.delivery_info["redelivered"]) == (media.name, "video", False)
        assert message.acknowledged


def test_simple_queue(broker):
    with connect(broker) as conn:
        name = n("simple")
        q = conn.SimpleQueue(name, queue_opts={"auto_delete": True})
        try:
            for i in range(3):
                q.put({"n": i}, serializer="json")
            q.put("plain text", serializer="raw", content_type="text/plain")
            assert q.qsize() == 4
            first = q.get(block=True, timeout=10)
            assert first.payload == {"n": 0}
            first.ack()
            second = q.get(block=True, timeout=10)
            assert second.payload == {"n": 1}
            # Requeued: it comes back marked redelivered (after what the consumer already
            # had in its prefetch buffer).
            second.requeue()
            rest = []
            for _ in range(3):
                m = q.get(block=True, timeout=10)
                rest.append((m.payload, m.content_type, m.delivery_info["redelivered"]))
                m.ack()
            assert sorted(rest, key=repr) == sorted([
                ({"n": 1}, "application/json", True), ({"n": 2}, "application/json", False),
                ("plain text", "text/plain", False)], key=repr)
            with pytest.raises(q.Empty):
                q.get_nowait()
            assert q.qsize() == 0
        finally:
            q.close()


def test_exchanges_of_each_type(broker):
    direct = Exchange(n("direct"), "direct", auto_delete=True)
    fanout = Exchange(n("fanout"), "fanout", auto_delete=True)
    topic = Exchange(n("topic"), "topic", auto_delete=True)
    headers = Exchange(n("headers"), "headers", auto_delete=True)
    queues = {
        "direct-a": Queue(n("da"), direct, routing_key="a", auto_delete=True),
        "fanout-1": Queue(n("f1"), fanout, auto_delete=True),
        "fanout-2": Queue(n("f2"), fanout, auto_delete=True),
        # One queue, two bindings.
        "topic-eu": Queue(n("teu"), auto_delete=True, bindings=[
            binding(topic, routing_key="eu.*.orders"), binding(topic, routing_key="eu.#.refunds")]),
        "headers-all": Queue(n("hall"), headers, auto_delete=True,
                             binding_arguments={"x-match": "all", "kind": "pdf", "size": 1}),
        "headers-any": Queue(n("hany"), headers, auto_delete=True,
                             binding_arguments={"x-match": "any", "kind": "pdf", "size": 1}),
    }
    with connect(broker) as conn:
        producer = Producer(conn, serializer="json")
        for q in queues.values():
            q(conn.default_channel).declare()
        publishes = [
            (direct, "a", {}, "d1"), (direct, "b", {}, "d2"),
            (fanout, "ignored", {}, "f"),
            (topic, "eu.de.orders", {}, "t1"), (topic, "eu.de.x.y.refunds", {}, "t2"),
            (topic, "us.ny.orders", {}, "t3"), (topic, "eu.orders", {}, "t4"),
            (headers, "", {"kind": "pdf", "size": 1}, "h-both"), (headers, "", {"kind": "pdf"}, "h-kind"),
            (headers, "", {"kind": "txt"}, "h-none"),
        ]
        for exchange, key, hdrs, body in publishes:
            producer.publish(body, exchange=exchange, routing_key=key, headers=hdrs)
        got = {}
        for label, q in queues.items():
            bound = q(conn.default_channel)
            bodies = []
            while (message := bound.get(no_ack=True, accept=["json"])) is not None:
                bodies.append(message.payload)
            got[label] = sorted(bodies)
        assert got == {
            "direct-a": ["d1"], "fanout-1": ["f"], "fanout-2": ["f"], "topic-eu": ["t1", "t2"],
            "headers-all": ["h-both"], "headers-any": ["h-both", "h-kind"],
        }


def test_priority_queue_delivers_highest_first(broker):
    q = Queue(n("prio"), max_priority=10, auto_delete=True)
    with connect(broker) as conn:
        producer = conn.Producer(serializer="json")
        for body, priority in (("low", 1), ("high", 9), ("mid", 5), ("none", None)):
            producer.publish(body, routing_key=q.name, declare=[q], priority=priority)
        got = collect(conn, [q], 4, prefetch_count=1)
        assert [m.payload for _, m in got] == ["high", "mid", "low", "none"]


def test_reject_dead_letters_and_requeue_redelivers(broker):
    dlx = Exchange(n("dlx"), "fanout", auto_delete=True)
    dead = Queue(n("dead"), dlx, auto_delete=True)
    work = Queue(n("work"), auto_delete=True, queue_arguments={"x-dead-letter-exchange": dlx.name})
    with connect(broker) as conn:
        dead(conn.default_channel).declare()
        producer = conn.Producer(serializer="json")
        producer.publish({"job": "bad"}, routing_key=work.name, declare=[work])
        producer.publish({"job": "retry"}, routing_key=work.name)
        seen = []

        def on_message(body, message):
            seen.append((body["job"], message.delivery_info["redelivered"]))
            if body["job"] == "bad":
                message.reject()
            elif not message.delivery_info["redelivered"]:
                message.requeue()
            else:
                message.ack()
        with Consumer(conn, [work], callbacks=[on_message], accept=["json"], prefetch_count=1):
            for _ in range(20):
                if len(seen) == 3:
                    break
                conn.drain_events(timeout=10)
        assert seen == [("bad", False), ("retry", False), ("retry", True)]
        (_, message), = collect(conn, [dead], 1)
        assert message.payload == {"job": "bad"}
        death, = message.headers["x-death"]
        assert (death["reason"], death["queue"], death["count"], death["routing-keys"]) == (
            "rejected", work.name, 1, [work.name])


def test_message_ttl_dead_letters_as_expired(broker):
    dead = Queue(n("expired"), auto_delete=True)
    short = Queue(n("short"), auto_delete=True, message_ttl=0.05, queue_arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead.name})
    with connect(broker) as conn:
        dead(conn.default_channel).declare()
        short(conn.default_channel).declare()
        conn.Producer(serializer="json").publish({"x": 1}, routing_key=short.name)
        simple = conn.SimpleQueue(dead)
        try:
            message = simple.get(block=True, timeout=10)
            assert message.payload == {"x": 1}
            death, = message.headers["x-death"]
            assert (death["reason"], death["queue"]) == ("expired", short.name)
            message.ack()
        finally:
            simple.close()
        assert short(conn.default_channel).queue_declare(passive=True).message_count == 0


def test_compression_and_serializers(broker):
    q = Queue(n("codec"), auto_delete=True)
    with connect(broker) as conn:
        producer = conn.Producer()
        payload = {"text": "x" * 10000, "n": [1, 2, 3]}
        producer.publish(payload, routing_key=q.name, declare=[q], serializer="json", compression="zlib")
        producer.publish(payload, routing_key=q.name, serializer="pickle")
        producer.publish(b"\x00\x01raw", routing_key=q.name, serializer=None,
                         content_type="application/octet-stream", content_encoding="binary")
        got = collect(conn, [q], 3, accept=["json", "pickle", "application/octet-stream"])
        zipped, pickled, raw = (m for _, m in got)
        assert zipped.headers["compression"] == "application/x-gzip"
        assert zipped.decode() == payload
        assert (pickled.content_type, pickled.decode()) == ("application/x-python-serialize", payload)
        assert (raw.body, raw.content_type) == (b"\x00\x01raw", "application/octet-stream")


def test_channel_errors_surface_as_kombu_channel_errors(broker):
    with connect(broker) as conn:
        missing = Queue(n("missing"), no_declare=True)
        ch = conn.channel()
        with pytest.raises(conn.channel_errors) as e:
            missing(ch).queue_declare(passive=True)
        assert (e.value.reply_code, e.value.reply_text) == (404, f"NOT_FOUND - no queue '{missing.name}' in vhost '/'")
        ch = conn.channel()
        x = Exchange(n("typed"), "topic", auto_delete=True)
        x(ch).declare()
        with pytest.raises(conn.channel_errors) as e:
            Exchange(x.name, "fanout", auto_delete=True)(ch).declare()
        assert e.value.reply_code == 406


def test_publish_with_retry_survives_a_broker_restart(broker):
    q = Queue(n("durable"), durable=True)
    with connect(broker) as conn:
        producer = conn.Producer(serializer="json")
        producer.publish({"seq": 1}, routing_key=q.name, declare=[q], delivery_mode="persistent")
        broker.restart()
        # The first write after the restart finds the connection closed; kombu reconnects,
        # declares again and publishes.
        producer.publish({"seq": 2}, routing_key=q.name, declare=[q], delivery_mode="persistent",
                         retry=True, retry_policy={"max_retries": 20, "interval_start": 0.1,
                                                   "interval_step": 0.2, "interval_max": 1})
        got = collect(conn, [q], 2)
        assert sorted(m.payload["seq"] for _, m in got) == [1, 2]
        q(conn.default_channel).delete()


def test_native_delayed_delivery_over_quorum_queues_delivers_a_countdown_message(broker):
    # Celery's native delayed delivery (kombu.transport.native_delayed_delivery): 28 quorum
    # queues of TTL 2^level s dead-lettering at least once (with reject-publish) down a
    # chain of topic exchanges; a message's routing key spells its delay in binary.
    from kombu.transport.native_delayed_delivery import (
        bind_queue_to_native_delayed_delivery_exchange, calculate_routing_key,
        declare_native_delayed_delivery_exchanges_and_queues, level_name)
    prefix = n("ndd")
    tasks = Exchange(n("tasks"), "topic", durable=True)
    q = Queue(n("tasks"), tasks, routing_key="work", durable=True)
    with connect(broker) as conn:
        declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum", prefix)
        q(conn.default_channel).declare()
        bind_queue_to_native_delayed_delivery_exchange(conn, q, prefix)
        producer = conn.Producer(serializer="json")
        producer.publish({"task": "later"}, exchange=level_name(27, prefix),
                         routing_key=calculate_routing_key(3, "work"),
                         delivery_mode="persistent")
        ch = conn.default_channel
        # Through level 1 (2 s) and level 0 (1 s), then the delivery exchange: polled with a
        # deadline, nothing is timed.
        import time
        deadline = time.monotonic() + 30
        while True:
            m = q(ch).get(no_ack=True)
            if m:
                break
            assert time.monotonic() < deadline, "the delayed message never arrived"
            time.sleep(0.1)
        assert m.decode() == {"task": "later"}
        assert [d["reason"] for d in m.headers["x-death"]] == ["expired", "expired"]
        q(ch).delete()
        for level in range(28):
            ch.queue_delete(level_name(level, prefix))
            ch.exchange_delete(level_name(level, prefix))
        ch.exchange_delete(f"{prefix}_celery_delayed_delivery")
        tasks(ch).delete()
