"""aiormq, the low-level asyncio client under aio-pika, used as its README's tutorial uses it:
declare, publish with confirms, consume, basic.get, qos, and the errors it raises.

Every test also passes against RabbitMQ 3.10 (AMQP_TEST_PORT=5681)."""

import asyncio
import uuid

import aiormq
import pytest
from aiormq import spec

from conftest import amqp_url, run_async


def n(prefix):
    return f"aiormq-{prefix}-{uuid.uuid4().hex[:8]}"


def test_the_server_advertises_what_aiormq_uses(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            assert conn.publisher_confirms is True
            assert conn.basic_nack and conn.consumer_cancel_notify and conn.exchange_exchange_bindings
    run_async(main())


def test_publish_with_confirms_then_basic_get(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            declare_ok = await ch.queue_declare(exclusive=True)
            assert declare_ok.queue.startswith("amq.gen-")
            assert (declare_ok.message_count, declare_ok.consumer_count) == (0, 0)
            for i in range(3):
                confirm = await ch.basic_publish(
                    f"m{i}".encode(), routing_key=declare_ok.queue,
                    properties=spec.Basic.Properties(content_type="text/plain", message_id=f"id{i}"))
                assert isinstance(confirm, spec.Basic.Ack)
                assert confirm.delivery_tag == i + 1

            first = await ch.basic_get(declare_ok.queue)
            assert first.body == b"m0"
            assert isinstance(first.delivery, spec.Basic.GetOk)
            assert (first.delivery.message_count, first.delivery.redelivered, first.routing_key,
                    first.exchange) == (2, False, declare_ok.queue, "")
            assert (first.header.properties.content_type, first.header.properties.message_id) == (
                "text/plain", "id0")
            await ch.basic_ack(first.delivery_tag)
            second = await ch.basic_get(declare_ok.queue, no_ack=True)
            assert (second.body, second.delivery.message_count) == (b"m1", 1)
            # Reject with requeue: the message goes back to the head, marked redelivered.
            third = await ch.basic_get(declare_ok.queue)
            await ch.basic_reject(third.delivery_tag, requeue=True)
            again = await ch.basic_get(declare_ok.queue)
            assert (again.body, again.delivery.redelivered, again.delivery.message_count) == (b"m2", True, 0)
            await ch.basic_ack(again.delivery_tag)
            empty = await ch.basic_get(declare_ok.queue)
            assert isinstance(empty.delivery, spec.Basic.GetEmpty)
    run_async(main())


def test_consume_with_prefetch_and_multiple_ack(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            await ch.basic_qos(prefetch_count=2)
            q = (await ch.queue_declare(n("work"), exclusive=True)).queue
            for i in range(5):
                await ch.basic_publish(f"task {i}".encode(), routing_key=q)
            got = asyncio.Queue()
            consume_ok = await ch.basic_consume(q, got.put)
            first = await asyncio.wait_for(got.get(), 10)
            second = await asyncio.wait_for(got.get(), 10)
            assert (first.body, second.body) == (b"task 0", b"task 1")
            assert first.consumer_tag == consume_ok.consumer_tag
            # Two unacknowledged deliveries fill the prefetch window: three stay ready.
            declared = await ch.queue_declare(q, passive=True)
            assert (declared.message_count, declared.consumer_count) == (3, 1)
            await ch.basic_ack(second.delivery_tag, multiple=True)
            third = await asyncio.wait_for(got.get(), 10)
            fourth = await asyncio.wait_for(got.get(), 10)
            assert [(m.body, m.delivery_tag) for m in (third, fourth)] == [(b"task 2", 3), (b"task 3", 4)]
            await ch.basic_ack(third.delivery_tag)
            fifth = await asyncio.wait_for(got.get(), 10)
            assert (fifth.body, fifth.delivery_tag) == (b"task 4", 5)
            # Nack both held deliveries at once, requeued: they come again, in order.
            await ch.basic_nack(fifth.delivery_tag, multiple=True, requeue=True)
            again = [await asyncio.wait_for(got.get(), 10) for _ in range(2)]
            assert [(m.body, m.redelivered) for m in again] == [(b"task 3", True), (b"task 4", True)]
            cancel_ok = await ch.basic_cancel(consume_ok.consumer_tag)
            assert cancel_ok.consumer_tag == consume_ok.consumer_tag
            # Closing the channel returns the messages it still held.
            await ch.close()
            ch = await conn.channel()
            declared = await ch.queue_declare(q, passive=True)
            assert (declared.message_count, declared.consumer_count) == (2, 0)
    run_async(main())


def test_basic_recover_requeues_unacknowledged_deliveries(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            q = (await ch.queue_declare(exclusive=True)).queue
            await ch.basic_publish(b"again", routing_key=q)
            got = asyncio.Queue()
            await ch.basic_consume(q, got.put)
            first = await asyncio.wait_for(got.get(), 10)
            assert (first.body, first.redelivered) == (b"again", False)
            assert isinstance(await ch.basic_recover(requeue=True), spec.Basic.RecoverOk)
            second = await asyncio.wait_for(got.get(), 10)
            assert (second.body, second.redelivered) == (b"again", True)
            await ch.basic_ack(second.delivery_tag)
    run_async(main())


def test_large_and_empty_bodies_cross_frame_boundaries(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            q = (await ch.queue_declare(exclusive=True)).queue
            big = bytes(range(256)) * 8192 + b"tail"  # 2 MiB + 4 bytes: many body frames
            for body in (big, b""):
                await ch.basic_publish(body, routing_key=q)
            got = await ch.basic_get(q, no_ack=True)
            assert got.body == big and got.header.body_size == len(big)
            got = await ch.basic_get(q, no_ack=True)
            assert got.body == b""
    run_async(main())


def test_unroutable_mandatory_publish_raises_publish_error(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            with pytest.raises(aiormq.exceptions.PublishError) as e:
                await ch.basic_publish(b"lost", exchange="amq.direct", routing_key="nobody", mandatory=True)
            returned = e.value.message
            assert returned.body == b"lost"
            assert (returned.delivery.reply_code, returned.delivery.reply_text, returned.delivery.exchange,
                    returned.delivery.routing_key) == (312, "NO_ROUTE", "amq.direct", "nobody")
            # Not mandatory: dropped, and still confirmed.
            assert isinstance(await ch.basic_publish(b"x", exchange="amq.direct", routing_key="nobody"),
                              spec.Basic.Ack)
    run_async(main())


def test_channel_errors_close_the_channel_not_the_connection(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            missing = n("missing")
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as e:
                await ch.queue_declare(missing, passive=True)
            assert e.value.args == (f"NOT_FOUND - no queue '{missing}' in vhost '/'",)
            assert ch.is_closed

            ch = await conn.channel()
            q = n("durable-mismatch")
            await ch.queue_declare(q, auto_delete=True)
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as e:
                await ch.queue_declare(q, durable=True, auto_delete=True)
            assert e.value.args == (
                f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': "
                "received 'true' but current is 'false'",)

            # Publishing to an exchange that does not exist: the pending confirm fails.
            ch = await conn.channel()
            nowhere = n("no-exchange")
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity) as e:
                await ch.basic_publish(b"x", exchange=nowhere, routing_key="k")
            assert e.value.args == (f"NOT_FOUND - no exchange '{nowhere}' in vhost '/'",)

            ch = await conn.channel()
            internal = n("internal")
            await ch.exchange_declare(internal, exchange_type="fanout", internal=True, auto_delete=True)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as e:
                await ch.basic_publish(b"x", exchange=internal)
            assert e.value.args == (f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'",)

            ch = await conn.channel()
            other = await aiormq.connect(amqp_url(broker)).__aenter__()
            try:
                mine = (await ch.queue_declare(exclusive=True)).queue
                och = await other.channel()
                with pytest.raises(aiormq.exceptions.ChannelLockedResource) as e:
                    await och.basic_consume(mine, lambda m: None)
                assert e.value.args[0].startswith(
                    f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{mine}' in vhost '/'")
            finally:
                await other.close()
            # The connection survived all of it.
            assert not conn.is_closed
            assert (await ch.queue_declare(mine, passive=True)).queue == mine
    run_async(main())


def test_redeclaring_with_an_argument_of_another_type_is_inequivalent(broker):
    # A queue declared by one service with an integer TTL, then by another whose
    # configuration gives the TTL as a string.
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            q = n("ttl")
            await ch.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": 1000})
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as e:
                await ch.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": "1000"})
            assert e.value.args == (
                f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
                "received '1000' but current is '1000'",)
            # Declared first with the string, the value itself is refused.
            ch = await conn.channel()
            other = n("ttl-str")
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as e:
                await ch.queue_declare(other, auto_delete=True, arguments={"x-message-ttl": "1000"})
            assert e.value.args == (
                f"PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue '{other}' in vhost '/': "
                '"expected integer, got longstr"',)
    run_async(main())


def test_deleting_a_consumed_queue_cancels_the_consumer(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            q = (await ch.queue_declare(n("doomed"))).queue
            cancelled = asyncio.get_running_loop().create_future()
            ch.on_consumer_cancel_callbacks.add(lambda frame: cancelled.set_result(frame.consumer_tag))
            consume_ok = await ch.basic_consume(q, lambda m: None)
            other = await conn.channel()
            await other.queue_delete(q)
            assert await asyncio.wait_for(cancelled, 10) == consume_ok.consumer_tag
            assert consume_ok.consumer_tag not in ch.consumers
            assert not ch.is_closed
    run_async(main())


def test_exchange_to_exchange_and_headers_bindings(broker):
    async def main():
        async with aiormq.connect(amqp_url(broker)) as conn:
            ch = await conn.channel()
            front, back = n("front"), n("back")
            await ch.exchange_declare(front, exchange_type="direct")
            await ch.exchange_declare(back, exchange_type="headers", auto_delete=True)
            await ch.exchange_bind(destination=back, source=front, routing_key="invoice")
            any_q = (await ch.queue_declare(exclusive=True)).queue
            await ch.queue_bind(any_q, back, arguments={"x-match": "any", "region": "eu", "vip": True})
            for key, headers in (("invoice", {"region": "eu"}), ("invoice", {"vip": True}),
                                 ("invoice", {"region": "us"}), ("receipt", {"region": "eu"})):
                await ch.basic_publish(key.encode() + b":" + repr(sorted(headers.items())).encode(),
                                       exchange=front, routing_key=key,
                                       properties=spec.Basic.Properties(headers=headers))
            bodies = []
            for _ in range(2):
                m = await ch.basic_get(any_q, no_ack=True)
                bodies.append(m.body)
            assert bodies == [b"invoice:[('region', 'eu')]", b"invoice:[('vip', True)]"]
            assert isinstance((await ch.basic_get(any_q)).delivery, spec.Basic.GetEmpty)
            await ch.exchange_unbind(destination=back, source=front, routing_key="invoice")
            await ch.basic_publish(b"after", exchange=front, routing_key="invoice",
                                   properties=spec.Basic.Properties(headers={"region": "eu"}))
            assert isinstance((await ch.basic_get(any_q)).delivery, spec.Basic.GetEmpty)
            await ch.exchange_delete(front)
            # An auto-delete exchange goes with its last binding.
            await ch.queue_unbind(any_q, back, arguments={"x-match": "any", "region": "eu", "vip": True})
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await ch.exchange_declare(back, exchange_type="headers", passive=True)
    run_async(main())
