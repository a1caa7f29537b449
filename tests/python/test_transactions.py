"""Transactions through pika, written so that they also pass against RabbitMQ 3.10
(AMQP_TEST_PORT=5680): a transactional publish is routed when it arrives and enqueued at
commit, so bindings changed before the commit do not move it."""

import time
import uuid

import pika


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def depth(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def wait_until_not_empty(ch, queue, seconds=10):
    # A commit's messages are enqueued by the time commit-ok arrives on FerryMQ; RabbitMQ
    # may take a moment longer.
    deadline = time.monotonic() + seconds
    while depth(ch, queue) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_transactional_publish_goes_where_the_bindings_sent_it_on_arrival(broker):
    conn = broker.connect()
    admin = conn.channel()
    x, old, new = name("tx-x"), name("tx-old"), name("tx-new")
    admin.exchange_declare(x, "direct")
    for q in (old, new):
        admin.queue_declare(q, auto_delete=True)
    admin.queue_bind(old, x, "k")
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish(x, "k", b"routed-on-arrival")
    # Before the commit the binding moves from `old` to `new`.
    admin.queue_unbind(old, x, "k")
    admin.queue_bind(new, x, "k")
    assert depth(admin, old) == 0, "nothing is enqueued before the commit"
    tx.tx_commit()
    wait_until_not_empty(admin, old)
    assert depth(admin, old) == 1
    assert depth(admin, new) == 0
    method, _, body = admin.basic_get(old, auto_ack=True)
    assert body == b"routed-on-arrival"
    admin.exchange_delete(x)
    conn.close()


def test_rollback_drops_publishes_and_a_later_commit_delivers_only_what_followed(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = name("tx-q")
    ch.queue_declare(q, auto_delete=True)
    ch.tx_select()
    ch.basic_publish("", q, b"dropped")
    ch.tx_rollback()
    ch.basic_publish("", q, b"kept")
    ch.tx_commit()
    wait_until_not_empty(ch, q)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"kept"
    assert depth(ch, q) == 0
    conn.close()


def test_a_queue_deleted_and_redeclared_before_the_commit_gets_the_publish(broker):
    # RabbitMQ routes a transactional publish to queue names on arrival and looks the
    # queues up at commit, so a queue deleted and declared again in between gets it.
    conn = broker.connect()
    admin = conn.channel()
    q = name("tx-redeclared")
    admin.queue_declare(q)
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"committed")
    admin.queue_delete(q)
    admin.queue_declare(q)
    tx.tx_commit()
    wait_until_not_empty(admin, q)
    method, _, body = admin.basic_get(q, auto_ack=True)
    assert body == b"committed"
    admin.queue_delete(q)
    conn.close()
