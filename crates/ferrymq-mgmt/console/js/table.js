// A list backed by the API's server-side paging: each refresh fetches one page with
// `page`, `page_size`, `name`, `use_regex`, `sort`, `sort_reverse` and `columns`, so a list
// of 100,000 queues costs the browser one page of rows.

import { get, query } from './api.js';
import { h, fill, num, pick } from './dom.js';

const PAGE_SIZES = [20, 50, 100, 200, 500];

/**
 * spec: {
 *   id, path: () => '/queues' (no query), columns: [{label, sort, render(row), num}],
 *   fields: 'name,vhost,...' (the API's `columns`), sort: default sort key,
 *   reverse: bool, empty: text, filter: placeholder (false: no name filter)
 * }
 * Returns {el, refresh()}.
 */
export function pagedTable(spec) {
  const st = {
    page: 1,
    size: spec.pageSize || 50,
    name: '',
    regex: false,
    sort: spec.sort || 'name',
    reverse: !!spec.reverse,
  };
  const info = h('span', { class: 'pager-info' });
  const status = h('span', { class: 'table-status' });
  const prev = h('button', { class: 'small', onclick: () => { st.page -= 1; refresh(); } }, '‹ Prev');
  const next = h('button', { class: 'small', onclick: () => { st.page += 1; refresh(); } }, 'Next ›');
  const pageBox = h('span', { class: 'page-no' });
  const thead = h('thead');
  const tbody = h('tbody');
  let typing;
  const filter = spec.filter === false ? null : h('input', {
    type: 'search', placeholder: spec.filter || 'Filter by name', class: 'filter',
    'aria-label': 'Filter by name',
    oninput: (e) => {
      clearTimeout(typing);
      typing = setTimeout(() => { st.name = e.target.value; st.page = 1; refresh(); }, 250);
    },
  });
  const regex = spec.filter === false ? null : h('label', { class: 'check' },
    h('input', { type: 'checkbox', onchange: (e) => { st.regex = e.target.checked; st.page = 1; refresh(); } }), 'Regex');
  const size = h('select', {
    'aria-label': 'Rows per page',
    onchange: (e) => { st.size = Number(e.target.value); st.page = 1; refresh(); },
  }, PAGE_SIZES.map(n => h('option', { value: n, selected: n === st.size ? true : undefined }, `${n} per page`)));

  function header() {
    fill(thead, h('tr', {}, spec.columns.map(c => {
      if (!c.sort) return h('th', { class: c.num ? 'num' : '' }, c.label);
      const on = st.sort === c.sort;
      const arrow = on ? (st.reverse ? ' ▼' : ' ▲') : '';
      return h('th', {
        class: `sortable ${c.num ? 'num' : ''} ${on ? 'sorted' : ''}`,
        'aria-sort': on ? (st.reverse ? 'descending' : 'ascending') : 'none',
      }, h('button', {
        class: 'th-sort',
        onclick: () => {
          if (st.sort === c.sort) st.reverse = !st.reverse;
          else { st.sort = c.sort; st.reverse = !!c.num; }
          st.page = 1;
          refresh();
        },
      }, c.label + arrow));
    })));
  }

  let seq = 0;
  async function refresh() {
    const path = spec.path();
    if (path === null) return;
    const mine = ++seq;
    header();
    let r;
    try {
      r = await get(path + query({
        page: st.page,
        page_size: st.size,
        name: st.name,
        use_regex: st.regex && st.name ? 'true' : '',
        sort: st.sort,
        sort_reverse: st.reverse ? 'true' : '',
        columns: spec.fields,
      }));
    } catch (e) {
      if (mine !== seq) return;
      if (e.body && e.body.error === 'page_out_of_range' && st.page > 1) {
        st.page = 1;
        refresh();
        return;
      }
      status.textContent = e.message;
      status.className = 'table-status error';
      return;
    }
    if (mine !== seq) return;
    status.textContent = '';
    status.className = 'table-status';
    const items = r.items || [];
    if (!items.length) {
      fill(tbody, h('tr', {}, h('td', { colspan: spec.columns.length, class: 'empty' },
        st.name ? 'Nothing matches the filter.' : (spec.empty || 'None yet.'))));
    } else {
      fill(tbody, items.map(row => h('tr', {}, spec.columns.map(c =>
        h('td', { class: c.num ? 'num' : '' }, c.render ? c.render(row) : String(pick(row, c.sort) ?? '–'))))));
    }
    const first = items.length ? (r.page - 1) * r.page_size + 1 : 0;
    info.textContent = `${num(first)}–${num(first + items.length - (items.length ? 1 : 0))} of ${num(r.filtered_count)}`
      + (r.filtered_count !== r.total_count ? ` (filtered from ${num(r.total_count)})` : '');
    pageBox.textContent = `Page ${num(r.page)} of ${num(r.page_count)}`;
    prev.disabled = r.page <= 1;
    next.disabled = r.page >= r.page_count;
  }

  const el = h('div', { class: 'paged', dataset: { table: spec.id || '' } },
    h('div', { class: 'toolbar' }, filter, regex, h('span', { class: 'grow' }), status, size),
    h('div', { class: 'table-wrap' }, h('table', { class: 'list' }, thead, tbody)),
    h('div', { class: 'pager' }, info, h('span', { class: 'grow' }), prev, pageBox, next));
  header();
  return { el, refresh };
}

/** A plain table of rows already in hand (small lists: users, bindings, ...). */
export function staticTable(columns, rows, empty = 'None.') {
  return h('div', { class: 'table-wrap' }, h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, columns.map(c => h('th', { class: c.num ? 'num' : '' }, c.label)))),
    h('tbody', {}, rows.length
      ? rows.map(row => h('tr', {}, columns.map(c => h('td', { class: c.num ? 'num' : '' },
        c.render ? c.render(row) : String(pick(row, c.key) ?? '–')))))
      : h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, empty)))));
}
