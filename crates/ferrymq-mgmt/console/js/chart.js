// Time-series charts on uPlot (vendored, MIT). Each chart also writes its newest values
// into data-* attributes and a small legend of its own, so the numbers are readable
// without hovering (and tests can read what the chart shows).

import uPlot from '../vendor/uplot/uPlot.esm.js';
import { h, fill, num } from './dom.js';

export const COLORS = ['#1f77b4', '#2ca02c', '#ff7f0e', '#d62728', '#9467bd', '#8c564b', '#17becf', '#7f7f7f'];

/**
 * A line chart. series: [{key, label, color?}], unit: '/s' or ''. Returns
 * {el, set(times_ms, {key: values}), destroy()}.
 */
export function lineChart(id, title, series, unit = '') {
  const plotBox = h('div', { class: 'plot' });
  const legend = h('div', { class: 'legend' });
  const el = h('figure', { class: 'chart', dataset: { chart: id } },
    h('figcaption', {}, title), plotBox, legend);
  let plot = null;
  let data = [[], ...series.map(() => [])];
  const fmt = v => (v == null ? '–' : unit === '/s' ? `${v >= 100 ? num(Math.round(v)) : v.toFixed(1)}/s` : num(v));

  function make() {
    const width = Math.max(240, plotBox.clientWidth || 480);
    plot = new uPlot({
      width,
      height: 200,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(unit ? 1 : 5, max * 1.1)] } },
      axes: [{}, { size: 60, values: (u, vals) => vals.map(v => (unit === '/s' ? `${v}/s` : num(v))) }],
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 2,
        fill: unit ? undefined : `${s.color || COLORS[i % COLORS.length]}22`,
        value: (u, v) => fmt(v),
      }))],
    }, data, plotBox);
  }

  function drawLegend() {
    fill(legend, series.map((s, i) => {
      const vals = data[i + 1];
      const last = vals.length ? vals[vals.length - 1] : null;
      el.dataset[`last${s.key.replace(/(^|_)(\w)/g, (m, a, c) => c.toUpperCase())}`] = last == null ? '' : String(last);
      return h('span', { class: 'legend-item', dataset: { series: s.key } },
        h('i', { style: `background:${s.color || COLORS[i % COLORS.length]}` }), `${s.label} `, h('b', {}, fmt(last)));
    }));
  }

  function set(times, values) {
    data = [times.map(t => t / 1000), ...series.map(s => values[s.key] || [])];
    if (!plot && plotBox.isConnected) make();
    if (plot) plot.setData(data);
    drawLegend();
  }

  const onResize = () => { if (plot) plot.setSize({ width: Math.max(240, plotBox.clientWidth), height: 200 }); };
  window.addEventListener('resize', onResize);
  drawLegend();
  return {
    el,
    set,
    destroy() { window.removeEventListener('resize', onResize); if (plot) plot.destroy(); plot = null; },
  };
}

/** Keeps the last `max` points of live values (charts the API has no history for). */
export function ring(max = 120) {
  const times = [];
  const values = {};
  return {
    push(t, obj) {
      times.push(t);
      for (const [k, v] of Object.entries(obj)) (values[k] ||= []).push(v);
      if (times.length > max) {
        times.shift();
        for (const k of Object.keys(values)) values[k].shift();
      }
    },
    times,
    values,
  };
}

/**
 * Turns RabbitMQ-style `samples` (cumulative counters, newest first) into per-second rates
 * at each sample time, oldest first.
 */
export function samplesToRates(samples) {
  const s = (samples || []).slice().reverse();
  const times = [];
  const rates = [];
  for (let i = 1; i < s.length; i += 1) {
    const dt = (s[i].timestamp - s[i - 1].timestamp) / 1000;
    times.push(s[i].timestamp);
    rates.push(dt > 0 ? Math.max(0, (s[i].sample - s[i - 1].sample) / dt) : 0);
  }
  return { times, rates };
}

/** Gauge samples (lengths), oldest first. */
export function samplesToValues(samples) {
  const s = (samples || []).slice().reverse();
  return { times: s.map(x => x.timestamp), values: s.map(x => x.sample) };
}
