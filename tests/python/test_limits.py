"""Vhost and user limits, channel_max and the consumer timeout as RabbitMQ 3.10 enforces them,
recorded from RabbitMQ 3.10.8 (Debian) with pika.

Limits come from definitions: vhost limits as "vhost-limits" parameters, user limits in the
users' "limits" (FerryMQ: --load-definitions; RabbitMQ: rabbitmqctl import_definitions). The
consumer timeout is the server flag --consumer-timeout MS (RabbitMQ: consumer_timeout, set
for the test with rabbitmqctl eval, with a short channel tick so the check runs often).
"""

import os
import time
import uuid

import pika
import pytest

from conftest import permission_def, refusal, user_def, vhost_limits_def

CH_CLOSED = pika.exceptions.ChannelClosedByBroker
CONN_CLOSED = pika.exceptions.ConnectionClosedByBroker
DENIED = pika.exceptions.ProbableAccessDeniedError
WAIT = 15
PASSWORD = "s3cret"


def n(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def eventually(action, seconds=WAIT):
    """Retries action until it stops raising (RabbitMQ counts connections asynchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def connection_refused(close_frames, exc_info, text):
    """The broker answered connection.open with connection.close 530 NOT_ALLOWED."""
    assert refusal(exc_info.value) == (530, text)
    assert close_frames[-1] == ("connection", 530, text, 10, 40)


@pytest.fixture
def setup(broker_with_definitions):
    """setup(vhost_limits=None, user_limits=None, perms=(".*", ".*", ".*")) -> (broker, user, vhost)
    with a fresh user that has the permissions on a fresh vhost and on '/'."""
    def start(vhost_limits=None, user_limits=None, perms=(".*", ".*", ".*"), extra_args=()):
        u, v = n("lim"), n("lim-vh")
        defs = {
            "users": [user_def(u, PASSWORD, limits=user_limits)],
            "vhosts": [{"name": v}],
            "permissions": [permission_def(u, v, *perms), permission_def(u, "/")],
        }
        if vhost_limits:
            defs["parameters"] = [vhost_limits_def(v, **vhost_limits)]
        return broker_with_definitions(defs, extra_args), u, v
    return start


# ---------------------------------------------------------------------------------------
# vhost max-connections


def test_vhost_max_connections(setup, close_frames):
    broker, u, v = setup(vhost_limits={"max_connections": 1})
    first = broker.connect(u, PASSWORD, v)
    for who, password in [(u, PASSWORD), ("guest", "guest")]:
        with pytest.raises(DENIED) as e:
            broker.connect(who, password, v)
        connection_refused(close_frames, e,
                           f"NOT_ALLOWED - access to vhost '{v}' refused for user '{who}': connection limit (1) is reached")
    # Other vhosts are not affected, and the established connection keeps working.
    broker.connect(u, PASSWORD, "/").close()
    first.channel().queue_declare("", exclusive=True)
    first.close()
    eventually(lambda: broker.connect(u, PASSWORD, v)).close()


def test_vhost_max_connections_zero_refuses_every_connection(setup, close_frames):
    broker, u, v = setup(vhost_limits={"max_connections": 0})
    for who, password in [(u, PASSWORD), ("guest", "guest")]:
        with pytest.raises(DENIED) as e:
            broker.connect(who, password, v)
        connection_refused(close_frames, e,
                           f"NOT_ALLOWED - access to vhost '{v}' refused for user '{who}': connection limit (0) is reached")


def test_negative_vhost_limits_mean_no_limit(setup):
    broker, u, v = setup(vhost_limits={"max_connections": -1, "max_queues": -1})
    conns = [broker.connect(u, PASSWORD, v) for _ in range(3)]
    ch = conns[0].channel()
    for _ in range(3):
        ch.queue_declare("", exclusive=True)
    for c in conns:
        c.close()


# ---------------------------------------------------------------------------------------
# vhost max-queues


def test_vhost_max_queues(setup, close_frames):
    broker, u, v = setup(vhost_limits={"max_queues": 1})
    conn = broker.connect(u, PASSWORD, v)
    ch = conn.channel()
    q1, q2 = n("q"), n("q")
    ch.queue_declare(q1)
    # Redeclaring and passively declaring an existing queue is fine at the limit.
    ch.queue_declare(q1)
    ch.queue_declare(q1, passive=True)
    with pytest.raises(CH_CLOSED) as e:
        ch.queue_declare(q2)
    text = f"PRECONDITION_FAILED - cannot declare queue '{q2}': queue limit in vhost '{v}' (1) is reached"
    assert (e.value.reply_code, e.value.reply_text) == (406, text)
    assert close_frames[-1] == ("channel", 406, text, 50, 10)
    assert conn.is_open
    ch = conn.channel()
    with pytest.raises(CH_CLOSED) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith("PRECONDITION_FAILED - cannot declare queue 'amq.gen-")
    assert e.value.reply_text.endswith(f"': queue limit in vhost '{v}' (1) is reached")
    # A passive declare of a missing queue is still a 404.
    ch = conn.channel()
    with pytest.raises(CH_CLOSED) as e:
        ch.queue_declare(q2, passive=True)
    assert (e.value.reply_code, e.value.reply_text) == (404, f"NOT_FOUND - no queue '{q2}' in vhost '{v}'")
    # Deleting a queue makes room.
    ch = conn.channel()
    ch.queue_delete(q1)
    ch.queue_declare(q2, exclusive=True)
    # Other vhosts are not limited.
    other = broker.connect(u, PASSWORD, "/")
    other.channel().queue_declare("", exclusive=True)
    other.close()
    conn.close()


def test_vhost_max_queues_zero(setup, close_frames):
    broker, u, v = setup(vhost_limits={"max_queues": 0})
    conn = broker.connect(u, PASSWORD, v)
    q = n("q")
    with pytest.raises(CH_CLOSED) as e:
        conn.channel().queue_declare(q)
    text = f"PRECONDITION_FAILED - cannot declare queue '{q}': queue limit in vhost '{v}' (0) is reached"
    assert (e.value.reply_code, e.value.reply_text) == (406, text)
    assert close_frames[-1] == ("channel", 406, text, 50, 10)
    conn.close()


def test_queue_limit_is_checked_after_configure_and_before_the_dead_letter_exchange(setup, close_frames):
    broker, u, v = setup(vhost_limits={"max_queues": 0}, perms=("^q-", "^nothing$", ".*"))
    conn = broker.connect(u, PASSWORD, v)
    other = n("other")
    with pytest.raises(CH_CLOSED) as e:
        conn.channel().queue_declare(other)
    assert (e.value.reply_code, e.value.reply_text) == (
        403, f"ACCESS_REFUSED - access to queue '{other}' in vhost '{v}' refused for user '{u}'")
    q = n("q")
    with pytest.raises(CH_CLOSED) as e:
        conn.channel().queue_declare(q, arguments={"x-dead-letter-exchange": "amq.direct"})
    assert (e.value.reply_code, e.value.reply_text) == (
        406, f"PRECONDITION_FAILED - cannot declare queue '{q}': queue limit in vhost '{v}' (0) is reached")
    conn.close()


# ---------------------------------------------------------------------------------------
# user max-connections


def test_user_max_connections(setup, close_frames):
    broker, u, v = setup(user_limits={"max-connections": 1})
    first = broker.connect(u, PASSWORD, v)
    # The limit counts the user's connections on every vhost.
    for vhost in (v, "/"):
        with pytest.raises(DENIED) as e:
            broker.connect(u, PASSWORD, vhost)
        connection_refused(close_frames, e,
                           f"NOT_ALLOWED - connection refused for user '{u}': user connection limit (1) is reached")
    # Other users are not limited.
    broker.connect("guest", "guest", v).close()
    first.close()
    eventually(lambda: broker.connect(u, PASSWORD, "/")).close()


def test_user_max_connections_zero(setup, close_frames):
    broker, u, v = setup(user_limits={"max-connections": 0})
    with pytest.raises(DENIED) as e:
        broker.connect(u, PASSWORD, v)
    connection_refused(close_frames, e,
                       f"NOT_ALLOWED - connection refused for user '{u}': user connection limit (0) is reached")


def test_connection_open_checks_vhost_limit_then_user_limit_then_access(broker_with_definitions, close_frames):
    u, v, noperm = n("lim"), n("lim-vh"), n("noperm-vh")
    broker = broker_with_definitions({
        "users": [user_def(u, PASSWORD, limits={"max-connections": 0})],
        "vhosts": [{"name": v}, {"name": noperm}],
        "permissions": [permission_def(u, v)],
        "parameters": [vhost_limits_def(v, max_connections=0)],
    })
    with pytest.raises(DENIED) as e:
        broker.connect(u, PASSWORD, v)
    connection_refused(close_frames, e,
                       f"NOT_ALLOWED - access to vhost '{v}' refused for user '{u}': connection limit (0) is reached")
    with pytest.raises(DENIED) as e:
        broker.connect(u, PASSWORD, noperm)
    connection_refused(close_frames, e,
                       f"NOT_ALLOWED - connection refused for user '{u}': user connection limit (0) is reached")
    # A missing vhost is reported before the user limit.
    missing = n("missing")
    with pytest.raises(DENIED) as e:
        broker.connect(u, PASSWORD, missing)
    connection_refused(close_frames, e, f"NOT_ALLOWED - vhost {missing} not found")


# ---------------------------------------------------------------------------------------
# user max-channels and channel_max: connection errors on channel.open


def channel_limit_text(u, limit):
    return f"NOT_ALLOWED - number of channels opened for user '{u}' has reached the maximum allowed user limit of ({limit})"


def test_user_max_channels(setup, close_frames):
    broker, u, v = setup(user_limits={"max-channels": 1})
    conn = broker.connect(u, PASSWORD, v)
    conn.channel()
    with pytest.raises(CONN_CLOSED) as e:
        conn.channel()
    text = channel_limit_text(u, 1)
    assert (e.value.reply_code, e.value.reply_text) == (530, text)
    assert close_frames[-1] == ("connection", 530, text, 0, 0)
    assert not conn.is_open

    # The closed connection's channels no longer count (RabbitMQ forgets them asynchronously).
    def open_channel():
        c = broker.connect(u, PASSWORD, v)
        try:
            c.channel()
        finally:
            if c.is_open:
                c.close()
    eventually(open_channel)


def test_user_max_channels_counts_every_connection(setup, close_frames):
    broker, u, v = setup(user_limits={"max-channels": 2})
    a = broker.connect(u, PASSWORD, v)
    b = broker.connect(u, PASSWORD, "/")
    a.channel()
    b.channel()
    with pytest.raises(CONN_CLOSED) as e:
        a.channel()
    assert (e.value.reply_code, e.value.reply_text) == (530, channel_limit_text(u, 2))
    assert b.is_open
    b.close()


def test_user_max_channels_zero(setup, close_frames):
    broker, u, v = setup(user_limits={"max-channels": 0})
    conn = broker.connect(u, PASSWORD, v)
    with pytest.raises(CONN_CLOSED) as e:
        conn.channel()
    assert (e.value.reply_code, e.value.reply_text) == (530, channel_limit_text(u, 0))
    assert close_frames[-1] == ("connection", 530, channel_limit_text(u, 0), 0, 0)


def test_negative_user_limits_mean_no_limit(setup):
    broker, u, v = setup(user_limits={"max-connections": -1, "max-channels": -1})
    conns = [broker.connect(u, PASSWORD, v) for _ in range(2)]
    for c in conns:
        c.channel()
        c.channel()
        c.close()


def test_channel_max(broker, close_frames):
    conn = broker.connect(channel_max=2)
    conn.channel(channel_number=1)
    conn.channel(channel_number=2)
    with pytest.raises(CONN_CLOSED) as e:
        conn.channel(channel_number=3)
    text = "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
    assert (e.value.reply_code, e.value.reply_text) == (530, text)
    assert close_frames[-1] == ("connection", 530, text, 0, 0)


def test_channel_max_counts_open_channels_not_channel_numbers(broker, close_frames):
    """RabbitMQ compares the number of open channels with channel_max; a channel number above
    channel_max is accepted while fewer channels are open."""
    conn = broker.connect(channel_max=2)
    conn.channel(channel_number=5).queue_declare("", exclusive=True)
    conn.channel(channel_number=7)
    with pytest.raises(CONN_CLOSED) as e:
        conn.channel(channel_number=9)
    assert (e.value.reply_code, e.value.reply_text) == (
        530, "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)")


# ---------------------------------------------------------------------------------------
# Consumer timeout


TIMEOUT_TEXT = ("PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. "
                "Timeout value used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more")


def test_consumer_timeout_closes_the_channel_and_requeues(broker_with_definitions, close_frames):
    broker = broker_with_definitions({}, extra_args=["--consumer-timeout", "1000"])
    conn = broker.connect()
    ch1 = conn.channel()
    q = n("ct")
    ch1.queue_declare(q, exclusive=True)
    ch1.basic_publish("", q, b"m1")
    ch1.basic_publish("", q, b"m2")
    ch = conn.channel()
    assert ch.channel_number == 2
    delivered = []
    ch.basic_consume(q, lambda c, m, p, body: delivered.append((m.redelivered, body)))
    # start_consuming raises when the broker closes the channel; the timer bounds the wait.
    guard = conn.call_later(30, ch.stop_consuming)
    with pytest.raises(CH_CLOSED) as e:
        ch.start_consuming()
    conn.remove_timeout(guard)
    text = TIMEOUT_TEXT.format(channel=2, ms=1000)
    assert (e.value.reply_code, e.value.reply_text) == (406, text)
    assert close_frames[-1] == ("channel", 406, text, 0, 0)
    assert delivered == [(False, b"m1"), (False, b"m2")]
    # Only the channel is closed; its unacknowledged messages are back in the queue.
    assert conn.is_open and ch1.is_open
    got = [ch1.basic_get(q, auto_ack=True) for _ in range(2)]
    assert [(m.redelivered, body) for m, _, body in got] == [(True, b"m1"), (True, b"m2")]
    conn.close()


def test_consumer_timeout_applies_to_basic_get(broker_with_definitions, close_frames):
    broker = broker_with_definitions({}, extra_args=["--consumer-timeout", "1000"])
    conn = broker.connect()
    ch = conn.channel()
    q = n("ct")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m")
    m, _, _ = ch.basic_get(q)
    assert m is not None
    deadline = time.monotonic() + 30
    while ch.is_open and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    assert close_frames, "the unacknowledged basic.get did not time out"
    text = TIMEOUT_TEXT.format(channel=1, ms=1000)
    assert close_frames[-1] == ("channel", 406, text, 0, 0)
    ch = conn.channel()
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert (m.redelivered, body) == (True, b"m")
    ch.queue_delete(q)
    conn.close()


def test_acked_deliveries_do_not_time_out(broker_with_definitions, close_frames):
    broker = broker_with_definitions({}, extra_args=["--consumer-timeout", "1000"])
    conn = broker.connect()
    ch = conn.channel()
    q = n("ct")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"m")
    ch.basic_consume(q, lambda c, m, p, body: c.basic_ack(m.delivery_tag))
    # process_data_events(t) returns as soon as anything arrives: keep serving events for
    # well past the timeout.
    until = time.monotonic() + 2.5
    while time.monotonic() < until and ch.is_open:
        conn.process_data_events(0.1)
    assert ch.is_open and close_frames == []
    conn.close()


def test_x_consumer_timeout_argument(broker_with_definitions, close_frames):
    """RabbitMQ 3.10 has no per-queue consumer timeout: x-consumer-timeout is an unknown
    x-argument there, accepted and not enforced. FerryMQ (like later RabbitMQ versions)
    enforces it. Either way it is not an equivalence argument."""
    enforced = not os.environ.get("AMQP_TEST_PORT")
    broker = broker_with_definitions({}, extra_args=["--consumer-timeout", "60000"])
    conn = broker.connect()
    ch = conn.channel()
    q = n("ct")
    ch.queue_declare(q, exclusive=True, arguments={"x-consumer-timeout": 200})
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"m")
    tags = []
    ch.basic_consume(q, lambda c, m, p, body: tags.append(m.delivery_tag))
    until = time.monotonic() + (30 if enforced else 2.5)
    while time.monotonic() < until and ch.is_open:
        conn.process_data_events(0.1)
    if enforced:
        text = TIMEOUT_TEXT.format(channel=1, ms=200)
        assert close_frames and close_frames[-1] == ("channel", 406, text, 0, 0)
        assert not ch.is_open
    else:
        assert ch.is_open and close_frames == []
        ch.basic_ack(tags[0])
        ch.queue_declare(q, passive=True)
    conn.close()
