// The object lists: connections, channels, exchanges, queues, consumers. All of them page,
// sort and filter on the server (see table.js); the vhost picker narrows them to one vhost.

import * as api from '../api.js';
import { h, fill, num, rate, bytes, link, badge, card, act, field, kvTable, toast } from '../dom.js';
import { pagedTable, staticTable } from '../table.js';

const inVhost = (ctx, all, one) => () => (ctx.vhost() ? one(api.seg(ctx.vhost())) : all);

function listPage(ctx, title, table, ...extra) {
  ctx.every(5000, () => table.refresh());
  return h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('h1', {}, title), ctx.vhost() ? badge(`vhost ${ctx.vhost()}`) : null),
    ...extra, card(null, table.el));
}

function stateBadge(state) {
  if (state === 'blocked') return badge('blocked', 'bad');
  if (state === 'blocking') return badge('blocking', 'warn');
  return badge(state || 'running', state === 'running' ? 'good' : '');
}

/** Why publishers are blocked, for the connections list (null when nothing blocks). */
async function alarmReason() {
  try { await api.get('/health/checks/alarms'); return null; } catch (e) {
    if (e.status === 503 && e.body && e.body.alarms) return e.body.alarms.map(a => a.resource).join(', ');
    return null;
  }
}

export function connectionsPage(params, ctx) {
  const note = h('div');
  const t = pagedTable({
    id: 'connections',
    path: inVhost(ctx, '/connections', v => `/vhosts/${v}/connections`),
    fields: 'name,user,vhost,peer_host,peer_port,protocol,ssl,channels,state,client_properties.product,user_provided_name,recv_oct_details,send_oct_details',
    columns: [
      { label: 'Name', sort: 'name', render: c => h('a', { href: link.connection(c.name) }, c.user_provided_name ? `${c.user_provided_name} (${c.name})` : c.name) },
      { label: 'User', sort: 'user', render: c => h('a', { href: '#/users' }, c.user) },
      { label: 'Vhost', sort: 'vhost' },
      { label: 'Client', sort: 'client_properties.product', render: c => (c.client_properties && c.client_properties.product) || '–' },
      { label: 'Protocol', sort: 'protocol', render: c => [c.protocol, c.ssl ? ' 🔒' : ''] },
      { label: 'State', sort: 'state', render: c => stateBadge(c.state) },
      { label: 'Channels', sort: 'channels', num: true, render: c => num(c.channels) },
      { label: 'From client', sort: 'recv_oct_details.rate', num: true, render: c => `${bytes(Math.round((c.recv_oct_details || {}).rate || 0))}/s` },
      { label: 'To client', sort: 'send_oct_details.rate', num: true, render: c => `${bytes(Math.round((c.send_oct_details || {}).rate || 0))}/s` },
    ],
  });
  ctx.every(5000, async () => {
    const r = await alarmReason();
    fill(note, r ? h('p', { class: 'alarm-note' }, `Publishing connections are blocked by a ${r} alarm: `,
      '“blocking” ones have not published since it went off, “blocked” ones have and are held.') : null);
  });
  return listPage(ctx, 'Connections', t, note);
}

export function connectionPage([name], ctx) {
  const body = h('div');
  const chans = pagedTable({
    id: 'connection-channels',
    path: () => `/connections/${api.seg(name)}/channels`,
    fields: 'name,number,consumer_count,messages_unacknowledged,prefetch_count,confirm,transactional',
    sort: 'number',
    filter: false,
    columns: [
      { label: 'Channel', sort: 'number', num: true, render: c => num(c.number) },
      { label: 'Consumers', sort: 'consumer_count', num: true, render: c => num(c.consumer_count) },
      { label: 'Unacked', sort: 'messages_unacknowledged', num: true, render: c => num(c.messages_unacknowledged) },
      { label: 'Prefetch', sort: 'prefetch_count', num: true, render: c => num(c.prefetch_count) },
      { label: 'Mode', render: c => [c.confirm ? badge('confirm') : null, c.transactional ? badge('tx') : null] },
    ],
  });
  const close = h('button', {
    class: 'danger',
    onclick: () => {
      if (!window.confirm(`Close connection ${name}?`)) return;
      act(close, () => api.del(`/connections/${api.seg(name)}`), 'Connection closed').then(() => { location.hash = '#/connections'; });
    },
  }, 'Force close');
  ctx.every(5000, async () => {
    let c;
    try { c = await api.get(`/connections/${api.seg(name)}`); } catch (e) {
      fill(body, h('p', { class: 'error' }, e.status === 404 ? 'This connection is closed.' : e.message));
      return;
    }
    fill(body, h('div', { class: 'cols' },
      card('Connection', kvTable({
        user: c.user, vhost: c.vhost, state: c.state, protocol: c.protocol, tls: c.ssl,
        peer: `${c.peer_host}:${c.peer_port}`, 'auth mechanism': c.auth_mechanism,
        heartbeat: `${c.timeout}s`, 'frame max': c.frame_max, 'channel max': c.channel_max,
        'received': bytes(c.recv_oct), 'sent': bytes(c.send_oct),
      })),
      card('Client properties', kvTable(c.client_properties))));
    chans.refresh();
  });
  return h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('h1', {}, name), h('span', { class: 'grow' }), close),
    body, card('Channels', chans.el));
}

