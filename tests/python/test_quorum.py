"""Quorum queues on one node, as a client sees RabbitMQ 3.10's: validated declarations,
delivery counts, the delivery limit, messages kept across restarts whatever their delivery
mode, at-least-once dead-lettering. Every test also passes against RabbitMQ
(AMQP_TEST_PORT=5680).

At-least-once dead letters that find no way are retried by RabbitMQ's dead-letter worker every
`dead_letter_worker_publisher_confirm_timeout` ms (180000 by default); the reference broker
runs with it at 1000 (an advanced.config of
`[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 1000}]}].`, see docs/clients.md)
so these tests, which poll with a deadline, finish in seconds. FerryMQ retries every 2 s and
at once when an exchange, queue or binding is added."""

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


def get_waiting(ch, queue, auto_ack=False, timeout=10):
    deadline = time.monotonic() + timeout
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


def at_least_once(dlx, **extra):
    return {**QUORUM, "x-dead-letter-exchange": dlx, "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish", **extra}


def reject_all(ch, q, count):
    for _ in range(count):
        m, _, _ = get_waiting(ch, q)
        ch.basic_reject(m.delivery_tag, requeue=False)


def publish(ch, q, body):
    """Publishes in confirm mode; True if the broker confirmed it, False if it nacked."""
    try:
        ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2))
        return True
    except pika.exceptions.NackError:
        return False


def route_to_new_queue(ch, dlx):
    target = n("dead")
    ch.exchange_declare(dlx, "fanout", durable=True)
    ch.queue_declare(target, durable=True)
    ch.queue_bind(target, dlx)
    return target


