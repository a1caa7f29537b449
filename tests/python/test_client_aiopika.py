"""aio-pika, used as its documentation and examples use it: robust connections that come back
after the broker closed them, the RPC / JSON-RPC and Master patterns, queue iterators with
`message.process()`, reject and requeue, transactions and publisher confirms.

Every test also passes against RabbitMQ 3.10 (AMQP_TEST_PORT=5681, RABBITMQCTL for the
restart tests)."""

import asyncio
import datetime
import uuid

import aio_pika
import aiormq
import pytest
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.patterns import JsonRPC, Master, RPC
from aio_pika.patterns.master import RejectMessage
from aio_pika.patterns.rpc import JsonRPCError

from conftest import amqp_url, run_async


def n(prefix):
    return f"aiopika-{prefix}-{uuid.uuid4().hex[:8]}"


async def next_message(queue_iter, timeout=10):
    return await asyncio.wait_for(queue_iter.__anext__(), timeout)


async def message_count(channel, name):
    q = await channel.declare_queue(name, passive=True)
    return q.declaration_result.message_count


# ---------------------------------------------------------------------------------------
# Robust connections


def test_robust_connection_restores_its_topology_after_the_broker_restarts(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker), reconnect_interval=0.2)
        reconnected = asyncio.Event()
        conn.reconnect_callbacks.add(lambda *_: reconnected.set())
        try:
            ch = await conn.channel()
            durable_name = n("durable")
            durable = await ch.declare_queue(durable_name, durable=True)
            await ch.default_exchange.publish(
                Message(b"kept", delivery_mode=DeliveryMode.PERSISTENT, message_id="m-1"),
                routing_key=durable_name)
            # What the application set up on its channel: an exchange, a server-named
            # exclusive queue bound to it and a consumer. A robust channel declares all of it
            # again on the new connection.
            events = await ch.declare_exchange(n("events"), ExchangeType.TOPIC, auto_delete=True)
            mine = await ch.declare_queue(exclusive=True)
            await mine.bind(events, "order.*")
            got = asyncio.Queue()

            async def on_message(message):
                async with message.process():
                    await got.put((message.routing_key, message.body))
            await mine.consume(on_message)
            await events.publish(Message(b"before"), "order.created")
            assert await asyncio.wait_for(got.get(), 10) == ("order.created", b"before")

            await asyncio.get_running_loop().run_in_executor(None, broker.restart)
            await asyncio.wait_for(reconnected.wait(), 30)

            # The persistent message waited in the durable queue.
            message = await durable.get(timeout=10)
            assert (message.body, message.message_id) == (b"kept", "m-1")
            await message.ack()
            # The exclusive queue went with the old connection; the robust queue declared it
            # again, bound it and consumes from it.
            await events.publish(Message(b"after"), "order.paid")
            assert await asyncio.wait_for(got.get(), 10) == ("order.paid", b"after")
            await durable.delete()
        finally:
            await conn.close()
    run_async(main(), timeout=90)


def test_a_robust_channel_reopens_after_the_broker_closed_it(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            ch = await conn.channel()
            reopened = asyncio.Event()
            ch.reopen_callbacks.add(lambda *_: reopened.set())
            missing = n("missing")
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity) as e:
                await ch.declare_queue(missing, passive=True)
            # aiormq names the reply code by the exception's class and keeps the reply text.
            assert e.value.args == (f"NOT_FOUND - no queue '{missing}' in vhost '/'",)
            # The robust channel opens again by itself; the application keeps using the same
            # channel object.
            await asyncio.wait_for(reopened.wait(), 10)
            q = await ch.declare_queue(exclusive=True)
            await ch.default_exchange.publish(Message(b"still here"), q.name)
            message = await q.get(timeout=10)
            assert message.body == b"still here"
            await message.ack()
        finally:
            await conn.close()
    run_async(main())


def test_after_a_restart_only_delivered_messages_are_marked_redelivered(broker):
    # Applications treat `redelivered` as "possibly processed before": after a restart only
    # the message that had been delivered (and not acknowledged) carries it.
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker), reconnect_interval=0.2)
        reconnected = asyncio.Event()
        conn.reconnect_callbacks.add(lambda *_: reconnected.set())
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(n("backlog"), durable=True)
            for body in (b"delivered", b"waiting"):
                await ch.default_exchange.publish(
                    Message(body, delivery_mode=DeliveryMode.PERSISTENT), q.name)
            held = await q.get(timeout=10)
            assert (held.body, held.redelivered) == (b"delivered", False)
            # Not acknowledged when the broker goes down.
            await asyncio.get_running_loop().run_in_executor(None, broker.restart)
            await asyncio.wait_for(reconnected.wait(), 30)
            got = {}
            for _ in range(2):
                m = await q.get(timeout=10)
                got[m.body] = m.redelivered
                await m.ack()
            assert got == {b"delivered": True, b"waiting": False}
            await q.delete()
        finally:
            await conn.close()
    run_async(main(), timeout=90)


