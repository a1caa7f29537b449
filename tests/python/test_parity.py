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


def test_the_default_listener_takes_ipv6_and_ipv4_clients(tmp_path):
    import os
    import socket

    from conftest import Broker, ExternalBroker
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    external = os.environ.get("AMQP_TEST_PORT")
    # A FerryMQ started with its default listen address, as a user would.
    b = ExternalBroker(int(external)) if external else Broker(tmp_path, bind=None)
    try:
        for host in ("::1", "127.0.0.1"):
            conn = pika.BlockingConnection(pika.ConnectionParameters(
                host=host, port=b.port, credentials=pika.PlainCredentials("guest", "guest")))
            ch = conn.channel()
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", q, host.encode())
            assert ch.basic_get(q, auto_ack=True)[2] == host.encode()
            conn.close()
    finally:
        b.stop()


def _in_flight(broker, qos_before, consumers=3, qos_between=None):
    """Deliveries held unacked by `consumers` consumers on one channel after the qos calls."""
    import time
    conn = broker.connect()
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for _ in range(30):
        ch.basic_publish("", q, b"m")
    for count, is_global in qos_before:
        ch.basic_qos(prefetch_count=count, global_qos=is_global)
    got = {}
    for k in range(consumers):
        for count, is_global in (qos_between or {}).get(k, []):
            ch.basic_qos(prefetch_count=count, global_qos=is_global)
        ch.basic_consume(q, lambda c, m, p, b, k=k: got.__setitem__(k, got.get(k, 0) + 1))
    # Deliveries stop at the limits; wait until nothing more has come for a while.
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 0.5:
        conn.process_data_events(0.05)
        if sum(got.values()) != last:
            last, quiet_since = sum(got.values()), time.monotonic()
    conn.close()
    return sorted(got.values(), reverse=True)


def test_a_per_consumer_prefetch_lifts_the_channel_prefetch(broker):
    # RabbitMQ 3.10: basic.qos(global=false) sets the prefetch of later consumers and lifts
    # the channel-wide limit; basic.qos(global=true) limits all of them together.
    assert _in_flight(broker, [(4, True), (2, False)]) == [2, 2, 2]
    assert _in_flight(broker, [(2, False), (4, True)]) == [2, 2]
    assert _in_flight(broker, [(4, True)]) == [4]
    assert _in_flight(broker, [(2, False)], qos_between={1: [(4, True)]}) == [2, 2]


def _drain(ch, queue):
    import time
    out, deadline = [], time.monotonic() + 0.5
    while time.monotonic() < deadline:
        m, p, body = ch.basic_get(queue, auto_ack=True)
        if m:
            out.append((body, p.headers))
            deadline = time.monotonic() + 0.3
        else:
            time.sleep(0.05)
    return out


def test_sender_selected_distribution_routes_cc_and_bcc_and_hides_bcc(broker):
    conn = broker.connect()
    ch = conn.channel()
    x = n("cc")
    ch.exchange_declare(x, "direct", auto_delete=True)
    qs = {k: n(k) for k in ("a", "b", "c", "d")}
    for k, q in qs.items():
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, x, k)
    ch.confirm_delivery()
    ch.basic_publish(x, "a", b"1", pika.BasicProperties(headers={"CC": ["b", "a"], "BCC": ["c"], "x": 1}))
    for k in ("a", "b", "c"):
        assert _drain(ch, qs[k]) == [(b"1", {"CC": ["b", "a"], "x": 1})], k
    assert _drain(ch, qs["d"]) == []
    # A CC or BCC key is enough for a mandatory publish to count as routed.
    ch.basic_publish(x, "nowhere", b"2", pika.BasicProperties(headers={"CC": ["d"]}), mandatory=True)
    ch.basic_publish(x, "nowhere", b"3", pika.BasicProperties(headers={"BCC": ["d"]}), mandatory=True)
    assert _drain(ch, qs["d"]) == [(b"2", {"CC": ["d"]}), (b"3", {})]
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(x, "nowhere", b"4", pika.BasicProperties(headers={"CC": []}), mandatory=True)
    conn.close()