export function channelsPage(params, ctx) {
  return listPage(ctx, 'Channels', pagedTable({
    id: 'channels',
    path: inVhost(ctx, '/channels', v => `/vhosts/${v}/channels`),
    fields: 'name,user,vhost,connection_details.name,consumer_count,messages_unacknowledged,prefetch_count,confirm,transactional,message_stats.publish_details,message_stats.deliver_get_details,message_stats.ack_details',
    columns: [
      { label: 'Channel', sort: 'name', render: c => h('a', { href: link.connection(c.connection_details.name) }, c.name) },
      { label: 'User', sort: 'user' },
      { label: 'Vhost', sort: 'vhost' },
      { label: 'Mode', render: c => [c.confirm ? badge('confirm') : null, c.transactional ? badge('tx') : null] },
      { label: 'Consumers', sort: 'consumer_count', num: true, render: c => num(c.consumer_count) },
      { label: 'Unacked', sort: 'messages_unacknowledged', num: true, render: c => num(c.messages_unacknowledged) },
      { label: 'Prefetch', sort: 'prefetch_count', num: true, render: c => num(c.prefetch_count) },
      { label: 'Publish', sort: 'message_stats.publish_details.rate', num: true, render: c => rate((c.message_stats || {}).publish_details) },
      { label: 'Deliver', sort: 'message_stats.deliver_get_details.rate', num: true, render: c => rate((c.message_stats || {}).deliver_get_details) },
      { label: 'Ack', sort: 'message_stats.ack_details.rate', num: true, render: c => rate((c.message_stats || {}).ack_details) },
    ],
  }));
}

function flags(x) {
  return [x.durable ? badge('D', 'info') : null, x.auto_delete ? badge('AD') : null,
    x.exclusive ? badge('excl') : null, x.internal ? badge('internal') : null];
}

function vhostChoices(select, chosen) {
  api.get('/vhosts').then(vs => {
    fill(select, vs.map(v => h('option', { value: v.name, selected: v.name === chosen ? true : undefined }, v.name)));
  }).catch(() => {});
  return select;
}

export function exchangesPage(params, ctx) {
  const t = pagedTable({
    id: 'exchanges',
    path: inVhost(ctx, '/exchanges', v => `/exchanges/${v}`),
    fields: 'name,vhost,type,durable,auto_delete,internal,arguments',
    columns: [
      { label: 'Name', sort: 'name', render: x => h('a', { href: link.exchange(x.vhost, x.name) }, x.name || '(AMQP default)') },
      { label: 'Vhost', sort: 'vhost' },
      { label: 'Type', sort: 'type' },
      { label: 'Features', render: flags },
      { label: 'Arguments', render: x => (Object.keys(x.arguments || {}).length ? JSON.stringify(x.arguments) : '') },
    ],
  });
  const name = h('input', { name: 'name', required: true });
  const type = h('select', { name: 'type' }, ['direct', 'fanout', 'topic', 'headers'].map(n => h('option', { value: n }, n)));
  const vhost = vhostChoices(h('select', { name: 'vhost' }), ctx.vhost() || '/');
  const durable = h('input', { type: 'checkbox', checked: true });
  const add = h('form', {
    class: 'inline-form',
    onsubmit: (e) => {
      e.preventDefault();
      act(e.submitter, () => api.put(`/exchanges/${api.seg(vhost.value)}/${api.seg(name.value)}`,
        { type: type.value, durable: durable.checked }), `Exchange ${name.value} declared`).then(() => t.refresh());
    },
  }, field('Name', name), field('Type', type), field('Vhost', vhost),
  h('label', { class: 'check' }, durable, 'Durable'), h('button', { type: 'submit', class: 'primary' }, 'Add exchange'));
  return listPage(ctx, 'Exchanges', t, h('details', { class: 'card' }, h('summary', {}, 'Add an exchange'), add));
}