def test_declaration_errors_users_see(broker):
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel()
            x = n("orders")
            await ch.declare_exchange(x, ExchangeType.DIRECT, auto_delete=True)
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as e:
                await ch.declare_exchange(x, ExchangeType.FANOUT, auto_delete=True)
            assert e.value.args == (
                f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': "
                "received 'fanout' but current is 'direct'",)

            ch = await conn.channel()
            missing = n("missing-x")
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity) as e:
                await ch.get_exchange(missing)
            assert e.value.args == (f"NOT_FOUND - no exchange '{missing}' in vhost '/'",)

            ch = await conn.channel()
            q = await ch.declare_queue(n("busy"), auto_delete=True)
            await ch.default_exchange.publish(Message(b"x"), q.name)
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as e:
                await q.delete(if_unused=False, if_empty=True)
            assert e.value.args == (f"PRECONDITION_FAILED - queue '{q.name}' in vhost '/' not empty",)

            ch = await conn.channel()
            q = await ch.declare_queue(n("solo"), exclusive=True)
            async def ignore(message):
                pass
            await q.consume(ignore, exclusive=True)
            other = await conn.channel()
            q2 = await other.declare_queue(q.name, passive=True)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as e:
                await q2.consume(ignore)
            assert e.value.args == (f"ACCESS_REFUSED - queue '{q.name}' in vhost '/' in exclusive use",)
        finally:
            await conn.close()
    run_async(main())


# ---------------------------------------------------------------------------------------
# The RPC patterns


def test_rpc_pattern_calls_raises_and_closes_cleanly(broker):
    async def main():
        server_conn = await aio_pika.connect_robust(amqp_url(broker))
        client_conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            server_ch = await server_conn.channel()
            server = await RPC.create(server_ch)
            method = n("multiply")

            async def multiply(*, x, y):
                return x * y

            async def divide(*, x, y):
                return x / y
            await server.register(method, multiply, auto_delete=True)
            await server.register(method + ".divide", divide, auto_delete=True)

            client_ch = await client_conn.channel()
            client = await RPC.create(client_ch)
            assert await getattr(client.proxy, method)(x=6, y=7) == 42
            assert await client.call(method, kwargs=dict(x="ab", y=3)) == "ababab"
            # An exception raised by the remote function is raised by the call.
            with pytest.raises(ZeroDivisionError):
                await client.call(method + ".divide", kwargs=dict(x=1, y=0))
            # Nobody serves this name: the mandatory call comes back as returned.
            with pytest.raises(aio_pika.exceptions.MessageProcessError) as e:
                await client.call(n("nobody-serves-this"))
            assert e.value.args[0] == "Message has been returned"

            result_queue = client.result_queue.name
            await client.close()
            await server.close()
            # Closing cancelled, unbound and deleted the reply queue without an error: the
            # channels are still open and the queue is gone.
            assert not client_ch.is_closed and not server_ch.is_closed
            probe = await client_conn.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await probe.declare_queue(result_queue, passive=True)
        finally:
            await client_conn.close()
            await server_conn.close()
    run_async(main())


def test_rpc_call_that_expires_unserved_comes_back_as_a_timeout(broker):
    # The pattern's method queues dead-letter to its headers exchange `rpc.dlx`, which routes
    # an expired call back to the caller's reply queue by its `From` header.
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            ch = await conn.channel()
            client = await RPC.create(ch)
            method = n("unserved")
            # A method queue whose server is not running.
            await ch.declare_queue(method, auto_delete=True,
                                   arguments={"x-dead-letter-exchange": RPC.DLX_NAME})
            with pytest.raises(asyncio.TimeoutError):
                await client.call(method, kwargs={}, expiration=0.05)
            await client.close()
            assert not ch.is_closed
        finally:
            await conn.close()
    run_async(main())