def test_a_cc_header_that_is_not_an_array_is_refused(broker):
    for name, value, kind in (("CC", "b", "longstr"), ("BCC", 5, "signedint")):
        conn = broker.connect()
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(CLOSED) as e:
            ch.basic_publish("", "anything", b"x", pika.BasicProperties(headers={name: value}))
        assert e.value.args == (
            406, f'PRECONDITION_FAILED - invalid message: {{unacceptable_type_in_header,"{name}",{kind}}}')
        if conn.is_open:
            conn.close()


def test_dead_lettering_keeps_the_cc_keys_unless_a_dead_letter_key_replaces_them(broker):
    conn = broker.connect()
    ch = conn.channel()
    x = n("ccdlx")
    ch.exchange_declare(x, "direct", auto_delete=True)
    src, keyed, b = n("src"), n("keyed"), n("b")
    ch.queue_declare(src, exclusive=True, arguments={"x-dead-letter-exchange": x})
    ch.queue_declare(keyed, exclusive=True, arguments={
        "x-dead-letter-exchange": x, "x-dead-letter-routing-key": "b"})
    ch.queue_declare(b, exclusive=True)
    ch.queue_bind(b, x, "b")
    ch.confirm_delivery()
    ch.basic_publish("", src, b"plain", pika.BasicProperties(headers={"CC": ["b"]}))
    ch.basic_publish("", keyed, b"keyed", pika.BasicProperties(headers={"CC": ["nowhere"]}))
    for q in (src, keyed):
        m, _, _ = ch.basic_get(q)
        ch.basic_reject(m.delivery_tag, requeue=False)
    got = {body: h for body, h in _drain(ch, b)}
    assert set(got) == {b"plain", b"keyed"}
    assert got[b"plain"]["CC"] == ["b"]
    assert got[b"plain"]["x-death"][0]["routing-keys"] == [src, "b"]
    assert "CC" not in got[b"keyed"]
    assert got[b"keyed"]["x-death"][0]["routing-keys"] == [keyed, "nowhere"]
    conn.close()


def _refused(broker, action):
    conn = broker.connect()
    ch = conn.channel()
    with pytest.raises(CLOSED) as e:
        action(ch, conn)
    if conn.is_open:
        conn.close()
    return e.value.args


def test_invalid_arguments_and_properties_are_refused_as_rabbitmq_refuses_them(broker):
    def bind(x_match):
        return lambda ch, _: ch.queue_bind(ch.queue_declare("", exclusive=True).method.queue,
                                           "amq.headers", "", arguments={"x-match": x_match})
    assert _refused(broker, bind("some")) == (
        406, 'PRECONDITION_FAILED - Invalid x-match field value <<"some">>; expected all, any, '
             'all-with-x, or any-with-x')
    assert _refused(broker, bind(1)) == (
        406, "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr")
    x = n("ae")
    assert _refused(broker, lambda ch, _: ch.exchange_declare(x, "direct", arguments={"alternate-exchange": 5})) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange '{x}' in vhost '/'")

    def publish(mode):
        def act(ch, _):
            ch.confirm_delivery()
            ch.basic_publish("", "nowhere", b"x", pika.BasicProperties(delivery_mode=mode))
        return act
    for mode in (0, 3):
        assert _refused(broker, publish(mode)) == (
            406, f"PRECONDITION_FAILED - invalid message: {{delivery_mode_unknown,{mode}}}")
    assert _refused(broker, lambda ch, conn: (ch.flow(False), conn.process_data_events(1))) == (
        540, "NOT_IMPLEMENTED - active=false")
    # Names must be UTF-8 (pika passes bytes through as they are).
    assert _refused(broker, lambda ch, _: ch.queue_bind(
        ch.queue_declare("", exclusive=True).method.queue, "amq.direct", b"k\xff")) == (
        501, "FRAME_ERROR - Malformed UTF-8 in shortstr")
    # The exchange is reported missing before the queue.
    assert _refused(broker, lambda ch, _: ch.queue_bind(n("noq"), "no-such-x", "k")) == (
        404, "NOT_FOUND - no exchange 'no-such-x' in vhost '/'")
    assert _refused(broker, lambda ch, _: ch.exchange_bind(n("nodest"), "no-such-src", "k")) == (
        404, "NOT_FOUND - no exchange 'no-such-src' in vhost '/'")


