// Overview: totals, live charts of message rates and queue depths (from the API's sample
// histories, `msg_rates_age` / `lengths_age`), the node's resources and alarms, listeners.

import { get } from '../api.js';
import { h, fill, num, rate, bytes, duration, card, tiles, badge } from '../dom.js';
import { lineChart, samplesToRates, samplesToValues } from '../chart.js';
import { staticTable } from '../table.js';

const RATES = [
  { key: 'publish', label: 'Publish' },
  { key: 'confirm', label: 'Confirm' },
  { key: 'deliver_get', label: 'Deliver/get' },
  { key: 'ack', label: 'Ack' },
  { key: 'redeliver', label: 'Redeliver' },
  { key: 'drop_unroutable', label: 'Unroutable (dropped)' },
  { key: 'return_unroutable', label: 'Unroutable (returned)' },
];
const DEPTHS = [
  { key: 'messages_ready', label: 'Ready' },
  { key: 'messages_unacknowledged', label: 'Unacked' },
  { key: 'messages', label: 'Total' },
];

export function overviewPage(params, ctx) {
  const head = h('div', { class: 'page-head' }, h('h1', {}, 'Overview'));
  const totals = h('div');
  const depth = lineChart('overview-depth', 'Queued messages', DEPTHS);
  const rates = lineChart('overview-rates', 'Message rates', RATES, '/s');
  const node = h('div');
  const listeners = h('div');
  const el = h('div', { class: 'page' }, head, totals,
    h('div', { class: 'charts' }, card(null, depth.el), card(null, rates.el)),
    h('div', { class: 'cols' }, card('Node', node), card('Listeners', listeners)));
  ctx.onLeave(() => { depth.destroy(); rates.destroy(); });

  async function refresh() {
    const o = await get('/overview?lengths_age=600&lengths_incr=5&msg_rates_age=600&msg_rates_incr=5');
    const q = o.queue_totals || {};
    const ot = o.object_totals || {};
    const ms = o.message_stats || {};
    fill(head, h('h1', {}, 'Overview'),
      h('span', { class: 'muted' }, `${o.product_name} ${o.product_version} · ${o.node}`));
    fill(totals, tiles([
      ['Ready', num(q.messages_ready), 'messages_ready'],
      ['Unacked', num(q.messages_unacknowledged), 'messages_unacknowledged'],
      ['Publish', rate(ms.publish_details), 'publish_rate'],
      ['Deliver', rate(ms.deliver_get_details), 'deliver_rate'],
      [h('a', { href: '#/connections' }, 'Connections'), num(ot.connections), 'connections'],
      [h('a', { href: '#/channels' }, 'Channels'), num(ot.channels), 'channels'],
      [h('a', { href: '#/queues' }, 'Queues'), num(ot.queues), 'queues'],
      [h('a', { href: '#/consumers' }, 'Consumers'), num(ot.consumers), 'consumers'],
      [h('a', { href: '#/exchanges' }, 'Exchanges'), num(ot.exchanges), 'exchanges'],
    ]));

    // Depths: the sampled history plus the live totals as the newest point.
    const d = samplesToValues((q.messages_ready_details || {}).samples);
    const du = samplesToValues((q.messages_unacknowledged_details || {}).samples);
    const dt = samplesToValues((q.messages_details || {}).samples);
    const now = Date.now();
    depth.set([...d.times, now], {
      messages_ready: [...d.values, q.messages_ready],
      messages_unacknowledged: [...du.values, q.messages_unacknowledged],
      messages: [...dt.values, q.messages],
    });

    const series = {};
    let times = [];
    for (const r of RATES) {
      const s = samplesToRates((ms[`${r.key}_details`] || {}).samples);
      if (s.times.length > times.length) times = s.times;
      series[r.key] = s.rates;
    }
    for (const r of RATES) {
      const v = series[r.key];
      series[r.key] = times.map((_, i) => v[i - (times.length - v.length)] ?? 0);
    }
    rates.set(times, series);

    fill(listeners, staticTable([
      { label: 'Protocol', key: 'protocol' },
      { label: 'Address', key: 'ip_address' },
      { label: 'Port', key: 'port', num: true },
    ], o.listeners || []));
  }

  async function refreshNode() {
    let n;
    try {
      [n] = await get('/nodes');
    } catch (e) {
      fill(node, h('p', { class: 'muted' }, e.status === 401 ? 'Node details need the monitoring tag.' : e.message));
      return;
    }
    const alarm = (on, what) => (on ? badge(`${what} alarm`, 'bad') : badge(`${what} OK`, 'good'));
    fill(node, h('table', { class: 'kv' }, h('tbody', {},
      h('tr', {}, h('th', {}, 'Name'), h('td', {}, n.name)),
      h('tr', {}, h('th', {}, 'Uptime'), h('td', {}, duration(n.uptime))),
      h('tr', {}, h('th', {}, 'Memory used'), h('td', {}, bytes(n.mem_used))),
      h('tr', {}, h('th', {}, 'File descriptors'), h('td', {}, num(n.fd_used))),
      h('tr', {}, h('th', {}, 'Sockets'), h('td', {}, num(n.sockets_used))),
      h('tr', {}, h('th', {}, 'Processors'), h('td', {}, num(n.processors))),
      h('tr', {}, h('th', {}, 'Alarms'), h('td', { id: 'node-alarms' }, alarm(n.mem_alarm, 'Memory'), ' ', alarm(n.disk_free_alarm, 'Disk'))))));
  }

  ctx.every(5000, () => { refresh().catch(() => {}); refreshNode(); });
  return el;
}