def test_json_rpc_round_trip_and_remote_errors(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            server = await JsonRPC.create(await conn.channel())
            client = await JsonRPC.create(await conn.channel())
            method = n("lookup")

            async def lookup(*, user_id):
                if user_id < 0:
                    raise ValueError("negative id")
                return {"id": user_id, "name": f"user{user_id}", "tags": ["a", "é"]}
            await server.register(method, lookup, auto_delete=True)
            assert await getattr(client.proxy, method)(user_id=3) == {"id": 3, "name": "user3", "tags": ["a", "é"]}
            with pytest.raises(JsonRPCError) as e:
                await client.call(method, kwargs={"user_id": -1})
            error = e.value.args[1]["error"]
            assert error["type"] == "ValueError" and error["args"] == ["negative id"]
            await client.close()
            await server.close()
            assert not client.channel.is_closed and not server.channel.is_closed
        finally:
            await conn.close()
    run_async(main())


def test_master_pattern_runs_tasks_and_dead_letters_rejected_ones(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=1)
            dead = await ch.declare_queue(n("dead"), exclusive=True)
            master = Master(ch)
            task = n("resize")
            done = asyncio.Queue()

            async def resize(*, image, size):
                if size <= 0:
                    raise RejectMessage(requeue=False)
                await done.put((image, size))
            await master.create_worker(task, resize, auto_delete=True, arguments={
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead.name})
            await getattr(master.proxy, task)(image="a.png", size=64)
            await getattr(master.proxy, task)(image="b.png", size=0)
            await getattr(master.proxy, task)(image="c.png", size=128)
            assert await asyncio.wait_for(done.get(), 10) == ("a.png", 64)
            assert await asyncio.wait_for(done.get(), 10) == ("c.png", 128)
            # The rejected task went to the dead-letter queue, as a persistent message.
            rejected = await dead.get(timeout=10, fail=False)
            for _ in range(100):
                if rejected:
                    break
                await asyncio.sleep(0.05)
                rejected = await dead.get(fail=False)
            assert rejected is not None
            assert master.deserialize(rejected.body) == {"image": "b.png", "size": 0}
            assert rejected.delivery_mode == DeliveryMode.PERSISTENT
            death = rejected.headers["x-death"][0]
            assert (death["reason"], death["queue"], death["count"]) == ("rejected", task, 1)
            await rejected.ack()
        finally:
            await conn.close()
    run_async(main())


# ---------------------------------------------------------------------------------------
# Consuming: iterators, process(), reject and requeue


def test_queue_iterator_with_process_acks_each_message(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=2)
            q = await ch.declare_queue(n("work"), auto_delete=True)
            for i in range(5):
                await ch.default_exchange.publish(Message(f"job {i}".encode()), q.name)
            seen = []
            async with q.iterator() as it:
                async for message in it:
                    async with message.process():
                        seen.append(message.body.decode())
                    if len(seen) == 5:
                        break
            assert seen == [f"job {i}" for i in range(5)]
            # All acknowledged: nothing is left to deliver, and the consumer is gone.
            declared = await ch.declare_queue(q.name, passive=True)
            assert declared.declaration_result.message_count == 0
            assert declared.declaration_result.consumer_count == 0
        finally:
            await conn.close()
    run_async(main())


def test_reject_requeue_and_process_on_exception(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            ch = await conn.channel()
            dead = await ch.declare_queue(n("dead"), exclusive=True)
            q = await ch.declare_queue(n("orders"), exclusive=True, arguments={
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead.name})
            await ch.default_exchange.publish(Message(b"order-1", headers={"attempt": 1}), q.name)
            async with q.iterator() as it:
                first = await next_message(it)
                assert (first.body, first.redelivered) == (b"order-1", False)
                await first.reject(requeue=True)
                again = await next_message(it)
                assert (again.body, again.redelivered, again.headers) == (b"order-1", True, {"attempt": 1})
                # process(requeue=True) puts the message back when the handler raises.
                with pytest.raises(RuntimeError):
                    async with again.process(requeue=True):
                        raise RuntimeError("handler failed")
                third = await next_message(it)
                assert (third.body, third.redelivered) == (b"order-1", True)
                # process() without requeue rejects: the message is dead-lettered.
                with pytest.raises(RuntimeError):
                    async with third.process():
                        raise RuntimeError("handler failed again")
            message = await dead.get(timeout=10, fail=False)
            for _ in range(100):
                if message:
                    break
                await asyncio.sleep(0.05)
                message = await dead.get(fail=False)
            assert message.body == b"order-1"
            assert message.headers["attempt"] == 1
            death = message.headers["x-death"][0]
            assert (death["reason"], death["queue"], death["count"], death["exchange"]) == (
                "rejected", q.name, 1, "")
            assert death["routing-keys"] == [q.name]
            await message.ack()
        finally:
            await conn.close()
    run_async(main())


def test_message_properties_and_headers_round_trip(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(exclusive=True, arguments={"x-max-priority": 10})
            stamp = datetime.datetime(2024, 5, 17, 12, 30, 45, tzinfo=datetime.timezone.utc)
            headers = {"str": "text é", "int": 42, "neg": -7, "big": 2 ** 40, "float": 1.5,
                       "bool": True, "none": None,
                       "list": [1, "two", [3]], "table": {"nested": {"deep": 1}}}
            await ch.default_exchange.publish(Message(
                b'{"a": 1}', content_type="application/json", content_encoding="utf-8",
                headers=headers, delivery_mode=DeliveryMode.PERSISTENT, priority=7,
                correlation_id="corr-1", reply_to="replies", expiration=60, message_id="id-1",
                timestamp=stamp, type="order.created", user_id="guest", app_id="shop"), q.name)
            m = await q.get(timeout=10)
            assert m.body == b'{"a": 1}'
            assert (m.content_type, m.content_encoding) == ("application/json", "utf-8")
            assert m.headers == headers
            assert (m.delivery_mode, m.priority, m.correlation_id, m.reply_to) == (
                DeliveryMode.PERSISTENT, 7, "corr-1", "replies")
            assert (m.expiration, m.message_id, m.timestamp, m.type, m.user_id, m.app_id) == (
                60, "id-1", stamp, "order.created", "guest", "shop")
            assert (m.exchange, m.routing_key, m.redelivered) == ("", q.name, False)
            await m.ack()
        finally:
            await conn.close()
    run_async(main())


def test_user_id_that_is_not_the_login_is_refused(broker):
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(exclusive=True)
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as e:
                await ch.default_exchange.publish(Message(b"x", user_id="mallory"), q.name)
            assert e.value.args == (
                "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'",)
        finally:
            await conn.close()
    run_async(main())


def test_quorum_queue_as_declared_by_the_tutorials(broker):
    # RabbitMQ's current tutorials and aio-pika users declare work queues as quorum queues.
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel()
            name = n("quorum")
            q = await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
            await ch.default_exchange.publish(
                Message(b"task", delivery_mode=DeliveryMode.PERSISTENT), name)
            async with q.iterator() as it:
                first = await next_message(it)
                assert (first.body, first.redelivered) == (b"task", False)
                await first.reject(requeue=True)
                again = await next_message(it)
                # A quorum queue counts the deliveries of a message that came back.
                assert (again.body, again.redelivered, again.headers.get("x-delivery-count")) == (
                    b"task", True, 1)
                await again.ack()
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as e:
                await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "classic"})
            assert e.value.args == (
                f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{name}' in vhost '/': "
                "received 'classic' but current is 'quorum'",)
            ch = await conn.channel()
            await ch.queue_delete(name)
            excl = n("quorum-excl")
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed) as e:
                await ch.declare_queue(excl, exclusive=True, arguments={"x-queue-type": "quorum"})
            assert e.value.args == (
                f"PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue '{excl}' in vhost '/'",)
        finally:
            await conn.close()
    run_async(main())


