"""RabbitMQ's six classic tutorials, written as their pika versions are, against FerryMQ."""

import threading
import uuid

import pika
import pytest


def drain(conn, until, timeout=15):
    """Processes events until `until()` is true."""
    deadline = timeout
    while not until():
        conn.process_data_events(time_limit=0.1)
        deadline -= 0.1
        if deadline <= 0:
            raise AssertionError("timed out waiting for deliveries")


def test_1_hello_world(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(queue="hello")
    ch.basic_publish(exchange="", routing_key="hello", body="Hello World!")
    got = []
    ch.basic_consume(queue="hello", auto_ack=True, on_message_callback=lambda c, m, p, b: got.append(b))
    drain(conn, lambda: got)
    assert got == [b"Hello World!"]
    conn.close()


def test_2_work_queues_fair_dispatch_with_prefetch_and_acks(broker):
    producer = broker.connect()
    pch = producer.channel()
    pch.queue_declare(queue="task_queue", durable=True)
    workers = broker.connect()
    got = {"a": [], "b": []}
    held = {}
    channels = {}
    finishing = {"on": False}
    for name in ("a", "b"):
        ch = workers.channel()
        ch.basic_qos(prefetch_count=1)

        def cb(c, method, props, body, name=name):
            got[name].append(body)
            if finishing["on"]:
                c.basic_ack(method.delivery_tag)
            else:
                held[name] = method.delivery_tag
        ch.basic_consume(queue="task_queue", on_message_callback=cb)
        channels[name] = ch
    for i in range(6):
        pch.basic_publish(exchange="", routing_key="task_queue", body=f"task {i}",
                          properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    drain(workers, lambda: got["a"] and got["b"])
    # prefetch=1: each worker holds exactly one unacked task, four stay ready.
    q = pch.queue_declare(queue="task_queue", durable=True, passive=True)
    assert q.method.message_count == 4
    assert len(got["a"]) == 1 and len(got["b"]) == 1
    # Worker a finishes its task; a (not the busy b) gets the next one.
    channels["a"].basic_ack(held.pop("a"))
    drain(workers, lambda: len(got["a"]) == 2)
    assert len(got["b"]) == 1
    finishing["on"] = True
    for name, tag in list(held.items()):
        channels[name].basic_ack(tag)
    drain(workers, lambda: len(got["a"]) + len(got["b"]) == 6)
    assert sorted(got["a"] + got["b"]) == sorted(f"task {i}".encode() for i in range(6))
    producer.close()
    workers.close()


def test_3_publish_subscribe_fanout(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="logs", exchange_type="fanout")
    received = {}
    for i in range(2):
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
        ch.queue_bind(exchange="logs", queue=q)
        received[q] = []
        ch.basic_consume(queue=q, auto_ack=True,
                         on_message_callback=lambda c, m, p, b, q=q: received[q].append(b))
    for msg in (b"info: one", b"info: two"):
        ch.basic_publish(exchange="logs", routing_key="", body=msg)
    drain(conn, lambda: all(len(v) == 2 for v in received.values()))
    for v in received.values():
        assert v == [b"info: one", b"info: two"]
    conn.close()


def test_4_routing_direct(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="direct_logs", exchange_type="direct")
    errors_q = ch.queue_declare(queue="", exclusive=True).method.queue
    all_q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange="direct_logs", queue=errors_q, routing_key="error")
    for sev in ("info", "warning", "error"):
        ch.queue_bind(exchange="direct_logs", queue=all_q, routing_key=sev)
    for sev in ("info", "warning", "error", "debug"):
        ch.basic_publish(exchange="direct_logs", routing_key=sev, body=sev)
    errs, alls = [], []
    ch.basic_consume(queue=errors_q, auto_ack=True, on_message_callback=lambda c, m, p, b: errs.append(m.routing_key))
    ch.basic_consume(queue=all_q, auto_ack=True, on_message_callback=lambda c, m, p, b: alls.append(m.routing_key))
    drain(conn, lambda: len(alls) == 3 and errs)
    conn.process_data_events(time_limit=0.2)
    assert errs == ["error"]
    assert alls == ["info", "warning", "error"]
    conn.close()


def test_5_topics(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="topic_logs", exchange_type="topic")
    bindings = {"kern": ["kern.*"], "critical": ["*.critical"], "all": ["#"]}
    got = {}
    for name, keys in bindings.items():
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        for k in keys:
            ch.queue_bind(exchange="topic_logs", queue=q, routing_key=k)
        got[name] = []
        ch.basic_consume(queue=q, auto_ack=True,
                         on_message_callback=lambda c, m, p, b, n=name: got[n].append(m.routing_key))
    for key in ("kern.critical", "kern.info", "cron.critical", "cron.info.extra"):
        ch.basic_publish(exchange="topic_logs", routing_key=key, body=key)
    drain(conn, lambda: len(got["all"]) == 4)
    conn.process_data_events(time_limit=0.2)
    assert got["kern"] == ["kern.critical", "kern.info"]
    assert got["critical"] == ["kern.critical", "cron.critical"]
    assert got["all"] == ["kern.critical", "kern.info", "cron.critical", "cron.info.extra"]
    conn.close()


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def run_rpc_server(broker, ready, stop):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(queue="rpc_queue")
    ch.basic_qos(prefetch_count=1)

    def on_request(c, method, props, body):
        c.basic_publish(exchange="", routing_key=props.reply_to,
                        properties=pika.BasicProperties(correlation_id=props.correlation_id),
                        body=str(fib(int(body))))
        c.basic_ack(delivery_tag=method.delivery_tag)
    ch.basic_consume(queue="rpc_queue", on_message_callback=on_request)
    ready.set()
    while not stop.is_set():
        conn.process_data_events(time_limit=0.1)
    conn.close()


@pytest.mark.parametrize("direct_reply_to", [False, True])
def test_6_rpc(broker, direct_reply_to):
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=run_rpc_server, args=(broker, ready, stop), daemon=True)
    server.start()
    assert ready.wait(15)
    conn = broker.connect()
    ch = conn.channel()
    if direct_reply_to:
        callback_queue = "amq.rabbitmq.reply-to"
    else:
        callback_queue = ch.queue_declare(queue="", exclusive=True).method.queue
    responses = {}
    ch.basic_consume(queue=callback_queue, auto_ack=True,
                     on_message_callback=lambda c, m, p, b: responses.__setitem__(p.correlation_id, int(b)))
    for n in (1, 10, 20):
        corr = str(uuid.uuid4())
        ch.basic_publish(exchange="", routing_key="rpc_queue",
                         properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=corr),
                         body=str(n))
        drain(conn, lambda: corr in responses)
        assert responses[corr] == fib(n)
    stop.set()
    server.join(15)
    conn.close()


def test_errors_surface_as_pika_exceptions(broker):
    conn = broker.connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(queue="missing", passive=True)
    assert e.value.reply_code == 404
    ch = conn.channel()
    ch.queue_declare(queue="q")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(queue="q", durable=True)
    assert e.value.reply_code == 406
    assert "inequivalent arg 'durable'" in e.value.reply_text
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(exchange="", routing_key="nowhere", body=b"x", mandatory=True)
    conn.close()


def test_wrong_credentials(broker):
    params = broker.params()
    params.credentials = pika.PlainCredentials("guest", "wrong")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(params)
