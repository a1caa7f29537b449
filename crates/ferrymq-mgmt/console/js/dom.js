// Small DOM helpers. Text from the broker is only ever set as text (never as HTML).

/** Creates an element: h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const nf = new Intl.NumberFormat('en');

/** A count with thousands separators. */
export function num(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  return nf.format(n);
}

/** A rate per second from a `*_details` object (or a number). */
export function rate(d) {
  const r = typeof d === 'number' ? d : d && typeof d.rate === 'number' ? d.rate : null;
  if (r === null) return '–';
  return `${r >= 100 ? nf.format(Math.round(r)) : r.toFixed(r === 0 ? 0 : 1)}/s`;
}

export function bytes(n) {
  if (n === undefined || n === null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

export function duration(ms) {
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** Reads a dotted path out of an object. */
export function pick(obj, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

/** Links to objects: the console's routes. */
export const link = {
  queue: (vhost, name) => `#/queues/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}`,
  exchange: (vhost, name) => `#/exchanges/${encodeURIComponent(vhost)}/${encodeURIComponent(name || 'amq.default')}`,
  connection: name => `#/connections/${encodeURIComponent(name)}`,
  user: name => `#/users/${encodeURIComponent(name)}`,
};

/** A short-lived message at the bottom of the page. */
export function toast(text, kind = 'ok') {
  let box = document.getElementById('toasts');
  if (!box) {
    box = h('div', { id: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(box);
  }
  const t = h('div', { class: `toast ${kind}` }, text);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

/** Runs an action from a button: disables it meanwhile, shows errors as a toast. */
export async function act(button, f, done) {
  if (button) button.disabled = true;
  try {
    const r = await f();
    if (done) toast(typeof done === 'function' ? done(r) : done);
    return r;
  } catch (e) {
    toast(e.message || String(e), 'error');
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** A labelled form field. */
export function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', {}, label), input, hint ? h('small', {}, hint) : null);
}

export function badge(text, kind = '') {
  return h('span', { class: `badge ${kind}` }, text);
}

/** A section card with a title. */
export function card(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, ...children);
}

/** A two-column table of keys and values (objects shown as JSON). */
export function kvTable(obj, empty = 'None') {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h('p', { class: 'muted' }, empty);
  return h('table', { class: 'kv' }, h('tbody', {}, entries.map(([k, v]) =>
    h('tr', {}, h('th', {}, k), h('td', {}, typeof v === 'object' ? JSON.stringify(v) : String(v))))));
}

/** Statistic tiles: [[label, value, testid?], ...]. */
export function tiles(list) {
  return h('div', { class: 'tiles' }, list.map(([label, value, id]) =>
    h('div', { class: 'tile', dataset: id ? { stat: id } : undefined },
      h('div', { class: 'tile-value' }, value), h('div', { class: 'tile-label' }, label))));
}