# ---------------------------------------------------------------------------------------
# Exchanges


def test_exchange_types_and_exchange_to_exchange_bindings(broker):
    async def main():
        conn = await aio_pika.connect_robust(amqp_url(broker))
        try:
            ch = await conn.channel()
            logs = await ch.declare_exchange(n("logs"), ExchangeType.TOPIC, auto_delete=True)
            fan = await ch.declare_exchange(n("fan"), ExchangeType.FANOUT, auto_delete=True)
            hdr = await ch.declare_exchange(n("hdr"), ExchangeType.HEADERS, auto_delete=True)
            errors = await ch.declare_queue(exclusive=True)
            everything = await ch.declare_queue(exclusive=True)
            pdf = await ch.declare_queue(exclusive=True)
            await errors.bind(logs, "*.error")
            # Everything the topic exchange routes with "#" goes on to the fanout exchange.
            await fan.bind(logs, "#")
            await everything.bind(fan)
            await hdr.bind(logs, "#")
            await pdf.bind(hdr, arguments={"x-match": "all", "format": "pdf", "type": "report"})

            await logs.publish(Message(b"disk full", headers={"format": "txt"}), "kern.error")
            await logs.publish(Message(b"report", headers={"format": "pdf", "type": "report"}), "app.info")
            await logs.publish(Message(b"half", headers={"format": "pdf"}), "app.info")

            async def bodies(q, count):
                out = []
                async with q.iterator() as it:
                    while len(out) < count:
                        m = await next_message(it)
                        await m.ack()
                        out.append(m.body)
                return out
            assert await bodies(errors, 1) == [b"disk full"]
            assert sorted(await bodies(everything, 3)) == [b"disk full", b"half", b"report"]
            assert await bodies(pdf, 1) == [b"report"]
            for q, expected in ((errors, 0), (everything, 0), (pdf, 0)):
                assert await message_count(ch, q.name) == expected

            await fan.unbind(logs, "#")
            await logs.publish(Message(b"late"), "kern.error")
            assert await bodies(errors, 1) == [b"late"]
            assert await message_count(ch, everything.name) == 0
        finally:
            await conn.close()
    run_async(main())