export function queuesPage(params, ctx) {
  const t = pagedTable({
    id: 'queues',
    path: inVhost(ctx, '/queues', v => `/queues/${v}`),
    fields: 'name,vhost,type,durable,auto_delete,exclusive,policy,state,messages_ready,messages_unacknowledged,messages,consumers,message_stats.publish_details,message_stats.deliver_get_details,message_stats.ack_details',
    columns: [
      { label: 'Name', sort: 'name', render: q => h('a', { href: link.queue(q.vhost, q.name) }, q.name) },
      { label: 'Vhost', sort: 'vhost' },
      { label: 'Features', render: q => [flags(q), q.policy ? badge(q.policy, 'policy') : null] },
      { label: 'Ready', sort: 'messages_ready', num: true, render: q => num(q.messages_ready) },
      { label: 'Unacked', sort: 'messages_unacknowledged', num: true, render: q => num(q.messages_unacknowledged) },
      { label: 'Total', sort: 'messages', num: true, render: q => num(q.messages) },
      { label: 'Consumers', sort: 'consumers', num: true, render: q => num(q.consumers) },
      { label: 'Publish', sort: 'message_stats.publish_details.rate', num: true, render: q => rate((q.message_stats || {}).publish_details) },
      { label: 'Deliver', sort: 'message_stats.deliver_get_details.rate', num: true, render: q => rate((q.message_stats || {}).deliver_get_details) },
      { label: 'Ack', sort: 'message_stats.ack_details.rate', num: true, render: q => rate((q.message_stats || {}).ack_details) },
    ],
  });
  const name = h('input', { name: 'name', required: true });
  const vhost = vhostChoices(h('select', { name: 'vhost' }), ctx.vhost() || '/');
  const durable = h('input', { type: 'checkbox', checked: true });
  const args = h('input', { name: 'arguments', placeholder: '{"x-max-length": 1000}' });
  const add = h('form', {
    class: 'inline-form',
    onsubmit: (e) => {
      e.preventDefault();
      let a = {};
      try { a = args.value.trim() ? JSON.parse(args.value) : {}; } catch { toast('Arguments must be a JSON object', 'error'); return; }
      act(e.submitter, () => api.put(`/queues/${api.seg(vhost.value)}/${api.seg(name.value)}`,
        { durable: durable.checked, arguments: a }), `Queue ${name.value} declared`).then(() => t.refresh());
    },
  }, field('Name', name), field('Vhost', vhost), field('Arguments (JSON)', args),
  h('label', { class: 'check' }, durable, 'Durable'), h('button', { type: 'submit', class: 'primary' }, 'Add queue'));
  return listPage(ctx, 'Queues', t, h('details', { class: 'card' }, h('summary', {}, 'Add a queue'), add));
}

export function consumersPage(params, ctx) {
  return listPage(ctx, 'Consumers', pagedTable({
    id: 'consumers',
    path: inVhost(ctx, '/consumers', v => `/consumers/${v}`),
    sort: 'consumer_tag',
    fields: 'consumer_tag,queue,channel_details,ack_required,exclusive,prefetch_count,arguments,active',
    filter: false,
    columns: [
      { label: 'Consumer tag', sort: 'consumer_tag' },
      { label: 'Queue', sort: 'queue.name', render: c => h('a', { href: link.queue(c.queue.vhost, c.queue.name) }, c.queue.name) },
      { label: 'Vhost', sort: 'queue.vhost', render: c => c.queue.vhost },
      { label: 'Channel', render: c => (c.channel_details.connection_name ? h('a', { href: link.connection(c.channel_details.connection_name) }, c.channel_details.name) : '–') },
      { label: 'Ack', sort: 'ack_required', render: c => (c.ack_required ? 'manual' : 'auto') },
      { label: 'Prefetch', sort: 'prefetch_count', num: true, render: c => num(c.prefetch_count) },
      { label: 'Exclusive', render: c => (c.exclusive ? 'yes' : '') },
    ],
  }));
}

export { staticTable };
