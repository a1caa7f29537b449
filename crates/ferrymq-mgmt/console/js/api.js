// The HTTP API client: basic auth from sessionStorage, JSON in and out. Requests send the
// Authorization header themselves with credentials "omit", so the browser never pops up its
// own login box on a 401; the console shows its login form instead.

const KEY = 'ferrymq.credentials';

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.reason || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

let loggedOut = () => {};

/** Called when the stored credentials stop working (login again). */
export function onLoggedOut(f) { loggedOut = f; }

export function hasCredentials() { return sessionStorage.getItem(KEY) !== null; }

function encode(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function user() {
  const c = sessionStorage.getItem(KEY);
  if (!c) return '';
  try {
    const bin = atob(c);
    const bytes = Uint8Array.from(bin, ch => ch.charCodeAt(0));
    return new TextDecoder().decode(bytes).split(':')[0];
  } catch { return ''; }
}

/** Checks credentials against /api/whoami and keeps them for this tab if they work. */
export async function login(name, password) {
  const auth = encode(name, password);
  const r = await fetch('api/whoami', {
    headers: { Authorization: `Basic ${auth}` }, credentials: 'omit', cache: 'no-store',
  });
  if (!r.ok) {
    const body = await r.json().catch(() => null);
    throw new ApiError(r.status, body || { reason: 'Login failed' });
  }
  sessionStorage.setItem(KEY, auth);
  return r.json();
}

export function logout() { sessionStorage.removeItem(KEY); }

/** `encodeURIComponent` for path segments (the default vhost `/` is `%2F`). */
export const seg = s => encodeURIComponent(s);

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** Sends a request; resolves to the parsed JSON body (null when there is none). */
export async function request(method, path, body, { text = false } = {}) {
  const headers = { Authorization: `Basic ${sessionStorage.getItem(KEY) || ''}` };
  const init = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await fetch(`api${path}`, init);
  const raw = await r.text();
  let parsed = null;
  if (raw && !text) {
    try { parsed = JSON.parse(raw); } catch { parsed = null; }
  }
  if (!r.ok) {
    // 401 is both "who are you" (no or wrong credentials) and "not allowed" (RabbitMQ's
    // code for missing permissions): only the first means logging in again.
    if (r.status === 401 && (!parsed || parsed.error === 'not_authorized')) {
      logout();
      loggedOut();
    }
    throw new ApiError(r.status, parsed);
  }
  return text ? raw : parsed;
}

export const get = (path) => request('GET', path);
export const put = (path, body = {}) => request('PUT', path, body);
export const post = (path, body = {}) => request('POST', path, body);
export const del = (path) => request('DELETE', path);
