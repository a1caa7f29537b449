// One queue: depth and rate charts, consumers, bindings, arguments, the policy in effect,
// and actions: peek/get messages, publish, move to another queue, purge, delete.

import * as api from '../api.js';
import { h, fill, num, rate, bytes, link, badge, card, act, field, kvTable, tiles, toast } from '../dom.js';
import { lineChart, ring } from '../chart.js';
import { staticTable } from '../table.js';
import { publishForm, bindingsTable } from './exchange.js';

/** Message bodies as text, pretty JSON or a hex dump. */
function bodyView(m) {
  const raw = m.payload_encoding === 'base64'
    ? Uint8Array.from(atob(m.payload), c => c.charCodeAt(0))
    : new TextEncoder().encode(m.payload);
  const text = new TextDecoder('utf-8', { fatal: false }).decode(raw);
  let json = null;
  try { json = JSON.stringify(JSON.parse(text), null, 2); } catch { json = null; }
  const hex = () => {
    const lines = [];
    for (let i = 0; i < raw.length; i += 16) {
      const row = raw.slice(i, i + 16);
      const hx = Array.from(row, b => b.toString(16).padStart(2, '0')).join(' ');
      const asc = Array.from(row, b => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
      lines.push(`${i.toString(16).padStart(8, '0')}  ${hx.padEnd(47)}  ${asc}`);
    }
    return lines.join('\n');
  };
  const pre = h('pre', { class: 'body' });
  const modes = { text: () => text, json: () => json, hex };
  const buttons = {};
  const show = (mode) => {
    pre.textContent = modes[mode]();
    pre.dataset.view = mode;
    for (const [k, b] of Object.entries(buttons)) b.classList.toggle('on', k === mode);
  };
  for (const mode of ['text', 'json', 'hex']) {
    buttons[mode] = h('button', {
      type: 'button', class: 'small seg', disabled: mode === 'json' && json === null ? true : undefined,
      title: mode === 'json' && json === null ? 'The body is not JSON' : undefined,
      onclick: () => show(mode),
    }, mode === 'json' ? 'JSON' : mode === 'hex' ? 'Hex' : 'Text');
  }
  show(json !== null ? 'json' : m.payload_encoding === 'base64' ? 'hex' : 'text');
  return h('div', {}, h('div', { class: 'segmented' }, Object.values(buttons)), pre);
}

function messageCard(m, i) {
  const props = { ...(m.properties || {}) };
  const headers = props.headers;
  delete props.headers;
  return h('article', { class: 'message', dataset: { message: i } },
    h('header', {}, h('b', {}, `Message ${i + 1}`),
      m.redelivered ? badge('redelivered', 'warn') : null,
      h('span', { class: 'muted' }, ` exchange “${m.exchange || '(AMQP default)'}”, routing key “${m.routing_key}”, ${bytes(m.payload_bytes)}`)),
    h('div', { class: 'cols' },
      h('div', {}, h('h3', {}, 'Properties'), kvTable(props, 'No properties')),
      h('div', {}, h('h3', {}, 'Headers'), kvTable(headers, 'No headers'))),
    h('h3', {}, 'Body'), bodyView(m));
}

export function queuePage([vhost, name], ctx) {
  const base = `/queues/${api.seg(vhost)}/${api.seg(name)}`;
  const head = h('div', { class: 'page-head' });
  const stats = h('div');
  const depth = lineChart('queue-depth', 'Queued messages', [
    { key: 'messages_ready', label: 'Ready' }, { key: 'messages_unacknowledged', label: 'Unacked' }]);
  const rates = lineChart('queue-rates', 'Message rates', [
    { key: 'publish', label: 'Publish' }, { key: 'deliver_get', label: 'Deliver/get' },
    { key: 'ack', label: 'Ack' }, { key: 'redeliver', label: 'Redeliver' }], '/s');
  const history = ring(120);
  ctx.onLeave(() => { depth.destroy(); rates.destroy(); });
  const details = h('div');
  const consumers = h('div');
  const bindings = h('div');

  // Get messages.
  const count = h('input', { type: 'number', min: 1, max: 10000, value: 1, name: 'count' });
  const mode = h('select', { name: 'ackmode' },
    h('option', { value: 'ack_requeue_true' }, 'Peek: leave them in the queue'),
    h('option', { value: 'ack_requeue_false' }, 'Get and acknowledge (removes them)'),
    h('option', { value: 'reject_requeue_false' }, 'Reject (dead-letter or drop)'));
  const truncate = h('input', { type: 'number', min: 0, value: 50000, name: 'truncate' });
  const got = h('div', { class: 'messages', id: 'messages' });
  const getForm = h('form', {
    class: 'inline-form',
    onsubmit: (e) => {
      e.preventDefault();
      if (mode.value !== 'ack_requeue_true' && !window.confirm(`Take up to ${count.value} message(s) out of ${name}?`)) return;
      act(e.submitter, async () => {
        const ms = await api.post(`${base}/get`, {
          count: Number(count.value) || 1, ackmode: mode.value, encoding: 'auto', truncate: Number(truncate.value) || undefined,
        });
        fill(got, ms.length ? ms.map(messageCard) : h('p', { class: 'muted empty-queue' }, 'The queue is empty.'));
        refresh();
      });
    },
  }, field('Messages', count), field('Mode', mode), field('Truncate bodies at (bytes)', truncate),
  h('button', { type: 'submit', class: 'primary', id: 'get-messages' }, 'Get messages'));

  // Move.
  const dest = h('input', { name: 'destination', required: true, list: 'queue-names', autocomplete: 'off' });
  const names = h('datalist', { id: 'queue-names' });
  dest.addEventListener('input', async () => {
    try {
      const r = await api.get(`/queues/${api.seg(vhost)}${api.query({ page: 1, page_size: 20, name: dest.value, columns: 'name' })}`);
      fill(names, r.items.filter(q => q.name !== name).map(q => h('option', { value: q.name })));
    } catch { /* suggestions only */ }
  });
  const moveCount = h('input', { type: 'number', min: 1, name: 'move-count', placeholder: 'all ready' });
  const moveForm = h('form', {
    class: 'inline-form',
    onsubmit: (e) => {
      e.preventDefault();
      const body = { destination: dest.value };
      if (moveCount.value) body.count = Number(moveCount.value);
      act(e.submitter, () => api.post(`${base}/move`, body),
        r => `Moved ${num(r.moved)} message(s) to ${dest.value}${r.complete ? '' : ' (stopped early: the destination refused more)'}`).then(refresh);
    },
  }, field('Destination queue', dest), names, field('How many', moveCount, 'Default: every ready message (at most 100,000)'),
  h('button', { type: 'submit', class: 'primary', id: 'move-messages' }, 'Move messages'));

  const purge = h('button', {
    class: 'danger', id: 'purge',
    onclick: () => {
      if (!window.confirm(`Purge every ready message from ${name}?`)) return;
      act(purge, () => api.del(`${base}/contents`), `Queue ${name} purged`).then(refresh);
    },
  }, 'Purge messages');
  const remove = h('button', {
    class: 'danger', id: 'delete-queue',
    onclick: () => {
      if (!window.confirm(`Delete queue ${name} and its messages?`)) return;
      act(remove, () => api.del(base), `Queue ${name} deleted`).then(() => { location.hash = '#/queues'; });
    },
  }, 'Delete queue');

  const missing = h('div');
  async function refresh() {
    let q;
    try { q = await api.get(base); } catch (e) {
      fill(missing, h('p', { class: 'error' }, e.status === 404 ? `Queue ${name} does not exist in vhost ${vhost}.` : e.message));
      return;
    }
    fill(missing);
    const ms = q.message_stats || {};
    fill(head, h('h1', {}, name), h('span', { class: 'muted' }, 'in vhost ', badge(vhost)),
      h('span', { class: 'badges' }, badge(q.type || 'classic'), q.durable ? badge('durable', 'info') : badge('transient'),
        q.auto_delete ? badge('auto-delete') : null, q.exclusive ? badge('exclusive') : null,
        q.policy ? h('a', { href: '#/policies' }, badge(`policy ${q.policy}`, 'policy')) : null));
    fill(stats, tiles([
      ['Ready', num(q.messages_ready), 'messages_ready'],
      ['Unacked', num(q.messages_unacknowledged), 'messages_unacknowledged'],
      ['Total', num(q.messages), 'messages'],
      ['Consumers', num(q.consumers), 'consumers'],
      ['Bytes ready', bytes(q.message_bytes_ready), 'message_bytes_ready'],
      ['Publish', rate(ms.publish_details), 'publish_rate'],
      ['Deliver/get', rate(ms.deliver_get_details), 'deliver_rate'],
    ]));
    history.push(Date.now(), {
      messages_ready: q.messages_ready, messages_unacknowledged: q.messages_unacknowledged,
      publish: (ms.publish_details || {}).rate || 0, deliver_get: (ms.deliver_get_details || {}).rate || 0,
      ack: (ms.ack_details || {}).rate || 0, redeliver: (ms.redeliver_details || {}).rate || 0,
    });
    depth.set(history.times, history.values);
    rates.set(history.times, history.values);
    fill(details, h('div', { class: 'cols' },
      h('div', {}, h('h3', {}, 'Arguments'), kvTable(q.arguments, 'No arguments')),
      h('div', {}, h('h3', {}, 'Policy in effect'),
        q.policy ? [h('p', {}, h('a', { href: '#/policies' }, q.policy)), kvTable(q.effective_policy_definition)] : h('p', { class: 'muted' }, 'No policy applies.'),
        q.operator_policy ? h('p', {}, `Operator policy: ${q.operator_policy}`) : null)));
    fill(consumers, staticTable([
      { label: 'Consumer tag', key: 'consumer_tag' },
      { label: 'Channel', render: c => (c.channel_details && c.channel_details.connection_name ? h('a', { href: link.connection(c.channel_details.connection_name) }, c.channel_details.name) : '–') },
      { label: 'User', render: c => (c.channel_details && c.channel_details.user) || '–' },
      { label: 'Ack', render: c => (c.ack_required ? 'manual' : 'auto') },
      { label: 'Prefetch', key: 'prefetch_count', num: true },
    ], q.consumer_details || [], 'No consumers.'));
  }

  async function refreshBindings() {
    const bs = await api.get(`${base}/bindings`);
    fill(bindings, bindingsTable(vhost, bs, 'queue', () => refreshBindings()), bindForm());
  }

  function bindForm() {
    const source = h('input', { name: 'source', required: true, placeholder: 'exchange' });
    const key = h('input', { name: 'routing_key', placeholder: 'routing key' });
    return h('form', {
      class: 'inline-form',
      onsubmit: (e) => {
        e.preventDefault();
        act(e.submitter, () => api.post(`/bindings/${api.seg(vhost)}/e/${api.seg(source.value)}/q/${api.seg(name)}`,
          { routing_key: key.value, arguments: {} }), 'Binding added').then(refreshBindings);
      },
    }, field('From exchange', source), field('Routing key', key), h('button', { type: 'submit' }, 'Bind'));
  }

  ctx.every(3000, () => { refresh(); });
  refreshBindings().catch(e => toast(e.message, 'error'));

  return h('div', { class: 'page', dataset: { queue: name } }, head, missing, stats,
    h('div', { class: 'charts' }, card(null, depth.el), card(null, rates.el)),
    card('Get messages', getForm, got),
    card('Publish a message', h('p', { class: 'muted' }, `Published through the default exchange with routing key “${name}”.`),
      publishForm(vhost, '', name, true, refresh)),
    card('Move messages to another queue', h('p', { class: 'muted' },
      'Each message is published to the destination (and saved, if persistent) before it is acknowledged here: a crash can leave a duplicate, never a loss. Order is kept.'), moveForm),
    card('Consumers', consumers),
    card('Bindings', bindings),
    card('Details', details),
    card('Danger zone', h('div', { class: 'actions' }, purge, remove)));
}