# ---------------------------------------------------------------------------------------
# Transactions and publisher confirms


def test_transactions_commit_and_rollback(broker):
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel(publisher_confirms=False)
            q = await ch.declare_queue(n("tx"), auto_delete=True)
            async with ch.transaction():
                await ch.default_exchange.publish(Message(b"one"), q.name)
                await ch.default_exchange.publish(Message(b"two"), q.name)
            assert await message_count(ch, q.name) == 2

            tx = ch.transaction()
            await tx.select()
            await ch.default_exchange.publish(Message(b"rolled back"), q.name)
            await tx.rollback()
            assert await message_count(ch, q.name) == 2

            # Leaving the context manager with an exception rolls back.
            with pytest.raises(KeyError):
                async with ch.transaction():
                    await ch.default_exchange.publish(Message(b"also rolled back"), q.name)
                    raise KeyError("abort")
            assert await message_count(ch, q.name) == 2
            got = [(await q.get(timeout=5, no_ack=True)).body for _ in range(2)]
            assert got == [b"one", b"two"]
        finally:
            await conn.close()
    run_async(main())


def test_transactions_are_refused_on_a_confirm_channel(broker):
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel(publisher_confirms=True)
            # aio-pika itself refuses; the underlying tx.select would be a 406 from the broker.
            with pytest.raises(RuntimeError):
                ch.transaction()
            raw = await conn.channel(publisher_confirms=True)
            underlay = await raw.get_underlay_channel()
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as e:
                await underlay.tx_select()
            assert e.value.args == ("PRECONDITION_FAILED - cannot switch from confirm to tx mode",)
        finally:
            await conn.close()
    run_async(main())


def test_publish_confirms_and_unroutable_mandatory_messages(broker):
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(exclusive=True)
            ack = await ch.default_exchange.publish(Message(b"x"), q.name)
            assert isinstance(ack, aiormq.spec.Basic.Ack)
            # Unroutable and mandatory: on a default channel the returned message is the result.
            nowhere = n("nowhere")
            returned = await ch.default_exchange.publish(Message(b"lost"), nowhere)
            assert returned.body == b"lost"
            assert (returned.delivery.reply_code, returned.delivery.reply_text, returned.delivery.routing_key) == (
                312, "NO_ROUTE", nowhere)
            # With on_return_raises the publish raises PublishError instead.
            strict = await conn.channel(on_return_raises=True)
            with pytest.raises(aio_pika.exceptions.PublishError) as e:
                await strict.default_exchange.publish(Message(b"lost"), nowhere)
            assert e.value.args[:2] == ("NO_ROUTE", nowhere)
        finally:
            await conn.close()
    run_async(main())


def test_publish_to_a_full_reject_publish_queue_raises_delivery_error(broker):
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel(on_return_raises=True)
            q = await ch.declare_queue(exclusive=True, arguments={
                "x-max-length": 1, "x-overflow": "reject-publish"})
            await ch.default_exchange.publish(Message(b"fits"), q.name)
            # aio-pika publishes mandatory by default; the broker nacks and does not return.
            with pytest.raises(aio_pika.exceptions.DeliveryError) as e:
                await ch.default_exchange.publish(Message(b"refused"), q.name)
            assert type(e.value) is aio_pika.exceptions.DeliveryError
            assert isinstance(e.value.frame, aiormq.spec.Basic.Nack)
            assert await message_count(ch, q.name) == 1
        finally:
            await conn.close()
    run_async(main())


def test_publish_to_a_full_reject_publish_queue_without_mandatory_is_nacked(broker):
    async def main():
        conn = await aio_pika.connect(amqp_url(broker))
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(exclusive=True, arguments={
                "x-max-length": 1, "x-overflow": "reject-publish"})
            await ch.default_exchange.publish(Message(b"fits"), q.name, mandatory=False)
            with pytest.raises(aio_pika.exceptions.DeliveryError) as e:
                await ch.default_exchange.publish(Message(b"refused"), q.name, mandatory=False)
            assert isinstance(e.value.frame, aiormq.spec.Basic.Nack)
            m = await q.get(timeout=5)
            assert m.body == b"fits"
            await m.ack()
            # Room again: the next publish is confirmed.
            await ch.default_exchange.publish(Message(b"now fits"), q.name, mandatory=False)
        finally:
            await conn.close()
    run_async(main())