def test_the_trace_exchange_exists_and_is_internal(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare("amq.rabbitmq.trace", passive=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.rabbitmq.trace", "#")
    conn.close()

    def publish(ch, _):
        ch.confirm_delivery()
        ch.basic_publish("amq.rabbitmq.trace", "publish.x", b"")
    assert _refused(broker, publish) == (
        403, "ACCESS_REFUSED - cannot publish to internal exchange 'amq.rabbitmq.trace' in vhost '/'")


def test_an_rpc_server_can_check_its_caller_is_still_there(broker):
    import time
    caller = broker.connect()
    cch = caller.channel()
    server = broker.connect()
    sch = server.channel()
    assert sch.queue_declare("amq.rabbitmq.reply-to", passive=True).method.consumer_count == 1
    requests = sch.queue_declare("", exclusive=True).method.queue
    cch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=True)
    cch.basic_publish("", requests, b"req", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    deadline = time.monotonic() + 10
    while True:
        m, p, _ = sch.basic_get(requests, auto_ack=True)
        if m:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert p.reply_to.startswith("amq.rabbitmq.reply-to.")
    ok = sch.queue_declare(p.reply_to, passive=True).method
    assert (ok.queue, ok.consumer_count, ok.message_count) == (p.reply_to, 1, 0)
    caller.close()
    with pytest.raises(CLOSED) as e:
        for _ in range(100):  # the caller's consumer goes with its connection
            sch.queue_declare(p.reply_to, passive=True)
            time.sleep(0.05)
    assert e.value.args == (404, f"NOT_FOUND - no queue '{p.reply_to}' in vhost '/'")
    server.close()


def test_a_passive_declare_keeps_an_expiring_queue_alive(broker):
    import time
    conn = broker.connect()
    ch = conn.channel()
    q = n("expiring")
    ch.queue_declare(q, arguments={"x-expires": 1500})
    # Passive declares every 0.3 s for 3 s: twice its expiry, it is still there.
    for _ in range(10):
        time.sleep(0.3)
        ch.queue_declare(q, passive=True)
    # Left alone it expires (binding to it does not count as use, so it can be polled).
    with pytest.raises(CLOSED) as e:
        for _ in range(300):
            time.sleep(0.1)
            ch.queue_bind(q, "amq.fanout")
    assert e.value.args[0] == 404
    conn.close()


def test_after_a_restart_only_messages_delivered_before_are_redelivered(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = n("backlog")
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for body in (b"1", b"2", b"3"):
        ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2))
    m, _, body = ch.basic_get(q)  # delivered, never acked
    assert body == b"1" and not m.redelivered
    ch.basic_get(q, auto_ack=True)  # "2": settled, gone
    broker.restart()
    conn = broker.connect()
    ch = conn.channel()
    got = []
    for _ in range(2):
        m, _, body = ch.basic_get(q, auto_ack=True)
        got.append((body, m.redelivered))
    assert got == [(b"1", True), (b"3", False)]
    ch.queue_delete(q)
    conn.close()


def test_cc_keys_route_with_the_routing_key_before_the_alternate_exchange(broker):
    # RabbitMQ routes all of a message's keys (routing key, CC, BCC) through an exchange at
    # once: its alternate exchange takes the message only if no key leads anywhere.
    conn = broker.connect()
    ch = conn.channel()
    x, ae = n("ccx"), n("ccae")
    q, lost = n("ccq"), n("ccaeq")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(x, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    for name in (q, lost):
        ch.queue_declare(name, auto_delete=True)
    ch.queue_bind(lost, ae)
    ch.queue_bind(q, x, "a")
    ch.confirm_delivery()
    for rk, cc in (("a", ["nowhere"]), ("nowhere", ["a"]), ("a", ["a", "elsewhere"])):
        ch.basic_publish(x, rk, b"m", pika.BasicProperties(headers={"CC": cc}))
    ch.basic_publish(x, "a", b"m", pika.BasicProperties(headers={"BCC": ["nowhere"]}))
    assert ch.queue_declare(q, passive=True).method.message_count == 4
    assert ch.queue_declare(lost, passive=True).method.message_count == 0
    # Nothing routes: then the alternate exchange has it.
    ch.basic_publish(x, "none", b"m", pika.BasicProperties(headers={"CC": ["other"]}))
    assert ch.queue_declare(lost, passive=True).method.message_count == 1
    conn.close()
