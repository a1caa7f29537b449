// One exchange: its bindings both ways, adding and removing bindings, publishing to it.

import * as api from '../api.js';
import { h, fill, link, badge, card, act, field, kvTable, toast } from '../dom.js';
import { staticTable } from '../table.js';

/** Bindings with links to both ends and an Unbind button. */
export function bindingsTable(vhost, bindings, side, refresh) {
  const end = (name, type) => (type === 'queue'
    ? h('a', { href: link.queue(vhost, name) }, name)
    : h('a', { href: link.exchange(vhost, name) }, name || '(AMQP default)'));
  return staticTable([
    { label: 'From', render: b => end(b.source, 'exchange') },
    { label: 'To', render: b => [end(b.destination, b.destination_type), ' ', badge(b.destination_type)] },
    { label: 'Routing key', render: b => b.routing_key || h('span', { class: 'muted' }, '(empty)') },
    { label: 'Arguments', render: b => (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : '') },
    {
      label: '',
      render: (b) => {
        if (!b.source) return h('span', { class: 'muted' }, 'default binding');
        const btn = h('button', {
          class: 'small',
          onclick: () => act(btn, () => api.del(`/bindings/${api.seg(vhost)}/e/${api.seg(b.source)}/${b.destination_type === 'queue' ? 'q' : 'e'}/${api.seg(b.destination)}/${api.seg(b.properties_key)}`), 'Binding removed').then(refresh),
        }, 'Unbind');
        return btn;
      },
    },
  ], bindings, { queue: 'No bindings.', into: 'Nothing is bound to this exchange.' }[side] || 'This exchange routes nowhere yet.');
}

/** A publish form; `fixedKey` keeps the routing key (publishing to a queue). */
export function publishForm(vhost, exchange, routingKey, fixedKey, after) {
  const key = h('input', { name: 'routing_key', value: routingKey || '', readonly: fixedKey ? true : undefined });
  const persistent = h('input', { type: 'checkbox', name: 'persistent', checked: true });
  const contentType = h('input', { name: 'content_type', placeholder: 'application/json' });
  const headers = h('input', { name: 'headers', placeholder: '{"x-tenant": "acme"}' });
  const props = h('input', { name: 'properties', placeholder: '{"correlation_id": "42"}' });
  const payload = h('textarea', { name: 'payload', rows: 5, placeholder: 'Message body' });
  const path = `/exchanges/${api.seg(vhost)}/${api.seg(exchange || 'amq.default')}/publish`;
  return h('form', {
    class: 'publish-form',
    onsubmit: (e) => {
      e.preventDefault();
      let p = {};
      try {
        p = props.value.trim() ? JSON.parse(props.value) : {};
        if (headers.value.trim()) p.headers = JSON.parse(headers.value);
      } catch { toast('Headers and properties must be JSON objects', 'error'); return; }
      if (persistent.checked) p.delivery_mode = 2;
      if (contentType.value) p.content_type = contentType.value;
      act(e.submitter, () => api.post(path, {
        routing_key: key.value, payload: payload.value, payload_encoding: 'string', properties: p,
      }), r => (r.routed ? 'Message published' : 'Message published but routed to no queue')).then(() => after && after());
    },
  }, h('div', { class: 'inline-form' }, field('Routing key', key), field('Content type', contentType),
    h('label', { class: 'check' }, persistent, 'Persistent')),
  h('div', { class: 'inline-form' }, field('Headers (JSON)', headers), field('Other properties (JSON)', props)),
  field('Payload', payload),
  h('button', { type: 'submit', class: 'primary', id: 'publish' }, 'Publish message'));
}

export function exchangePage([vhost, name], ctx) {
  const real = name === 'amq.default' ? '' : name;
  const base = `/exchanges/${api.seg(vhost)}/${api.seg(name)}`;
  const head = h('div', { class: 'page-head' }, h('h1', {}, real || '(AMQP default)'));
  const info = h('div');
  const out = h('div');
  const into = h('div');

  async function refresh() {
    let x;
    try { x = await api.get(base); } catch (e) {
      fill(info, h('p', { class: 'error' }, e.status === 404 ? `Exchange ${name} does not exist.` : e.message));
      return;
    }
    fill(head, h('h1', {}, real || '(AMQP default)'), h('span', { class: 'muted' }, 'in vhost ', badge(vhost)),
      badge(x.type), x.durable ? badge('durable', 'info') : badge('transient'), x.internal ? badge('internal') : null);
    fill(info, kvTable({ type: x.type, durable: x.durable, auto_delete: x.auto_delete, internal: x.internal, arguments: x.arguments }));
    if (real) {
      const [src, dst] = await Promise.all([api.get(`${base}/bindings/source`), api.get(`${base}/bindings/destination`)]);
      fill(out, bindingsTable(vhost, src, 'exchange', refresh), bindForm());
      fill(into, bindingsTable(vhost, dst, 'into', refresh));
    } else {
      fill(out, h('p', { class: 'muted' }, 'The default exchange routes to the queue named by the routing key; it cannot be bound.'));
    }
  }

  function bindForm() {
    const kind = h('select', { name: 'destination_type' }, h('option', { value: 'q' }, 'queue'), h('option', { value: 'e' }, 'exchange'));
    const dest = h('input', { name: 'destination', required: true });
    const key = h('input', { name: 'routing_key' });
    return h('form', {
      class: 'inline-form',
      onsubmit: (e) => {
        e.preventDefault();
        act(e.submitter, () => api.post(`/bindings/${api.seg(vhost)}/e/${api.seg(real)}/${kind.value}/${api.seg(dest.value)}`,
          { routing_key: key.value, arguments: {} }), 'Binding added').then(refresh);
      },
    }, field('To', kind), field('Name', dest), field('Routing key', key), h('button', { type: 'submit' }, 'Bind'));
  }

  const remove = h('button', {
    class: 'danger',
    onclick: () => {
      if (!window.confirm(`Delete exchange ${name}?`)) return;
      act(remove, () => api.del(base), `Exchange ${name} deleted`).then(() => { location.hash = '#/exchanges'; });
    },
  }, 'Delete exchange');

  refresh().catch(e => toast(e.message, 'error'));
  return h('div', { class: 'page' }, head,
    h('div', { class: 'cols' }, card('Details', info), card('Bound to this exchange', into)),
    card('Routes to', out),
    card('Publish a message', publishForm(vhost, real, '', false, refresh)),
    real && !real.startsWith('amq.') ? card('Danger zone', remove) : null);
}
