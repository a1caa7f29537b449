'use strict';
// amqplib (promise API), used as its README and examples use it, against the real broker
// binary (or RabbitMQ 3.10 with AMQP_TEST_PORT): connect, confirm channels, consume with
// ack/nack, prefetch, RPC over direct reply-to, channel errors with their codes,
// exchange-to-exchange bindings, and opt-in connection recovery.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const amqp = require('amqplib');
const { startBroker } = require('../broker');

let broker;
const open = [];

before(async () => {
  broker = await startBroker();
});

after(async () => {
  for (const conn of open.splice(0)) {
    await conn.close().catch(() => {});
  }
  await broker.stop();
});

function name(prefix) {
  return `amqplib-${prefix}-${randomUUID().slice(0, 8)}`;
}

async function connect(options) {
  const conn = await amqp.connect(broker.url, options);
  open.push(conn);
  return conn;
}

async function closeConn(conn) {
  open.splice(open.indexOf(conn), 1);
  await conn.close();
}

// Resolves with the next `count` messages a consumer gets (or rejects after a deadline).
function collector(ch) {
  const waiting = [];
  const got = [];
  const onMessage = (msg) => {
    got.push(msg);
    while (waiting.length && waiting[0].count <= got.length) {
      const w = waiting.shift();
      clearTimeout(w.timer);
      w.resolve(got.splice(0, w.count));
    }
  };
  const next = (count = 1, ms = 10000) =>
    new Promise((resolve, reject) => {
      if (got.length >= count) return resolve(got.splice(0, count));
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${count} message(s)`)), ms);
      waiting.push({ count, resolve, timer });
    });
  return { onMessage, next, pending: () => got.length };
}

// The channel's close error: amqplib rejects the pending operation and emits 'error'.
function channelError(ch) {
  return new Promise((resolve) => ch.once('error', resolve));
}

test('connect: the server advertises what amqplib relies on', async () => {
  const conn = await connect();
  const props = conn.connection.serverProperties;
  for (const cap of [
    'publisher_confirms',
    'exchange_exchange_bindings',
    'basic.nack',
    'consumer_cancel_notify',
    'connection.blocked',
    'authentication_failure_close',
    'per_consumer_qos',
    'direct_reply_to',
  ]) {
    assert.equal(props.capabilities[cap], true, cap);
  }
  assert.equal(conn.connection.frameMax, 131072);
  assert.equal(conn.connection.channelMax, 2047);
  await closeConn(conn);
});

test('a wrong password is refused with 403', async () => {
  const url = broker.url.replace('guest:guest', 'guest:wrong');
  await assert.rejects(amqp.connect(url), (err) => {
    assert.match(err.message, /ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN/);
    return true;
  });
});

test('sendToQueue, consume and ack: bodies and properties arrive as sent', async () => {
  const conn = await connect();
  const ch = await conn.createChannel();
  const q = await ch.assertQueue('', { exclusive: true });
  assert.match(q.queue, /^amq\.gen-/);
  assert.deepEqual([q.messageCount, q.consumerCount], [0, 0]);
  const c = collector(ch);
  const { consumerTag } = await ch.consume(q.queue, c.onMessage);
  const headers = { source: 'node', n: 7, nested: { ok: true }, list: [1, 'two'] };
  ch.sendToQueue(q.queue, Buffer.from('{"hello":"world"}'), {
    contentType: 'application/json',
    contentEncoding: 'utf-8',
    headers,
    persistent: true,
    priority: 4,
    correlationId: 'corr-1',
    replyTo: 'somewhere',
    expiration: '60000',
    messageId: 'm-1',
    timestamp: 1700000000,
    type: 'greeting',
    userId: 'guest',
    appId: 'node-test',
  });
  const [msg] = await c.next();
  assert.equal(msg.content.toString(), '{"hello":"world"}');
  assert.equal(msg.fields.consumerTag, consumerTag);
  assert.deepEqual(
    [msg.fields.exchange, msg.fields.routingKey, msg.fields.redelivered, msg.fields.deliveryTag],
    ['', q.queue, false, 1],
  );
  const p = msg.properties;
  assert.deepEqual(p.headers, headers);
  assert.deepEqual(
    [p.contentType, p.contentEncoding, p.deliveryMode, p.priority, p.correlationId, p.replyTo],
    ['application/json', 'utf-8', 2, 4, 'corr-1', 'somewhere'],
  );
  assert.deepEqual(
    [p.expiration, p.messageId, p.timestamp, p.type, p.userId, p.appId],
    ['60000', 'm-1', 1700000000, 'greeting', 'guest', 'node-test'],
  );
  ch.ack(msg);
  await ch.cancel(consumerTag);
  assert.equal((await ch.checkQueue(q.queue)).messageCount, 0);
  await closeConn(conn);
});

test('confirm channel: acks, and a nack for a full reject-publish queue', async () => {
  const conn = await connect();
  const ch = await conn.createConfirmChannel();
  const q = await ch.assertQueue('', {
    exclusive: true,
    arguments: { 'x-max-length': 2, 'x-overflow': 'reject-publish' },
  });
  const outcome = (content) =>
    new Promise((resolve) => ch.sendToQueue(q.queue, Buffer.from(content), {}, (err) => resolve(err)));
  assert.equal(await outcome('one'), null);
  assert.equal(await outcome('two'), null);
  const err = await outcome('three');
  assert.ok(err instanceof Error);
  assert.match(err.message, /nack/i);
  // waitForConfirms rejects when any outstanding publish was nacked.
  ch.sendToQueue(q.queue, Buffer.from('four'));
  await assert.rejects(ch.waitForConfirms());
  assert.equal((await ch.checkQueue(q.queue)).messageCount, 2);
  await ch.purgeQueue(q.queue);
  for (let i = 0; i < 2; i++) ch.sendToQueue(q.queue, Buffer.from(`again ${i}`));
  await ch.waitForConfirms();
  assert.equal((await ch.checkQueue(q.queue)).messageCount, 2);
  await closeConn(conn);
});

test('confirm channel: a mandatory publish nobody can take is returned, then acked', async () => {
  const conn = await connect();
  const ch = await conn.createConfirmChannel();
  const returned = new Promise((resolve) => ch.once('return', resolve));
  const routingKey = name('nobody');
  const acked = new Promise((resolve) =>
    ch.publish('amq.direct', routingKey, Buffer.from('lost'), { mandatory: true }, (err) => resolve(err)),
  );
  const msg = await returned;
  assert.equal(msg.content.toString(), 'lost');
  assert.deepEqual(
    [msg.fields.replyCode, msg.fields.replyText, msg.fields.exchange, msg.fields.routingKey],
    [312, 'NO_ROUTE', 'amq.direct', routingKey],
  );
  assert.equal(await acked, null);
  await closeConn(conn);
});

test('nack with and without requeue: redelivery, then dead-lettering', async () => {
  const conn = await connect();
  const ch = await conn.createChannel();
  const dead = await ch.assertQueue('', { exclusive: true });
  const q = await ch.assertQueue(name('work'), {
    exclusive: true,
    deadLetterExchange: '',
    deadLetterRoutingKey: dead.queue,
  });
  const c = collector(ch);
  await ch.consume(q.queue, c.onMessage);
  ch.sendToQueue(q.queue, Buffer.from('job'), { headers: { attempt: 1 } });
  const [first] = await c.next();
  assert.equal(first.fields.redelivered, false);
  ch.nack(first, false, true);
  const [second] = await c.next();
  assert.deepEqual([second.content.toString(), second.fields.redelivered], ['job', true]);
  ch.reject(second, false);
  let deadMsg = false;
  for (let i = 0; i < 200 && !deadMsg; i++) {
    deadMsg = await ch.get(dead.queue, { noAck: true });
    if (!deadMsg) await new Promise((r) => setTimeout(r, 25));
  }
  assert.ok(deadMsg, 'dead-lettered message');
  assert.equal(deadMsg.content.toString(), 'job');
  const [death] = deadMsg.properties.headers['x-death'];
  assert.deepEqual(
    [death.reason, death.queue, death.count, death.exchange, death['routing-keys']],
    ['rejected', q.queue, 1, '', [q.queue]],
  );
  assert.equal(deadMsg.properties.headers.attempt, 1);
  await closeConn(conn);
});

test('prefetch bounds unacknowledged deliveries; nack allUpTo requeues them', async () => {
  const conn = await connect();
  const ch = await conn.createChannel();
  await ch.prefetch(2);
  const q = await ch.assertQueue('', { exclusive: true });
  for (let i = 0; i < 5; i++) ch.sendToQueue(q.queue, Buffer.from(`task ${i}`));
  const c = collector(ch);
  await ch.consume(q.queue, c.onMessage);
  const firstTwo = await c.next(2);
  assert.deepEqual(firstTwo.map((m) => m.content.toString()), ['task 0', 'task 1']);
  // Two unacknowledged: three are still ready.
  const other = await conn.createChannel();
  assert.deepEqual(await other.checkQueue(q.queue), { queue: q.queue, messageCount: 3, consumerCount: 1 });
  ch.ack(firstTwo[1], true);
  const nextTwo = await c.next(2);
  assert.deepEqual(nextTwo.map((m) => m.content.toString()), ['task 2', 'task 3']);
  ch.nack(nextTwo[1], true, true);
  const again = await c.next(2);
  assert.deepEqual(
    again.map((m) => [m.content.toString(), m.fields.redelivered]),
    [['task 2', true], ['task 3', true]],
  );
  ch.ackAll();
  const [last] = await c.next();
  assert.equal(last.content.toString(), 'task 4');
  ch.ack(last);
  await closeConn(conn);
});

test('get: a message with the remaining count, then false on an empty queue', async () => {
  const conn = await connect();
  const ch = await conn.createConfirmChannel();
  const q = await ch.assertQueue('', { exclusive: true });
  ch.sendToQueue(q.queue, Buffer.from('a'));
  ch.sendToQueue(q.queue, Buffer.from('b'));
  await ch.waitForConfirms();
  const a = await ch.get(q.queue);
  assert.deepEqual([a.content.toString(), a.fields.messageCount, a.fields.redelivered], ['a', 1, false]);
  ch.ack(a);
  const b = await ch.get(q.queue, { noAck: true });
  assert.deepEqual([b.content.toString(), b.fields.messageCount], ['b', 0]);
  assert.equal(await ch.get(q.queue), false);
  await closeConn(conn);
});

test('RPC with direct reply-to (amq.rabbitmq.reply-to)', async () => {
  const serverConn = await connect();
  const server = await serverConn.createChannel();
  const rpcQueue = name('rpc');
  await server.assertQueue(rpcQueue, { exclusive: true });
  const seenReplyTo = [];
  await server.consume(
    rpcQueue,
    (msg) => {
      seenReplyTo.push(msg.properties.replyTo);
      const n = Number(msg.content.toString());
      server.sendToQueue(msg.properties.replyTo, Buffer.from(String(n * n)), {
        correlationId: msg.properties.correlationId,
      });
    },
    { noAck: true },
  );

  const clientConn = await connect();
  const client = await clientConn.createChannel();
  const c = collector(client);
  await client.consume('amq.rabbitmq.reply-to', c.onMessage, { noAck: true });
  for (const n of [3, 12]) {
    client.sendToQueue(rpcQueue, Buffer.from(String(n)), {
      replyTo: 'amq.rabbitmq.reply-to',
      correlationId: `call-${n}`,
    });
  }
  const replies = await c.next(2);
  assert.deepEqual(
    replies.map((m) => [m.properties.correlationId, m.content.toString()]),
    [['call-3', '9'], ['call-12', '144']],
  );
  assert.deepEqual(
    replies.map((m) => m.fields.routingKey),
    seenReplyTo,
  );
  for (const r of seenReplyTo) assert.match(r, /^amq\.rabbitmq\.reply-to\./);

  // Without a consumer on amq.rabbitmq.reply-to the publish closes the channel.
  const other = await clientConn.createChannel();
  const failed = channelError(other);
  other.sendToQueue(rpcQueue, Buffer.from('1'), { replyTo: 'amq.rabbitmq.reply-to' });
  const err = await failed;
  assert.equal(err.code, 406);
  assert.match(err.message, /PRECONDITION_FAILED - fast reply consumer does not exist/);
  await closeConn(clientConn);
  await closeConn(serverConn);
});

test('direct reply-to: the RPC server can check that its caller is still there', async () => {
  const serverConn = await connect();
  const server = await serverConn.createChannel();
  const rpcQueue = name('rpc-check');
  await server.assertQueue(rpcQueue, { exclusive: true });
  server.on('error', () => {});
  let reportCheck;
  const checked = new Promise((resolve) => {
    reportCheck = resolve;
  });
  await server.consume(
    rpcQueue,
    async (msg) => {
      try {
        // checkQueue is a passive queue.declare of the reply-to name.
        const ok = await server.checkQueue(msg.properties.replyTo);
        server.sendToQueue(msg.properties.replyTo, Buffer.from('pong'));
        reportCheck({ ok, replyTo: msg.properties.replyTo });
      } catch (err) {
        reportCheck({ err });
      }
    },
    { noAck: true },
  );
  const clientConn = await connect();
  const client = await clientConn.createChannel();
  const c = collector(client);
  await client.consume('amq.rabbitmq.reply-to', c.onMessage, { noAck: true });
  client.sendToQueue(rpcQueue, Buffer.from('ping'), { replyTo: 'amq.rabbitmq.reply-to' });
  const { ok, replyTo, err } = await checked;
  if (err) throw err;
  assert.deepEqual(ok, { queue: replyTo, messageCount: 0, consumerCount: 1 });
  const [reply] = await c.next();
  assert.deepEqual([reply.content.toString(), reply.fields.routingKey], ['pong', replyTo]);
  await closeConn(clientConn);
  await closeConn(serverConn);
});

test('small negotiated frames: a big message is split and joined in 4 KiB frames', async () => {
  // maxFrameSize makes amqplib refuse any frame from the server above the negotiated size.
  const small = await amqp.connect(`${broker.url}?frameMax=4096&maxFrameSize=4096`);
  open.push(small);
  assert.equal(small.connection.frameMax, 4096);
  const ch = await small.createConfirmChannel();
  const q = await ch.assertQueue('', { exclusive: true });
  const body = Buffer.alloc(100000);
  for (let i = 0; i < body.length; i++) body[i] = i % 251;
  ch.sendToQueue(q.queue, body, { headers: { big: 'x'.repeat(3000) } });
  await ch.waitForConfirms();
  const c = collector(ch);
  await ch.consume(q.queue, c.onMessage, { noAck: true });
  const [msg] = await c.next();
  assert.ok(msg.content.equals(body));
  assert.equal(msg.properties.headers.big.length, 3000);
  await closeConn(small);
});

test('heartbeats keep an idle connection open', async () => {
  const conn = await amqp.connect(`${broker.url}?heartbeat=1`);
  open.push(conn);
  assert.equal(conn.connection.heartbeat, 1);
  let closed = null;
  conn.on('close', (err) => {
    closed = err || 'closed';
  });
  conn.on('error', () => {});
  // amqplib closes the connection when it hears nothing from the server for two intervals.
  await new Promise((resolve) => setTimeout(resolve, 3500));
  assert.equal(closed, null);
  const ch = await conn.createChannel();
  assert.match((await ch.assertQueue('', { exclusive: true })).queue, /^amq\.gen-/);
  await closeConn(conn);
});

test('channel errors: codes, texts and the method that failed', async () => {
  const conn = await connect();
  const connErrors = [];
  conn.on('error', (err) => connErrors.push(err));

  let ch = await conn.createChannel();
  let emitted = channelError(ch);
  const missing = name('missing');
  await assert.rejects(ch.checkQueue(missing), (err) => {
    assert.equal(err.code, 404);
    assert.match(err.message, new RegExp(`NOT_FOUND - no queue '${missing}' in vhost '/'`));
    assert.deepEqual([err.classId, err.methodId], [50, 10]); // queue.declare
    return true;
  });
  assert.equal((await emitted).code, 404);

  // An asynchronous failure (nothing awaited): the 'error' event carries it.
  ch = await conn.createChannel();
  emitted = channelError(ch);
  const nowhere = name('no-exchange');
  ch.publish(nowhere, 'k', Buffer.from('x'));
  let err = await emitted;
  assert.equal(err.code, 404);
  assert.match(err.message, new RegExp(`NOT_FOUND - no exchange '${nowhere}' in vhost '/'`));
  assert.deepEqual([err.classId, err.methodId], [60, 40]); // basic.publish

  ch = await conn.createChannel();
  emitted = channelError(ch);
  const q = await ch.assertQueue('', { exclusive: true });
  ch.sendToQueue(q.queue, Buffer.from('x'));
  const msg = await ch.get(q.queue);
  ch.ack(msg);
  ch.ack(msg); // twice: the second names a tag that is no longer outstanding
  err = await emitted;
  assert.equal(err.code, 406);
  assert.match(err.message, /PRECONDITION_FAILED - unknown delivery tag 1/);

  ch = await conn.createChannel();
  const x = name('typed');
  await ch.assertExchange(x, 'topic', { autoDelete: true });
  emitted = channelError(ch);
  await assert.rejects(ch.assertExchange(x, 'fanout', { autoDelete: true }), (e) => {
    assert.equal(e.code, 406);
    assert.match(e.message, /PRECONDITION_FAILED - inequivalent arg 'type' for exchange/);
    return true;
  });
  await emitted;

  // The connection lived through all of it.
  assert.deepEqual(connErrors, []);
  ch = await conn.createChannel();
  assert.match((await ch.assertQueue('', { exclusive: true })).queue, /^amq\.gen-/);
  await closeConn(conn);
});

test('deleting a consumed queue cancels the consumer (the callback gets null)', async () => {
  const conn = await connect();
  const ch = await conn.createChannel();
  const q = await ch.assertQueue(name('doomed'));
  const cancelled = new Promise((resolve) => ch.consume(q.queue, (msg) => msg === null && resolve(true)));
  const other = await conn.createChannel();
  assert.deepEqual(await other.deleteQueue(q.queue), { messageCount: 0 });
  assert.equal(await cancelled, true);
  await closeConn(conn);
});

test('exchange-to-exchange bindings route through, and unbinding stops them', async () => {
  const conn = await connect();
  const ch = await conn.createConfirmChannel();
  const front = name('front');
  const audit = name('audit');
  await ch.assertExchange(front, 'topic', { autoDelete: true });
  await ch.assertExchange(audit, 'fanout', { autoDelete: true });
  await ch.bindExchange(audit, front, 'orders.#');
  const direct = await ch.assertQueue('', { exclusive: true });
  const copies = await ch.assertQueue('', { exclusive: true });
  await ch.bindQueue(direct.queue, front, 'orders.eu.*');
  await ch.bindQueue(copies.queue, audit, '');
  for (const key of ['orders.eu.new', 'orders.us.new', 'invoices.eu.new']) {
    ch.publish(front, key, Buffer.from(key));
  }
  await ch.waitForConfirms();
  const drain = async (queue) => {
    const out = [];
    for (let m = await ch.get(queue, { noAck: true }); m; m = await ch.get(queue, { noAck: true })) {
      out.push(m.content.toString());
    }
    return out;
  };
  assert.deepEqual(await drain(direct.queue), ['orders.eu.new']);
  assert.deepEqual(await drain(copies.queue), ['orders.eu.new', 'orders.us.new']);
  await ch.unbindExchange(audit, front, 'orders.#');
  ch.publish(front, 'orders.eu.late', Buffer.from('late'));
  await ch.waitForConfirms();
  assert.deepEqual(await drain(direct.queue), ['late']);
  assert.deepEqual(await drain(copies.queue), []);
  await closeConn(conn);
});

test('opt-in recovery reconnects after the broker restarts and runs setup again', async (t) => {
  if (!broker.canRestart) {
    t.skip('set RABBITMQCTL to restart the external broker');
    return;
  }
  const durable = name('durable');
  let setups = 0;
  const conn = await connect({
    recovery: {
      initialDelay: 100,
      maxDelay: 500,
      maxRetries: 100,
      async setup(model) {
        const ch = await model.createChannel();
        await ch.assertQueue(durable, { durable: true });
        await ch.close();
        setups += 1;
      },
    },
  });
  assert.equal(setups, 1);
  let ch = await conn.createConfirmChannel();
  ch.sendToQueue(durable, Buffer.from('kept'), { persistent: true });
  await ch.waitForConfirms();
  const reconnected = new Promise((resolve) => conn.once('connect', resolve));
  conn.on('error', () => {});
  await broker.restart();
  await reconnected;
  assert.equal(setups, 2);
  ch = await conn.createChannel();
  const msg = await ch.get(durable, { noAck: true });
  assert.equal(msg.content.toString(), 'kept');
  await ch.deleteQueue(durable);
  await closeConn(conn);
});
