"""py-amqp (the `amqp` package, kombu's default transport), used directly as its users do:
connect, channel, declare, publish, basic_get, consume with drain_events, confirms.

Every test also passes against RabbitMQ 3.10 (AMQP_TEST_PORT=5681)."""

import uuid

import amqp
import pytest
from amqp import exceptions as ex


# What RabbitMQ 3.10 advertises in connection.start's server properties.
RABBITMQ_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


def n(prefix):
    return f"pyamqp-{prefix}-{uuid.uuid4().hex[:8]}"


def connect(broker, **kwargs):
    conn = amqp.Connection(host=f"127.0.0.1:{broker.port}", userid="guest", password="guest",
                           virtual_host="/", **kwargs)
    conn.connect()
    return conn


def drain_until(conn, done, rounds=100):
    """drain_events until done() holds (each wait bounded by a deadline)."""
    for _ in range(rounds):
        if done():
            return
        conn.drain_events(timeout=10)
    assert done()


def test_connection_negotiation_and_capabilities(broker):
    conn = connect(broker, heartbeat=10)
    try:
        assert conn.connected
        assert conn.server_capabilities == RABBITMQ_CAPABILITIES
        assert {"product", "version", "platform", "capabilities"} <= set(conn.server_properties)
        # RabbitMQ's defaults: 2047 channels, 128 KiB frames; the lower heartbeat wins.
        assert (conn.channel_max, conn.frame_max, conn.heartbeat) == (2047, 131072, 10)
    finally:
        conn.close()


def refused_login(broker, **kwargs):
    with pytest.raises(ex.AccessRefused) as e:
        amqp.Connection(host=f"127.0.0.1:{broker.port}", userid="guest", password="wrong", **kwargs).connect()
    return e.value.reply_code, e.value.reply_text


def test_wrong_password_with_plain_is_refused(broker):
    assert refused_login(broker, login_method="PLAIN") == (
        403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
             "For details see the broker logfile.")


def test_wrong_password_with_amqplain_names_amqplain(broker):
    # py-amqp (and so kombu and Celery) prefers AMQPLAIN when the server offers it.
    conn = connect(broker)
    try:
        assert {b"PLAIN", b"AMQPLAIN"} <= set(conn.mechanisms)
    finally:
        conn.close()
    assert refused_login(broker) == (
        403, "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. "
             "For details see the broker logfile.")


def test_unknown_vhost_is_refused(broker):
    vhost = n("no-vhost")
    with pytest.raises(ex.NotAllowed) as e:
        amqp.Connection(host=f"127.0.0.1:{broker.port}", virtual_host=vhost).connect()
    assert (e.value.reply_code, e.value.reply_text) == (530, f"NOT_ALLOWED - vhost {vhost} not found")


def test_declare_publish_and_basic_get(broker):
    # Publishes wait for their confirm, so that the counts below see them.
    conn = connect(broker, confirm_publish=True)
    try:
        ch = conn.channel()
        x = n("orders")
        ch.exchange_declare(x, "direct", durable=False, auto_delete=True)
        declared = ch.queue_declare(n("orders-q"), exclusive=True)
        assert (declared.message_count, declared.consumer_count) == (0, 0)
        ch.queue_bind(declared.queue, x, routing_key="new")
        ch.basic_publish(amqp.Message(b'{"id": 1}', content_type="application/json",
                                      application_headers={"source": "web", "n": 1},
                                      delivery_mode=2, correlation_id="c-1"),
                         exchange=x, routing_key="new")
        ch.basic_publish(amqp.Message("second, text é"), exchange=x, routing_key="new")
        ch.basic_publish(amqp.Message(b"not routed"), exchange=x, routing_key="old")
        assert ch.queue_declare(declared.queue, passive=True).message_count == 2

        msg = ch.basic_get(declared.queue)
        assert msg.body == b'{"id": 1}'
        assert msg.properties["content_type"] == "application/json"
        assert msg.properties["application_headers"] == {"source": "web", "n": 1}
        assert (msg.properties["delivery_mode"], msg.properties["correlation_id"]) == (2, "c-1")
        info = msg.delivery_info
        assert (info["exchange"], info["routing_key"], info["redelivered"], info["message_count"]) == (
            x, "new", False, 1)
        ch.basic_ack(msg.delivery_tag)
        msg = ch.basic_get(declared.queue, no_ack=True)
        # A str body goes out as UTF-8 and comes back decoded.
        assert msg.body == "second, text é"
        assert ch.basic_get(declared.queue) is None
        assert ch.queue_purge(declared.queue) == 0
        assert ch.queue_delete(declared.queue) == 0
    finally:
        conn.close()


