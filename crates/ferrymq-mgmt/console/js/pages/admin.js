// Administration: users and their permissions, vhosts, policies, limits, definitions.
// These lists are small (the API does not page them either), so they are fetched whole.

import * as api from '../api.js';
import { h, fill, num, badge, card, act, field, toast } from '../dom.js';
import { staticTable } from '../table.js';

function deleteButton(label, what, f, refresh) {
  const b = h('button', {
    class: 'small danger',
    onclick: () => {
      if (!window.confirm(`Delete ${what}?`)) return;
      act(b, f, `Deleted ${what}`).then(refresh);
    },
  }, label);
  return b;
}

function form(onsubmit, ...fields) {
  return h('form', {
    class: 'inline-form',
    onsubmit: (e) => { e.preventDefault(); onsubmit(e.submitter); },
  }, ...fields);
}

function page(title, ...children) {
  return h('div', { class: 'page' }, h('div', { class: 'page-head' }, h('h1', {}, title)), ...children);
}

function loading(box, f) {
  return () => f().catch(e => fill(box, h('p', { class: 'error' }, e.status === 401 ? `Not allowed: ${e.message}` : e.message)));
}

function vhostSelect(name = 'vhost') {
  const s = h('select', { name });
  api.get('/vhosts').then(vs => fill(s, vs.map(v => h('option', { value: v.name }, v.name)))).catch(() => {});
  return s;
}

export function usersPage(params, ctx) {
  const users = h('div');
  const perms = h('div');
  const refresh = loading(users, async () => {
    const [us, ps] = await Promise.all([api.get('/users'), api.get('/permissions')]);
    fill(users, staticTable([
      { label: 'Name', key: 'name' },
      { label: 'Tags', render: u => (Array.isArray(u.tags) ? u.tags : String(u.tags || '').split(',')).filter(Boolean).map(t => badge(t, 'info')) },
      { label: 'Password', render: u => (u.password_hash ? 'set' : h('span', { class: 'muted' }, 'none')) },
      { label: 'Vhosts', render: u => ps.filter(p => p.user === u.name).map(p => badge(p.vhost)) },
      { label: '', render: u => deleteButton('Delete', `user ${u.name}`, () => api.del(`/users/${api.seg(u.name)}`), refresh) },
    ], us, 'No users.'));
    fill(perms, staticTable([
      { label: 'User', key: 'user' }, { label: 'Vhost', key: 'vhost' },
      { label: 'Configure', render: p => h('code', {}, p.configure) },
      { label: 'Write', render: p => h('code', {}, p.write) },
      { label: 'Read', render: p => h('code', {}, p.read) },
      { label: '', render: p => deleteButton('Revoke', `${p.user}'s permissions on ${p.vhost}`, () => api.del(`/permissions/${api.seg(p.vhost)}/${api.seg(p.user)}`), refresh) },
    ], ps, 'No permissions.'));
  });

  const name = h('input', { name: 'username', required: true, autocomplete: 'off' });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'new-password' });
  const tags = h('input', { name: 'tags', placeholder: 'administrator, monitoring, management' });
  const addUser = form(b => act(b, () => api.put(`/users/${api.seg(name.value)}`, {
    password: pass.value, tags: tags.value.split(',').map(t => t.trim()).filter(Boolean).join(','),
  }), `User ${name.value} saved`).then(refresh),
  field('Username', name), field('Password', pass), field('Tags', tags),
  h('button', { type: 'submit', class: 'primary', id: 'add-user' }, 'Add user'));

  const pu = h('input', { name: 'perm-user', required: true });
  const pv = vhostSelect('perm-vhost');
  const [pc, pw, pr] = ['configure', 'write', 'read'].map(k => h('input', { name: k, value: '.*' }));
  const addPerm = form(b => act(b, () => api.put(`/permissions/${api.seg(pv.value)}/${api.seg(pu.value)}`, {
    configure: pc.value, write: pw.value, read: pr.value,
  }), 'Permissions set').then(refresh),
  field('User', pu), field('Vhost', pv), field('Configure', pc), field('Write', pw), field('Read', pr),
  h('button', { type: 'submit' }, 'Set permissions'));

  refresh();
  return page('Users', card('Users', users, h('h3', {}, 'Add or update a user'), addUser),
    card('Permissions', perms, h('h3', {}, 'Set permissions'), addPerm));
}

export function vhostsPage(params, ctx) {
  const box = h('div');
  const refresh = loading(box, async () => {
    const vs = await api.get('/vhosts');
    fill(box, staticTable([
      { label: 'Name', key: 'name' },
      { label: 'Description', render: v => v.description || '' },
      { label: 'Ready', num: true, render: v => num(v.messages_ready) },
      { label: 'Unacked', num: true, render: v => num(v.messages_unacknowledged) },
      { label: '', render: v => h('button', { class: 'small', onclick: () => { sessionStorage.setItem('ferrymq.vhost', v.name); location.hash = '#/queues'; location.reload(); } }, 'Show queues') },
      { label: '', render: v => deleteButton('Delete', `vhost ${v.name} and everything in it`, () => api.del(`/vhosts/${api.seg(v.name)}`), refresh) },
    ], vs));
  });
  const name = h('input', { name: 'vhost-name', required: true });
  const desc = h('input', { name: 'description' });
  refresh();
  return page('Virtual hosts', card(null, box, h('h3', {}, 'Add a virtual host'),
    form(b => act(b, () => api.put(`/vhosts/${api.seg(name.value)}`, { description: desc.value }), `Vhost ${name.value} added`).then(refresh),
      field('Name', name), field('Description', desc), h('button', { type: 'submit', class: 'primary' }, 'Add vhost'))));
}