def test_at_least_once_keeps_a_dead_letter_until_a_route_exists(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, dlx = n("work"), n("dlx")
    ch.queue_declare(q, durable=True, arguments=at_least_once(dlx))
    ch.confirm_delivery()
    assert publish(ch, q, b"precious")
    reject_all(ch, q, 1)
    # The exchange does not exist: at most once would drop it, at least once keeps it,
    # outside the ready count.
    time.sleep(0.5)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    target = route_to_new_queue(ch, dlx)
    m, p, body = get_waiting(ch, target, auto_ack=True)
    assert body == b"precious"
    death = p.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"], death["exchange"]) == (q, "rejected", 1, "")
    assert death["routing-keys"] == [q]
    assert p.headers["x-first-death-queue"] == q
    assert p.headers["x-first-death-reason"] == "rejected"
    assert p.headers["x-first-death-exchange"] == ""
    assert "x-delivery-count" not in p.headers
    # Delivered once to the target and gone from the source.
    time.sleep(0.5)
    assert ch.basic_get(target)[0] is None
    assert ch.basic_get(q)[0] is None
    for x in (q, target):
        ch.queue_delete(x)
    ch.exchange_delete(dlx)
    conn.close()


def test_held_dead_letters_count_toward_the_length_limit(broker):
    # RabbitMQ 3.10 refuses a publish to a quorum queue once ready + held messages are over
    # x-max-length (so with 2 held and a limit of 2 one more is taken, then none).
    conn = broker.connect()
    ch = conn.channel()
    q, dlx = n("work"), n("dlx")
    ch.queue_declare(q, durable=True, arguments=at_least_once(dlx, **{"x-max-length": 2}))
    ch.confirm_delivery()
    assert publish(ch, q, b"a") and publish(ch, q, b"b")
    reject_all(ch, q, 2)
    time.sleep(0.5)
    assert publish(ch, q, b"c")
    assert not publish(ch, q, b"d"), "the held dead letters must count toward x-max-length"
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    # Once the dead letters are taken, there is room again.
    target = route_to_new_queue(ch, dlx)
    got = sorted(get_waiting(ch, target, auto_ack=True)[2] for _ in range(2))
    assert got == [b"a", b"b"]
    deadline = time.monotonic() + 10
    while not publish(ch, q, b"e"):
        assert time.monotonic() < deadline, "still refused after the dead letters left"
        time.sleep(0.2)
    for x in (q, target):
        ch.queue_delete(x)
    ch.exchange_delete(dlx)
    conn.close()


def test_held_dead_letters_survive_a_restart_and_go_to_the_target(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, dlx = n("work"), n("dlx")
    ch.queue_declare(q, durable=True, arguments=at_least_once(dlx, **{"x-message-ttl": 100}))
    ch.confirm_delivery()
    assert publish(ch, q, b"first")
    assert publish(ch, q, b"second")
    time.sleep(0.5)  # both expire (and are held: no route)
    broker.restart()
    conn = broker.connect()
    ch = conn.channel()
    # Not back in the source for its consumers.
    time.sleep(0.5)
    assert ch.basic_get(q)[0] is None
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    target = route_to_new_queue(ch, dlx)
    got = {}
    for _ in range(2):
        _, p, body = get_waiting(ch, target, auto_ack=True)
        got[body] = p.headers["x-death"][0]
    assert set(got) == {b"first", b"second"}
    assert all((d["queue"], d["reason"], d["count"]) == (q, "expired", 1) for d in got.values())
    time.sleep(0.5)
    assert ch.basic_get(target)[0] is None
    assert ch.basic_get(q)[0] is None
    for x in (q, target):
        ch.queue_delete(x)
    ch.exchange_delete(dlx)
    conn.close()


def test_a_rejected_letter_held_across_a_restart_keeps_its_reason(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, dlx = n("work"), n("dlx")
    ch.queue_declare(q, durable=True, arguments=at_least_once(dlx))
    ch.confirm_delivery()
    assert publish(ch, q, b"x")
    reject_all(ch, q, 1)
    time.sleep(0.3)
    broker.restart()
    conn = broker.connect()
    ch = conn.channel()
    time.sleep(0.3)
    assert ch.basic_get(q)[0] is None
    target = route_to_new_queue(ch, dlx)
    _, p, body = get_waiting(ch, target, auto_ack=True)
    assert (body, p.headers["x-death"][0]["reason"], p.headers["x-first-death-reason"]) == (
        b"x", "rejected", "rejected")
    for x in (q, target):
        ch.queue_delete(x)
    ch.exchange_delete(dlx)
    conn.close()


def test_a_full_target_gets_the_dead_letter_once_it_has_room(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, dlx, target = n("work"), n("dlx"), n("dead")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(target, durable=True,
                     arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.queue_bind(target, dlx)
    ch.queue_declare(q, durable=True, arguments=at_least_once(dlx))
    ch.confirm_delivery()
    assert publish(ch, target, b"filler")
    assert publish(ch, q, b"late")
    reject_all(ch, q, 1)
    time.sleep(1.5)  # refused by the full target, at least once
    assert ch.queue_declare(target, passive=True).method.message_count == 1
    assert get_waiting(ch, target, auto_ack=True)[2] == b"filler"
    m, p, body = get_waiting(ch, target, auto_ack=True)
    assert body == b"late" and p.headers["x-death"][0]["reason"] == "rejected"
    assert ch.basic_get(q)[0] is None
    for x in (q, target):
        ch.queue_delete(x)
    ch.exchange_delete(dlx)
    conn.close()


def test_a_purge_keeps_held_dead_letters_and_a_delete_drops_them(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, dlx = n("work"), n("dlx")
    ch.queue_declare(q, durable=True, arguments=at_least_once(dlx))
    ch.confirm_delivery()
    assert publish(ch, q, b"held") and publish(ch, q, b"ready")
    m, _, body = get_waiting(ch, q)
    assert body == b"held"
    ch.basic_reject(m.delivery_tag, requeue=False)
    time.sleep(0.5)
    assert ch.queue_purge(q).method.message_count == 1
    target = route_to_new_queue(ch, dlx)
    assert get_waiting(ch, target, auto_ack=True)[2] == b"held"
    q2, dlx2 = n("work"), n("dlx")
    ch.queue_declare(q2, durable=True, arguments=at_least_once(dlx2))
    assert publish(ch, q2, b"gone")
    reject_all(ch, q2, 1)
    time.sleep(0.5)
    ch.queue_delete(q2)
    target2 = route_to_new_queue(ch, dlx2)
    time.sleep(3)  # past a retry of either broker: nothing comes
    assert ch.basic_get(target2)[0] is None
    for x in (q, target, target2):
        ch.queue_delete(x)
    for x in (dlx, dlx2):
        ch.exchange_delete(x)
    conn.close()


def test_at_most_once_still_drops_an_unroutable_dead_letter(broker):
    conn = broker.connect()
    ch = conn.channel()
    q, dlx = n("work"), n("dlx")
    ch.queue_declare(q, durable=True, arguments={
        **QUORUM, "x-dead-letter-exchange": dlx, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    assert publish(ch, q, b"lost")
    reject_all(ch, q, 1)
    time.sleep(0.5)
    target = route_to_new_queue(ch, dlx)
    time.sleep(3)  # past a retry of either broker: nothing comes
    assert ch.basic_get(target)[0] is None
    assert ch.basic_get(q)[0] is None
    for x in (q, target):
        ch.queue_delete(x)
    ch.exchange_delete(dlx)
    conn.close()


def test_a_kill_while_dead_letters_are_forwarded_loses_none(broker):
    if broker.external:
        pytest.skip("kills the broker process with SIGKILL (FerryMQ only)")
    conn = broker.connect()
    ch = conn.channel()
    q, dlx = n("work"), n("dlx")
    target = route_to_new_queue(ch, dlx)
    ch.queue_declare(q, durable=True, arguments=at_least_once(dlx))
    ch.confirm_delivery()
    bodies = {f"m{i}".encode() for i in range(400)}
    for b in sorted(bodies):
        assert publish(ch, q, b)
    ch.basic_qos(prefetch_count=400)
    tags = []
    ch.basic_consume(q, lambda c, m, p, b: tags.append(m.delivery_tag))
    deadline = time.monotonic() + 10
    while len(tags) < 400:
        assert time.monotonic() < deadline
        conn.process_data_events(0.05)
    # One nack dead-letters all 400; the broker is killed while it forwards them.
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    conn.process_data_events(0)
    broker.proc.kill()
    broker.proc.wait()
    tmp_path, extra_args, data_dir, bind = broker._restart_args
    broker.__init__(tmp_path, extra_args, data_dir, amqp_port=broker.port, bind=bind)
    conn = broker.connect()
    ch = conn.channel()
    seen = set()
    deadline = time.monotonic() + 30
    # Each message is in the target, or back in the source (not yet dead-lettered when the
    # kill came), or held there and forwarded after the restart: none is lost.
    while seen != bodies:
        assert time.monotonic() < deadline, f"lost: {sorted(bodies - seen)[:10]}"
        got = False
        for queue in (target, q):
            m, _, b = ch.basic_get(queue, auto_ack=True)
            if m:
                seen.add(b)
                got = True
        if not got:
            time.sleep(0.05)
    conn.close()
