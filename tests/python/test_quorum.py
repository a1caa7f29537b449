"""Quorum queues on one node, as a client sees RabbitMQ 3.10's: validated declarations,
delivery counts, the delivery limit, messages kept across restarts whatever their delivery
mode. Every test also passes against RabbitMQ (AMQP_TEST_PORT=5680)."""

import time
import uuid

import pika
import pytest

CLOSED = (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)
QUORUM = {"x-queue-type": "quorum"}


def n(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refusal(broker, **declare):
    conn = broker.connect()
    ch = conn.channel()
    with pytest.raises(CLOSED) as e:
        ch.queue_declare(**declare)
    if conn.is_open:
        conn.close()
    return e.value.args


def get_waiting(ch, queue, auto_ack=False):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m, p, b = ch.basic_get(queue, auto_ack=auto_ack)
        if m:
            return m, p, b
        time.sleep(0.05)
    raise AssertionError(f"nothing arrived in {queue}")


def test_declarations_are_checked_against_the_queue_type(broker):
    q = n("qq")
    assert refusal(broker, queue=q, durable=False, arguments=QUORUM) == (
        406, f"PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}' in vhost '/'")
    assert refusal(broker, queue=q, durable=True, exclusive=True, arguments=QUORUM) == (
        406, f"PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue '{q}' in vhost '/'")
    assert refusal(broker, queue=q, durable=True, auto_delete=True, arguments=QUORUM) == (
        406, f"PRECONDITION_FAILED - invalid property 'auto-delete' for queue '{q}' in vhost '/'")
    assert refusal(broker, queue=q, durable=True, arguments={**QUORUM, "x-max-priority": 5}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/' "
             "of queue type rabbit_quorum_queue")
    assert refusal(broker, queue="", durable=True, arguments=QUORUM) == (
        406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue")
    assert refusal(broker, queue=q, durable=True, arguments={"x-queue-type": "quorom"}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': "
             "\"unsupported queue type 'quorom'\"")
    assert refusal(broker, queue=q, durable=True, arguments={"x-delivery-limit": 3}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '{q}' in vhost '/' "
             "of queue type rabbit_classic_queue")
    assert refusal(broker, queue=q, arguments={"x-queue-mode": "fast"}) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue '{q}' in vhost '/': "
             "\"unsupported queue mode 'fast'\"")


def test_the_type_is_part_of_a_queues_identity(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, c = n("qq"), n("classic")
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    ch.queue_declare(c, durable=True, arguments={"x-queue-type": "classic"})
    ch.queue_declare(c, durable=True)  # classic is the default: the same queue
    ch.queue_declare(q, passive=True)
    with pytest.raises(CLOSED) as e:
        ch.queue_declare(q, durable=True)
    assert e.value.args == (406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
                                 f"'{q}' in vhost '/': received none but current is the value "
                                 "'quorum' of type 'longstr'")
    ch = conn.channel()
    with pytest.raises(CLOSED) as e:
        ch.queue_declare(c, durable=True, arguments=QUORUM)
    assert e.value.args[0] == 406
    ch = conn.channel()
    ch.queue_delete(q)
    ch.queue_delete(c)
    conn.close()


def test_deliveries_are_counted_and_the_limit_dead_letters(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, dlq = n("qq"), n("poison")
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(q, durable=True, arguments={
        **QUORUM, "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"bad", pika.BasicProperties(headers={"job": 7}))
    counts = []
    for _ in range(3):
        m, p, _ = get_waiting(ch, q)
        counts.append((m.redelivered, p.headers["x-delivery-count"]))
        ch.basic_nack(m.delivery_tag, requeue=True)
    assert counts == [(False, 0), (True, 1), (True, 2)]
    m, p, body = get_waiting(ch, dlq, auto_ack=True)
    assert body == b"bad"
    assert p.headers["job"] == 7
    assert "x-delivery-count" not in p.headers
    assert p.headers["x-first-death-reason"] == "delivery_limit"
    death = p.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", q, 1)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)
    ch.queue_delete(dlq)
    conn.close()


def test_consumers_see_the_count_from_the_first_redelivery(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = n("qq")
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    ch.basic_publish("", q, b"again")
    seen = []

    def on_message(c, m, p, body):
        seen.append((m.redelivered, (p.headers or {}).get("x-delivery-count")))
        if len(seen) < 3:
            c.basic_nack(m.delivery_tag, requeue=True)
        else:
            c.basic_ack(m.delivery_tag)
            c.stop_consuming()

    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, on_message)
    ch.start_consuming()
    assert seen == [(False, None), (True, 1), (True, 2)]
    ch.queue_delete(q)
    conn.close()


def test_global_prefetch_is_refused_for_quorum_consumers(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = n("qq")
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    ch.basic_qos(prefetch_count=5, global_qos=True)
    ch.basic_get(q)  # basic.get is fine
    with pytest.raises(CLOSED) as e:
        ch.basic_consume(q, lambda *a: None)
    assert e.value.args == (540, f"NOT_IMPLEMENTED - queue '{q}' in vhost '/' does not support global qos")
    conn = broker.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    ch.basic_consume(q, lambda *a: None)  # per-consumer prefetch is fine
    ch.queue_delete(q)
    conn.close()


def test_transient_messages_survive_a_restart(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = n("jobs")
    ch.queue_declare(q, durable=True, arguments=QUORUM)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"transient", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", q, b"persistent", pika.BasicProperties(delivery_mode=2))
    broker.restart()
    conn = broker.connect()
    ch = conn.channel()
    bodies = [get_waiting(ch, q, auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"transient", b"persistent"]
    ch.queue_delete(q)
    conn.close()