export function policiesPage(params, ctx) {
  const box = h('div');
  const refresh = loading(box, async () => {
    const ps = await api.get(ctx.vhost() ? `/policies/${api.seg(ctx.vhost())}` : '/policies');
    fill(box, staticTable([
      { label: 'Name', key: 'name' }, { label: 'Vhost', key: 'vhost' },
      { label: 'Pattern', render: p => h('code', {}, p.pattern) },
      { label: 'Applies to', render: p => p['apply-to'] },
      { label: 'Priority', num: true, key: 'priority' },
      { label: 'Definition', render: p => h('code', {}, JSON.stringify(p.definition)) },
      { label: '', render: p => deleteButton('Delete', `policy ${p.name}`, () => api.del(`/policies/${api.seg(p.vhost)}/${api.seg(p.name)}`), refresh) },
    ], ps, 'No policies.'));
  });
  const name = h('input', { name: 'policy-name', required: true });
  const vhost = vhostSelect('policy-vhost');
  const pattern = h('input', { name: 'pattern', required: true, placeholder: '^orders\\.' });
  const applyTo = h('select', { name: 'apply-to' }, ['queues', 'exchanges', 'all'].map(v => h('option', { value: v }, v)));
  const priority = h('input', { name: 'priority', type: 'number', value: 0 });
  const def = h('textarea', { name: 'definition', rows: 3, placeholder: '{"max-length": 10000, "dead-letter-exchange": "dlx"}' });
  const add = form((b) => {
    let d;
    try { d = JSON.parse(def.value || '{}'); } catch { toast('The definition must be a JSON object', 'error'); return; }
    act(b, () => api.put(`/policies/${api.seg(vhost.value)}/${api.seg(name.value)}`, {
      pattern: pattern.value, definition: d, priority: Number(priority.value) || 0, 'apply-to': applyTo.value,
    }), `Policy ${name.value} saved`).then(refresh);
  }, field('Name', name), field('Vhost', vhost), field('Pattern (regex)', pattern), field('Apply to', applyTo),
  field('Priority', priority), field('Definition (JSON)', def), h('button', { type: 'submit', class: 'primary', id: 'add-policy' }, 'Add policy'));
  refresh();
  return page('Policies', card(null, box, h('h3', {}, 'Add or update a policy'), add));
}

function limitsCard(kind) {
  const isVhost = kind === 'vhost';
  const box = h('div');
  const refresh = loading(box, async () => {
    const ls = await api.get(isVhost ? '/vhost-limits' : '/user-limits');
    const rows = ls.flatMap(l => Object.entries(l.value || {}).map(([k, v]) => ({ owner: isVhost ? l.vhost : l.user, name: k, value: v })));
    fill(box, staticTable([
      { label: isVhost ? 'Vhost' : 'User', key: 'owner' }, { label: 'Limit', key: 'name' }, { label: 'Value', key: 'value', num: true },
      { label: '', render: r => deleteButton('Delete', `${r.name} of ${r.owner}`, () => api.del(`/${kind}-limits/${api.seg(r.owner)}/${api.seg(r.name)}`), refresh) },
    ], rows, 'No limits.'));
  });
  const owner = isVhost ? vhostSelect('limit-vhost') : h('input', { name: 'limit-user', required: true });
  const names = isVhost ? ['max-connections', 'max-queues'] : ['max-connections', 'max-channels'];
  const name = h('select', { name: `${kind}-limit-name` }, names.map(n => h('option', { value: n }, n)));
  const value = h('input', { type: 'number', name: `${kind}-limit-value`, required: true });
  refresh();
  return card(isVhost ? 'Virtual host limits' : 'User limits', box,
    form(b => act(b, () => api.put(`/${kind}-limits/${api.seg(owner.value)}/${api.seg(name.value)}`, { value: Number(value.value) }), 'Limit set').then(refresh),
      field(isVhost ? 'Vhost' : 'User', owner), field('Limit', name), field('Value', value, '-1: no limit'),
      h('button', { type: 'submit' }, 'Set limit')));
}

export function limitsPage() {
  return page('Limits', limitsCard('vhost'), limitsCard('user'));
}

export function definitionsPage() {
  const download = h('button', {
    class: 'primary', id: 'export',
    onclick: () => act(download, async () => {
      const text = await api.request('GET', '/definitions', undefined, { text: true });
      const url = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
      const a = h('a', { href: url, download: `ferrymq-definitions-${new Date().toISOString().slice(0, 19).replace(/:/g, '')}.json` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    }, 'Definitions exported'),
  }, 'Download definitions');
  const file = h('input', { type: 'file', accept: '.json,application/json', name: 'definitions-file' });
  const upload = form(b => act(b, async () => {
    const f = file.files[0];
    if (!f) throw new Error('Choose a definitions file first');
    const text = await f.text();
    try { JSON.parse(text); } catch { throw new Error('That file is not JSON'); }
    await api.request('POST', '/definitions', text);
  }, 'Definitions imported'), field('Definitions file (RabbitMQ JSON format)', file),
  h('button', { type: 'submit', class: 'primary', id: 'import' }, 'Import'));
  return page('Definitions',
    card('Export', h('p', {}, 'Users, vhosts, permissions, limits, policies, and the durable exchanges, queues and bindings, in RabbitMQ\'s format.'), download),
    card('Import', h('p', {}, 'Adds or updates what the file defines; nothing else is removed.'), upload));
}