def test_consume_with_drain_events_and_prefetch(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_size=0, prefetch_count=1, a_global=False)
        q = ch.queue_declare(exclusive=True, auto_delete=False).queue
        for i in range(3):
            ch.basic_publish(amqp.Message(f"job {i}"), routing_key=q)
        received = []

        def on_message(msg):
            received.append((msg.body, msg.delivery_info["redelivered"]))
            if msg.body == "job 1" and not msg.delivery_info["redelivered"]:
                msg.channel.basic_reject(msg.delivery_tag, requeue=True)
            else:
                msg.channel.basic_ack(msg.delivery_tag)
        tag = ch.basic_consume(q, callback=on_message)
        drain_until(conn, lambda: len(received) == 4)
        assert received == [("job 0", False), ("job 1", False), ("job 1", True), ("job 2", False)]
        ch.basic_cancel(tag)
        assert ch.queue_declare(q, passive=True)[1:] == (0, 0)
    finally:
        conn.close()


def test_publisher_confirms_ack_and_nack(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_select()
        q = ch.queue_declare(exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}).queue
        ch.basic_publish_confirm(amqp.Message(b"fits"), routing_key=q)
        with pytest.raises(ex.MessageNacked):
            ch.basic_publish_confirm(amqp.Message(b"refused"), routing_key=q)
        assert ch.queue_declare(q, passive=True).message_count == 1
        # Unroutable with mandatory: the return comes to the registered handler, then the ack.
        returned = []
        ch.events["basic_return"].add(lambda exc, exchange, key, msg: returned.append(
            (exc.reply_code, exc.reply_text, exchange, key, msg.body)))
        ch.basic_publish_confirm(amqp.Message(b"lost"), exchange="amq.direct", routing_key="nobody",
                                 mandatory=True)
        assert returned == [(312, "NO_ROUTE", "amq.direct", "nobody", b"lost")]
    finally:
        conn.close()


def test_confirm_publish_connection_option(broker):
    # kombu sets confirm_publish=True for its producers: every basic_publish waits for the ack.
    conn = connect(broker, confirm_publish=True)
    try:
        ch = conn.channel()
        q = ch.queue_declare(exclusive=True).queue
        for i in range(3):
            ch.basic_publish(amqp.Message(str(i)), routing_key=q)
        assert ch.queue_declare(q, passive=True).message_count == 3
    finally:
        conn.close()


def test_channel_errors_carry_code_text_and_method(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        missing = n("missing")
        with pytest.raises(ex.NotFound) as e:
            ch.queue_declare(missing, passive=True)
        assert (e.value.reply_code, e.value.reply_text, e.value.method_name) == (
            404, f"NOT_FOUND - no queue '{missing}' in vhost '/'", "Queue.declare")

        ch = conn.channel()
        x = n("typed")
        ch.exchange_declare(x, "topic", auto_delete=True)
        with pytest.raises(ex.PreconditionFailed) as e:
            ch.exchange_declare(x, "direct", auto_delete=True)
        assert (e.value.reply_code, e.value.method_name) == (406, "Exchange.declare")
        assert e.value.reply_text == (f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' "
                                      "in vhost '/': received 'direct' but current is 'topic'")

        ch = conn.channel()
        with pytest.raises(ex.AccessRefused) as e:
            ch.queue_declare("amq.reserved-" + n("q"))
        assert e.value.reply_code == 403
        assert e.value.reply_text.startswith("ACCESS_REFUSED - queue name 'amq.reserved-")

        ch = conn.channel()
        with pytest.raises(ex.NotFound) as e:
            ch.basic_consume(missing, callback=lambda m: None)
        assert (e.value.reply_code, e.value.method_name) == (404, "Basic.consume")
        # py-amqp opens a channel closed by an error again; the connection is still usable.
        assert ch.is_open
        assert ch.queue_declare(exclusive=True).queue.startswith("amq.gen-")
    finally:
        conn.close()


def test_transactions(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        q = ch.queue_declare(exclusive=True).queue
        ch.tx_select()
        ch.basic_publish(amqp.Message(b"kept"), routing_key=q)
        ch.tx_commit()
        ch.basic_publish(amqp.Message(b"dropped"), routing_key=q)
        ch.tx_rollback()
        assert ch.queue_declare(q, passive=True).message_count == 1
        # Acks are transactional too: a rolled back ack leaves the message unacknowledged.
        msg = ch.basic_get(q)
        ch.basic_ack(msg.delivery_tag)
        ch.tx_rollback()
        ch.close()
        ch = conn.channel()
        assert ch.queue_declare(q, passive=True).message_count == 1
    finally:
        conn.close()


def test_channel_flow_from_the_client(broker):
    conn = connect(broker)
    try:
        ch = conn.channel()
        assert ch.flow(True) is True
        # RabbitMQ 3.10 does not let a client stop deliveries with channel.flow: it closes
        # the connection.
        with pytest.raises(ex.AMQPNotImplementedError) as e:
            ch.flow(False)
        assert (e.value.reply_code, e.value.reply_text, e.value.method_name) == (
            540, "NOT_IMPLEMENTED - active=false", "Channel.flow")
    finally:
        try:
            conn.close()
        except Exception:
            pass
