"""Reply codes and texts exactly as RabbitMQ 3.10 sends them (recorded from RabbitMQ 3.10 on
Debian; re-check with AMQP_TEST_PORT pointing at a RabbitMQ)."""

import uuid

import pika
import pytest

CLOSED = (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)


def n(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def expect(broker, action, code, text):
    conn = broker.connect()
    ch = conn.channel()
    try:
        with pytest.raises(CLOSED) as e:
            action(conn, ch)
        assert (e.value.reply_code, e.value.reply_text) == (code, text)
    finally:
        if conn.is_open:
            conn.close()


def test_not_found(broker):
    expect(broker, lambda c, ch: ch.queue_declare("nope", passive=True), 404, "NOT_FOUND - no queue 'nope' in vhost '/'")
    expect(broker, lambda c, ch: ch.exchange_declare("nope", passive=True), 404, "NOT_FOUND - no exchange 'nope' in vhost '/'")
    expect(broker, lambda c, ch: ch.basic_get("nope"), 404, "NOT_FOUND - no queue 'nope' in vhost '/'")
    expect(broker, lambda c, ch: ch.queue_purge("nope"), 404, "NOT_FOUND - no queue 'nope' in vhost '/'")
    expect(broker, lambda c, ch: ch.queue_bind("nope", "amq.direct"), 404, "NOT_FOUND - no queue 'nope' in vhost '/'")

    def publish_missing(c, ch):
        ch.confirm_delivery()
        ch.basic_publish("nox", "", b"x")
    expect(broker, publish_missing, 404, "NOT_FOUND - no exchange 'nox' in vhost '/'")


def test_inequivalent_redeclare(broker):
    q, q2, x = n("q"), n("q"), n("x")

    def durable(c, ch):
        ch.queue_declare(q)
        ch.queue_declare(q, durable=True)
    expect(broker, durable, 406,
           f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'")

    def arg(c, ch):
        ch.queue_declare(q2, arguments={"x-max-length": 10})
        ch.queue_declare(q2, arguments={"x-max-length": 20})
    expect(broker, arg, 406,
           f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q2}' in vhost '/': received '20' but current is '10'")
    expect(broker, lambda c, ch: ch.queue_declare(q2), 406,
           f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q2}' in vhost '/': received none but current is the value '10' of type 'signedint'")

    def xtype(c, ch):
        ch.exchange_declare(x, "fanout")
        ch.exchange_declare(x, "direct")
    expect(broker, xtype, 406,
           f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'direct' but current is 'fanout'")
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_delete(q)
    ch.queue_delete(q2)
    ch.exchange_delete(x)
    conn.close()


def test_invalid_arguments(broker):
    expect(broker, lambda c, ch: ch.queue_declare("argq", arguments={"x-max-length": "ten"}), 406,
           "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'argq' in vhost '/': \"expected integer, got longstr\"")
    expect(broker, lambda c, ch: ch.queue_declare("argq", arguments={"x-max-length": -1}), 406,
           "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'argq' in vhost '/': {value_negative,-1}")
    expect(broker, lambda c, ch: ch.queue_declare("argq", arguments={"x-expires": 0}), 406,
           "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'argq' in vhost '/': {value_zero,0}")
    expect(broker, lambda c, ch: ch.queue_declare("argq", arguments={"x-max-priority": 300}), 406,
           "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'argq' in vhost '/': {max_value_exceeded,300}")


def test_access_refused(broker):
    expect(broker, lambda c, ch: ch.exchange_declare("amq.mine", "direct"), 403,
           "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'")
    expect(broker, lambda c, ch: ch.queue_declare("amq.mine"), 403,
           "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'")
    expect(broker, lambda c, ch: ch.exchange_delete(""), 403,
           "ACCESS_REFUSED - operation not permitted on the default exchange")
    expect(broker, lambda c, ch: ch.exchange_delete("amq.direct"), 403,
           "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed")
    q = n("q")

    def bind_default(c, ch):
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, "")
    expect(broker, bind_default, 403, "ACCESS_REFUSED - operation not permitted on the default exchange")

    def exclusive_consumer(c, ch):
        ch.queue_declare(q, exclusive=True)
        ch.basic_consume(q, lambda *a: None, exclusive=True)
        c.channel().basic_consume(q, lambda *a: None)
    expect(broker, exclusive_consumer, 403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")


def test_preconditions(broker):
    q, x = n("q"), n("x")
    expect(broker, lambda c, ch: (ch.basic_ack(5), ch.queue_declare("", exclusive=True)), 406,
           "PRECONDITION_FAILED - unknown delivery tag 5")

    def not_empty(c, ch):
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish("", q, b"x")
        ch.queue_delete(q, if_empty=True)
    expect(broker, not_empty, 406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")

    def in_use(c, ch):
        ch.exchange_declare(x, "direct", auto_delete=True)
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, x, "k")
        ch.exchange_delete(x, if_unused=True)
    expect(broker, in_use, 406, f"PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use")

    def tx_after_confirm(c, ch):
        ch.confirm_delivery()
        ch.tx_select()
    expect(broker, tx_after_confirm, 406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")
    expect(broker, lambda c, ch: ch.tx_commit(), 406, "PRECONDITION_FAILED - channel is not transactional")
    expect(broker, lambda c, ch: ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None), 406,
           "PRECONDITION_FAILED - reply consumer cannot acknowledge")

    def reply_without_consumer(c, ch):
        ch.basic_publish("", "anything", b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
        ch.queue_declare("", exclusive=True)
    expect(broker, reply_without_consumer, 406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_connection_errors(broker):
    expect(broker, lambda c, ch: ch.exchange_declare("bogusx", "bogus"), 503, "COMMAND_INVALID - unknown exchange type 'bogus'")
    expect(broker, lambda c, ch: ch.basic_recover(requeue=False), 540, "NOT_IMPLEMENTED - requeue=false")
    expect(broker, lambda c, ch: ch.basic_qos(prefetch_size=10), 540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)")
    params = broker.params()
    params.virtual_host = "nosuch"
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(params)
    assert "NOT_ALLOWED - vhost nosuch not found" in str(e.value)


def test_idempotent_deletes(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_delete(n("never"))
    ch.exchange_delete(n("never"))
    q = n("q")
    ch.queue_declare(q, exclusive=True)
    ch.queue_unbind(q, "amq.direct", "not-bound")
    ch.queue_declare("amq.rabbitmq.reply-to", passive=True)
    conn.close()


def test_user_id_must_match_the_login(broker):
    q = n("q")

    def spoof(c, ch):
        ch.confirm_delivery()
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    expect(broker, spoof, 406,
           "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'")

    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(q, exclusive=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="guest"))
        _, props, body = ch.basic_get(q, auto_ack=True)
        assert (props.user_id, body) == ("guest", b"x")
    finally:
        conn.close()


@pytest.mark.parametrize("expiration,reason", [
    ("abc", "no_integer"),
    ("", "no_integer"),
    ("-5", "{value_negative,-5}"),
    ("10x", '{leftover_string,"x"}'),
    ("1.5", '{leftover_string,".5"}'),
    ("315360000001", "{value_too_large,315360000001}"),
    ("5\x01a", "{leftover_string,[1,97]}"),
    ('5"\\', '{leftover_string,"\\"\\\\"}'),
    # Erlang's ~p breaks a term that would pass column 78.
    ("1000000000000000000", "{value_too_large,\n" + " " * 43 + "1000000000000000000}"),
])
def test_invalid_expiration_is_refused(broker, expiration, reason):
    q = n("exp")

    def publish(c, ch):
        ch.queue_declare(q, exclusive=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
    expect(broker, publish, 406, f"PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}")


def test_a_long_reply_text_is_cut_as_rabbitmq_cuts_it(broker):
    bad = "5" + "x" * 200
    q = n("exp")

    def publish(c, ch):
        ch.queue_declare(q, exclusive=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=bad))
    full = f"PRECONDITION_FAILED - invalid expiration '{bad}': {{leftover_string,"
    expect(broker, publish, 406, full[:252] + "...")


# Recorded from RabbitMQ 3.10.8: ~p fills a long list line by line, continuation lines one
# column right of its `[`, before the reply text is cut at 255 bytes.
@pytest.mark.parametrize("expiration,text", [
    ('5\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01',
     "PRECONDITION_FAILED - invalid expiration '5\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01': {leftover_string,\n                                                                 [1,1,1,1,1,1,\n                                                                  1,1..."),
    ('12345678901234567890\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01',
     "PRECONDITION_FAILED - invalid expiration '12345678901234567890\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01': {leftover_string,\n                                                      [1,1,1,1,1,1,1,1,1,1]}"),
    ('5a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01',
     "PRECONDITION_FAILED - invalid expiration '5a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01a\x01': {leftover_string,\n                                                                 [97,1,97,1,\n                                                                  97,1,..."),
    ('5\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02',
     "PRECONDITION_FAILED - invalid expiration '5\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02\x01\x02': {leftover_string,\n                                                                                     [1,\n                                       ..."),
    ('5\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01',
     "PRECONDITION_FAILED - invalid expiration '5\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01': {leftover_string,\n                                                                                        ..."),
])
def test_long_unprintable_expirations_are_laid_out_as_rabbitmq_does(broker, expiration, text):
    q = n("exp")

    def publish(c, ch):
        ch.queue_declare(q, exclusive=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
    expect(broker, publish, 406, text)


def test_valid_expirations_are_accepted(broker):
    conn = broker.connect()
    ch = conn.channel()
    q = n("exp")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for e in ["0", "+10", "007", "4294967296", "315360000000"]:
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=e))
    assert ch.queue_declare(q, passive=True).method.message_count >= 1
    conn.close()
