// "Where is my message": a live trace. Starting one turns the vhost's firehose on and
// binds a queue to amq.rabbitmq.trace with the pattern (PUT /api/traces/{vhost}/{name});
// the page reads the copies as they come (?since=) and shows, per message, where it was
// published, which queues it was routed to and where it was delivered (dead letters show
// their x-death). The filter matches routing keys, message ids, exchanges, queues and
// header values in the browser.

import * as api from '../api.js';
import { h, fill, badge, card, act, field } from '../dom.js';
import { staticTable } from '../table.js';

const TRACE = 'console';
const SHOWN = 500;

function matches(e, needle) {
  if (!needle) return true;
  const hd = e.headers || {};
  const props = hd.properties || {};
  const hay = [
    e.routing_key, hd.exchange_name, props.message_id, props.correlation_id,
    ...(hd.routing_keys || []), ...(hd.routed_queues || []),
    JSON.stringify(props.headers || {}),
  ];
  return hay.some(v => v !== undefined && String(v).includes(needle));
}

function where(e) {
  const hd = e.headers || {};
  if (e.kind === 'publish') {
    const queues = hd.routed_queues || [];
    return [`exchange "${hd.exchange_name ?? ''}" → `,
      queues.length ? queues.map(q => badge(q, 'info')) : badge('unroutable', 'warn')];
  }
  const queue = e.routing_key.slice('deliver.'.length);
  const death = ((hd.properties || {}).headers || {})['x-death'];
  return [`from queue `, badge(queue, 'info'),
    hd.redelivered ? badge('redelivered', 'warn') : null,
    Array.isArray(death) && death.length
      ? badge(`dead-lettered from ${death[0].queue} (${death[0].reason})`, 'warn') : null];
}

export function tracePage(params, ctx) {
  const vhost = h('select', { name: 'vhost' });
  const pattern = h('input', { name: 'pattern', value: '#', size: 24 });
  const filter = h('input', { name: 'filter', placeholder: 'routing key, message id, header…', size: 32 });
  const status = h('p', { class: 'muted' }, 'Not tracing.');
  const table = h('div');
  let running = null;
  let since = 0;
  let events = [];

  api.get('/vhosts').then(vs => {
    fill(vhost, vs.map(v => h('option', { value: v.name }, v.name)));
    if (ctx.vhost()) vhost.value = ctx.vhost();
  }).catch(() => {});

  const render = () => {
    const needle = filter.value.trim();
    const shown = events.filter(e => matches(e, needle)).slice(-SHOWN).reverse();
    fill(table, staticTable([
      { label: 'Time', render: e => new Date(e.timestamp).toLocaleTimeString() },
      { label: 'Event', render: e => badge(e.kind, e.kind === 'publish' ? 'good' : 'info') },
      { label: 'Where', render: where },
      { label: 'Routing keys', render: e => (e.headers.routing_keys || []).join(', ') },
      { label: 'Message id', render: e => (e.headers.properties || {}).message_id ?? '–' },
      { label: 'By', render: e => `${e.headers.user ?? ''} · ${e.headers.connection ?? ''} (${e.headers.channel ?? ''})` },
      { label: 'Payload', render: e => h('code', {}, e.payload_encoding === 'base64' ? `base64 ${e.payload}` : e.payload,
        e.payload_bytes > String(e.payload).length ? ` … (${e.payload_bytes} bytes)` : '') },
    ], shown, running ? 'Nothing traced yet: publish or consume in this vhost.' : 'Start a trace.'));
    fill(status, running
      ? `Tracing vhost "${running}" (pattern ${pattern.value}): ${events.length} events, ${shown.length} shown.`
      : 'Not tracing.');
  };

  const poll = async () => {
    if (!running) return;
    try {
      const out = await api.get(`/traces/${api.seg(running)}/${TRACE}${api.query({ since })}`);
      since = out.next;
      events = events.concat(out.items).slice(-5000);
      render();
    } catch (e) {
      if (e.status === 404) { running = null; render(); } else fill(status, h('span', { class: 'error' }, e.message));
    }
  };

  const stop = async () => {
    if (!running) return;
    const v = running;
    running = null;
    await api.del(`/traces/${api.seg(v)}/${TRACE}`).catch(() => {});
  };

  const startButton = h('button', { type: 'submit', id: 'trace-start' }, 'Start tracing');
  const stopButton = h('button', {
    type: 'button', class: 'danger', id: 'trace-stop',
    onclick: () => act(stopButton, stop, 'Trace stopped').then(render),
  }, 'Stop');
  const form = h('form', {
    class: 'inline-form',
    onsubmit: (e) => {
      e.preventDefault();
      act(startButton, async () => {
        await stop();
        const v = vhost.value || '/';
        await api.put(`/traces/${api.seg(v)}/${TRACE}`, { pattern: pattern.value || '#', max_payload_bytes: 200 });
        running = v;
        since = 0;
        events = [];
        render();
      }, 'Tracing started');
    },
  }, field('Virtual host', vhost), field('Pattern (publish.<exchange>, deliver.<queue>, #)', pattern),
  startButton, stopButton);
  filter.addEventListener('input', render);

  ctx.every(1000, poll);
  // Leaving the page ends the trace and turns the firehose back off.
  ctx.onLeave(() => { stop(); });
  window.addEventListener('beforeunload', () => { stop(); }, { once: true });
  render();
  return h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('h1', {}, 'Trace')),
    card('Where is my message', h('p', { class: 'muted' },
      'Copies of every publish and delivery in the vhost (RabbitMQ\'s firehose) while this page traces. Tracing costs a copy per message: stop it when done.'),
    form, field('Filter', filter), status),
    table);
}
