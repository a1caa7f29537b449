"""Queue features through pika, written so that they also pass against RabbitMQ 3.10
(AMQP_TEST_PORT=5680): dead-lettering and its x-death header, TTL, length limits,
priorities, single active consumer failover when the active consumer's process is killed,
and 406 texts for bad arguments."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

WAIT = 15


def name(prefix):
    # Unique names, so the suite can run repeatedly against one external broker.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def get_within(ch, queue, seconds=WAIT):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method:
            return method, props, body
        time.sleep(0.02)
    raise AssertionError(f"nothing arrived in {queue}")


def ready(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def test_x_death_header_matches_rabbitmq(broker):
    conn = broker.connect()
    ch = conn.channel()
    work, parked = name("work"), name("parked")
    ch.queue_declare(parked, auto_delete=True)
    ch.queue_declare(work, auto_delete=True, arguments={
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": parked,
    })
    ch.basic_publish("", work, b"job", pika.BasicProperties(expiration="60000", headers={"app": "x"}))
    method, props, body = ch.basic_get(work)
    ch.basic_reject(method.delivery_tag, requeue=False)
    m, props, body = get_within(ch, parked)
    assert body == b"job"
    assert m.exchange == "" and m.routing_key == parked
    assert props.expiration is None
    h = props.headers
    assert h["app"] == "x"
    (death,) = h["x-death"]
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == work
    assert death["exchange"] == ""
    assert death["routing-keys"] == [work]
    assert death["original-expiration"] == "60000"
    assert death["time"].year >= 2024
    assert h["x-first-death-reason"] == "rejected"
    assert h["x-first-death-queue"] == work
    assert h["x-first-death-exchange"] == ""
    conn.close()


def test_expired_messages_dead_letter_and_a_cycle_without_rejection_stops(broker):
    conn = broker.connect()
    ch = conn.channel()
    a, b = name("a"), name("b")
    # a expires into b, b expires back into a: RabbitMQ drops the message on its way back.
    ch.queue_declare(a, auto_delete=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    ch.queue_declare(b, auto_delete=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    ch.confirm_delivery()
    ch.basic_publish("", a, b"loop")
    # It goes a -> b -> (dropped): both queues stay empty once it has expired from b.
    deadline = time.monotonic() + WAIT
    quiet = 0
    while quiet < 5:
        assert time.monotonic() < deadline, "the message kept circulating"
        quiet = quiet + 1 if ready(ch, a) == 0 and ready(ch, b) == 0 else 0
        time.sleep(0.05)
    conn.close()


def test_max_length_drop_head_and_priority(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = name("bounded")
    ch.queue_declare(q, auto_delete=True, arguments={"x-max-length": 2})
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    assert ready(ch, q) == 2
    assert ch.basic_get(q, auto_ack=True)[2] == b"3"
    p = name("prio")
    ch.queue_declare(p, auto_delete=True, arguments={"x-max-priority": 9})
    for i in range(20):
        ch.basic_publish("", p, b"low", pika.BasicProperties(priority=0))
    ch.basic_publish("", p, b"high", pika.BasicProperties(priority=9))
    assert ch.basic_get(p, auto_ack=True)[2] == b"high"
    conn.close()


@pytest.mark.parametrize("arg,value,reason", [
    ("x-message-ttl", -1, "{value_negative,-1}"),
    ("x-message-ttl", 315360000001, "{value_too_large,315360000001}"),  # past ten years
    ("x-max-length", "ten", "expected integer, got longstr"),
    ("x-max-priority", 256, "{max_value_exceeded,256}"),
    ("x-expires", 0, "{value_zero,0}"),
    ("x-overflow", "explode", "invalid_overflow"),
    ("x-dead-letter-routing-key", "k", "routing_key_but_no_dlx_defined"),
    ("x-single-active-consumer", "yes", "{unacceptable_type,longstr}"),
])
def test_bad_arguments_are_406_with_rabbitmqs_text(broker, arg, value, reason):
    conn = broker.connect()
    ch = conn.channel()
    q = name("bad")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(q, arguments={arg: value})
    assert e.value.reply_code == 406
    assert f"invalid arg '{arg}' for queue '{q}'" in e.value.reply_text
    assert reason in e.value.reply_text
    conn.close()


CONSUMER = textwrap.dedent("""
    import sys, pika
    port, queue = int(sys.argv[1]), sys.argv[2]
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    def on(ch, m, p, body):
        print(body.decode(), flush=True)   # never acks: the message stays with it
    ch.basic_consume(queue, on)
    print("ready", flush=True)
    ch.start_consuming()
""")


def test_single_active_consumer_fails_over_when_the_active_process_is_killed(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = name("sac")
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    active = subprocess.Popen([sys.executable, "-c", CONSUMER, str(broker.port), q],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert active.stdout.readline().strip() == "ready"
        got = []
        ch.basic_consume(q, lambda c, m, p, body: got.append((body, m.redelivered)))
        ch.basic_publish("", q, b"first")
        assert active.stdout.readline().strip() == "first"
        ch.basic_publish("", q, b"second")
        conn.process_data_events(time_limit=0.3)
        assert got == [], "the standby consumer received while the active one was alive"
        os.kill(active.pid, signal.SIGKILL)
        active.wait()
        deadline = time.monotonic() + WAIT
        while len(got) < 2 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert got == [(b"first", True), (b"second", False)]
    finally:
        if active.poll() is None:
            active.kill()
        ch.queue_delete(q)
        conn.close()
