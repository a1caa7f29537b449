"""Behaviour other client libraries rely on, where FerryMQ once differed from RabbitMQ 3.10.
Written so that every test also passes against RabbitMQ (AMQP_TEST_PORT=5680)."""

import uuid

import pika
import pytest

CLOSED = (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)


def n(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_unbinding_what_is_not_there_is_unbind_ok(broker):
    # Idempotent teardown (aio-pika's RPC pattern unbinds after its auto-delete queue went).
    conn = broker.connect()
    ch = conn.channel()
    q = n("ub")
    ch.queue_declare(q, auto_delete=True)
    ch.queue_unbind(n("no-such-q"), "amq.direct", "k")
    ch.queue_unbind(q, n("no-such-x"), "k")
    ch.queue_unbind(q, "amq.direct", "never-bound")
    ch.exchange_unbind(n("no-such-d"), n("no-such-s"), "k")
    ch.exchange_unbind("amq.fanout", "amq.direct", "never-bound")
    # The channel is still open and the queue still usable.
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    conn.close()


def test_unbinding_another_connections_exclusive_queue(broker):
    owner, other = broker.connect(), broker.connect()
    och = owner.channel()
    q = n("excl")
    och.queue_declare(q, exclusive=True)
    och.queue_bind(q, "amq.direct", "bound")
    ch = other.channel()
    # No such binding: nothing to do, whoever owns the queue.
    ch.queue_unbind(q, "amq.direct", "not-bound")
    with pytest.raises(CLOSED) as e:
        ch.queue_unbind(q, "amq.direct", "bound")
    assert e.value.reply_code == 405
    assert e.value.reply_text.startswith(f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}'")
    other.close()
    owner.close()


def test_an_exchange_that_is_only_a_destination_is_unused(broker):
    conn = broker.connect()
    ch = conn.channel()
    src, dst = n("src"), n("dst")
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    ch.exchange_delete(dst, if_unused=True)
    with pytest.raises(CLOSED) as e:
        ch.exchange_declare(dst, passive=True)
    assert e.value.reply_code == 404
    ch = conn.channel()
    ch.exchange_delete(src)
    conn.close()


def test_redeclaring_an_exclusive_queue_without_exclusive_is_locked(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = n("excl")
    ch.queue_declare(q, exclusive=True)
    with pytest.raises(CLOSED) as e:
        ch.queue_declare(q)
    assert (e.value.reply_code, e.value.reply_text) == (
        405,
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. "
        "It could be originally declared on another connection or the exclusive property value "
        "does not match that of the original declaration.",
    )
    conn.close()


def test_a_mandatory_publish_refused_by_a_full_queue_is_nacked_not_returned(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = n("full")
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish("", q, b"1", mandatory=True)
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"2", mandatory=True)
    conn.process_data_events(0.3)
    assert returned == []
    # Unroutable is still returned.
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("", n("nowhere"), b"3", mandatory=True)
    conn.close()


def test_capabilities_advertise_consumer_priorities(broker):
    conn = broker.connect()
    caps = conn._impl.server_capabilities
    assert caps["consumer_priorities"] is True
    assert caps["per_consumer_qos"] is True
    conn.close()
