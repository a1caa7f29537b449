// The console shell: login, navigation, the alarm banner and a hash router
// (#/queues/%2F/orders). Each page is a function (params, ctx) that returns an element
// and registers its refresh timers on ctx, which are cleared when the page changes.

import * as api from './api.js';
import { h, fill, toast } from './dom.js';
import { overviewPage } from './pages/overview.js';
import { connectionsPage, connectionPage, channelsPage, exchangesPage, queuesPage, consumersPage } from './pages/lists.js';
import { queuePage } from './pages/queue.js';
import { exchangePage } from './pages/exchange.js';
import { usersPage, vhostsPage, policiesPage, limitsPage, definitionsPage } from './pages/admin.js';
import { tracePage } from './pages/trace.js';

const routes = [
  [/^$/, overviewPage],
  [/^overview$/, overviewPage],
  [/^connections$/, connectionsPage],
  [/^connections\/([^/]+)$/, connectionPage],
  [/^channels$/, channelsPage],
  [/^exchanges$/, exchangesPage],
  [/^exchanges\/([^/]+)\/([^/]+)$/, exchangePage],
  [/^queues$/, queuesPage],
  [/^queues\/([^/]+)\/([^/]+)$/, queuePage],
  [/^consumers$/, consumersPage],
  [/^users$/, usersPage],
  [/^vhosts$/, vhostsPage],
  [/^policies$/, policiesPage],
  [/^limits$/, limitsPage],
  [/^definitions$/, definitionsPage],
  [/^trace$/, tracePage],
];

const NAV = [
  ['overview', 'Overview'], ['connections', 'Connections'], ['channels', 'Channels'],
  ['exchanges', 'Exchanges'], ['queues', 'Queues'], ['consumers', 'Consumers'],
  null,
  ['users', 'Users'], ['vhosts', 'Virtual hosts'], ['policies', 'Policies'],
  ['limits', 'Limits'], ['definitions', 'Definitions'], ['trace', 'Trace'],
];

const app = document.getElementById('app');
let ctx = null;
let shellTimer = null;
let whoami = null;

/** What pages get: timers that stop with the page, the caller, the chosen vhost. */
function newContext() {
  const timers = [];
  const cleanups = [];
  return {
    every(ms, f) { f(); timers.push(setInterval(f, ms)); },
    onLeave(f) { cleanups.push(f); },
    whoami,
    vhost: () => sessionStorage.getItem('ferrymq.vhost') || '',
    stop() { timers.forEach(clearInterval); cleanups.forEach(f => f()); },
  };
}

function showLogin(message) {
  if (ctx) { ctx.stop(); ctx = null; }
  clearInterval(shellTimer);
  const name = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const error = h('p', { class: 'login-error', role: 'alert' }, message || '');
  const form = h('form', {
    class: 'login card',
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = '';
      try {
        whoami = await api.login(name.value, pass.value);
        start();
      } catch (err) {
        error.textContent = err.status === 401 ? 'Login failed: wrong username or password.' : err.message;
      }
    },
  },
  h('div', { class: 'brand big' }, h('img', { src: 'console/favicon.svg', alt: '' }), 'FerryMQ'),
  h('label', { class: 'field' }, h('span', {}, 'Username'), name),
  h('label', { class: 'field' }, h('span', {}, 'Password'), pass),
  h('button', { type: 'submit', class: 'primary' }, 'Log in'),
  error);
  fill(app, h('div', { class: 'login-page' }, form));
  name.focus();
}

async function vhostPicker() {
  const sel = h('select', {
    id: 'vhost-picker', 'aria-label': 'Virtual host',
    onchange: (e) => { sessionStorage.setItem('ferrymq.vhost', e.target.value); render(); },
  }, h('option', { value: '' }, 'All virtual hosts'));
  try {
    const vs = await api.get('/vhosts');
    for (const v of vs) sel.append(h('option', { value: v.name, selected: v.name === sessionStorage.getItem('ferrymq.vhost') ? true : undefined }, v.name));
  } catch { /* shown by the pages */ }
  return sel;
}

async function checkAlarms(banner) {
  let text = '';
  try {
    await api.get('/health/checks/alarms');
  } catch (e) {
    if (e.status === 503 && e.body && e.body.alarms) {
      const what = e.body.alarms.map(a => `${a.resource} alarm on ${a.node}`).join(', ');
      text = `Resource alarm: ${what}. Publishers are blocked until it clears.`;
    }
  }
  banner.hidden = !text;
  banner.textContent = text;
}

let main;
async function start() {
  if (!whoami) {
    try { whoami = await api.get('/whoami'); } catch { return; }
  }
  const banner = h('div', { class: 'alarm-banner', role: 'alert', hidden: true, id: 'alarm-banner' });
  main = h('main', { id: 'main' });
  const nav = h('nav', { class: 'side' }, NAV.map(n => (n
    ? h('a', { href: `#/${n[0]}`, dataset: { nav: n[0] } }, n[1])
    : h('hr'))));
  fill(app,
    h('header', { class: 'top' },
      h('a', { class: 'brand', href: '#/overview' }, h('img', { src: 'console/favicon.svg', alt: '' }), 'FerryMQ'),
      h('span', { class: 'grow' }),
      await vhostPicker(),
      h('span', { class: 'who', title: (whoami.tags || []).join(', ') }, whoami.name),
      h('button', { class: 'small', id: 'logout', onclick: () => { api.logout(); whoami = null; showLogin('Logged out.'); } }, 'Log out')),
    banner,
    h('div', { class: 'layout' }, nav, main));
  clearInterval(shellTimer);
  checkAlarms(banner);
  shellTimer = setInterval(() => checkAlarms(banner), 5000);
  render();
}

function render() {
  if (!main) return;
  if (ctx) ctx.stop();
  ctx = newContext();
  // A malformed escape (#/queues/%2F/%E0%A4%A, typed or from a link) is "Not found", not a
  // URIError that would leave the previous page up with its timers stopped.
  const decode = (s) => { try { return decodeURIComponent(s); } catch { return null; } };
  const raw = location.hash.replace(/^#\/?/, '').replace(/\/$/, '');
  const path = decode(raw) ?? raw;
  for (const a of document.querySelectorAll('nav.side a')) {
    a.classList.toggle('active', raw.split('/')[0] === a.dataset.nav || (!raw && a.dataset.nav === 'overview'));
  }
  for (const [re, page] of routes) {
    const m = raw.match(re);
    const params = m && m.slice(1).map(decode);
    if (m && !params.includes(null)) {
      try {
        fill(main, page(params, ctx));
      } catch (e) {
        fill(main, h('p', { class: 'error' }, e.message));
      }
      main.focus();
      return;
    }
  }
  fill(main, h('div', { class: 'card' }, h('h1', {}, 'Not found'), h('p', {}, `No page at ${path}.`)));
}

window.addEventListener('hashchange', render);
api.onLoggedOut(() => { whoami = null; main = null; showLogin('Your session ended or the credentials are no longer valid: please log in again.'); });
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason && e.reason.status !== 401) toast(e.reason.message || String(e.reason), 'error');
});

if (api.hasCredentials()) start(); else showLogin();
