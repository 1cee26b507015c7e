// The support console (SPEC section 15). Plain browser JavaScript, no build step, no library:
// it runs under `script-src 'self'` and `connect-src 'self'`, so it builds every element with
// the DOM API (never markup from strings) and reads only this server's API with the token the
// person pasted, which stays in sessionStorage for this tab.
'use strict';

(function () {
  const TOKEN_KEY = 'ledger-console-token';
  const PAGE_SIZE = 50;
  const EVENTS_PAGE = 1000;
  const HISTORY_POINTS = 200;

  // ---------------------------------------------------------------------------------------
  // Reads. Each view of the page has one fetch function. `history`, `models` and `usage` ask
  // the insight reads of SPEC section 13; models and usage answer for now only, so a page
  // "as of" an earlier instant shows explain's own models and usage for that instant.
  // ---------------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  async function request(path) {
    let response;
    try {
      response = await fetch(path, {
        headers: { Authorization: 'Bearer ' + token(), Accept: 'application/json' },
        cache: 'no-store',
      });
    } catch (err) {
      throw new ApiFailure(0, 'NETWORK', 'The ledger did not answer (' + err.message + ').');
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiFailure(response.status, error.code || 'HTTP_' + response.status,
        error.message || response.statusText, response.headers.get('Retry-After'));
    }
    return body;
  }

  const account = (id) => '/v1/accounts/' + encodeURIComponent(id);

  const reads = {
    summary(id) {
      return request(account(id));
    },

    explain(id, at) {
      return request(account(id) + '/explain' + (at ? '?at=' + encodeURIComponent(at) : ''));
    },

    // Every event, paging on the last version (SPEC section 8).
    async events(id) {
      const all = [];
      let after = 0;
      for (;;) {
        const page = await request(account(id) + '/events?after=' + after + '&limit=' + EVENTS_PAGE);
        all.push(...page.events);
        if (page.events.length < EVENTS_PAGE) {
          return all;
        }
        after = page.events[page.events.length - 1].version;
      }
    },

    // The balance over time, from the account's first event to the instant shown: at most
    // HISTORY_POINTS points, the last one on that instant.
    history(id, base) {
      const timeline = base.explanation.timeline;
      const to = Date.parse(base.explanation.at);
      const from = timeline.length ? Date.parse(timeline[0].occurred_at) : to;
      const stepS = Math.max(1, Math.ceil((to - from) / 1000 / (HISTORY_POINTS - 1)));
      const first = new Date(to - Math.floor((to - from) / 1000 / stepS) * stepS * 1000);
      return request(account(id) + '/history?from=' + encodeURIComponent(first.toISOString()) +
        '&to=' + encodeURIComponent(new Date(to).toISOString()) + '&step=' + stepS + 's');
    },

    // The badges now; as of an earlier instant, explain's access per model and the trials'
    // counts from the events up to it (kind and price are not in explain).
    async models(id, base) {
      if (!base.at) {
        return request(account(id) + '/models');
      }
      const trials = trialsFrom(base.events);
      const models = base.explanation.models.map((model) => {
        const access = { paid: 'open', trial: 'trial', blocked: 'locked' }[model.access];
        const trial = trials.get(model.model) || null;
        if (trial) {
          trial.status = model.trial_status || trial.status;
        }
        return {
          model: model.model,
          kind: null,
          price: null,
          access,
          required_tier: access === 'open' ? null : model.min_tier,
          trial,
          reason_code: model.reason_code,
        };
      });
      return { models };
    },

    // Usage by model now, from the usage view; as of an earlier instant, explain's.
    async usage(id, base) {
      return base.at ? base.explanation.usage : request(account(id) + '/usage?by=model');
    },
  };

  function trialsFrom(events) {
    const trials = new Map();
    for (const event of events) {
      const data = event.data;
      if (event.type === 'trial_granted') {
        trials.set(data.model, {
          kind: data.kind,
          limit: data.kind === 'runs' ? data.runs : null,
          used: 0,
          opened_at: null,
          closes_at: null,
          status: 'unused',
        });
      } else if (event.type === 'trial_run_consumed' && trials.has(data.model)) {
        Object.assign(trials.get(data.model), { used: data.used, limit: data.limit });
      } else if (event.type === 'trial_window_opened' && trials.has(data.model)) {
        Object.assign(trials.get(data.model), { opened_at: data.opened_at, closes_at: data.closes_at });
      }
    }
    return trials;
  }

  // ---------------------------------------------------------------------------------------
  // State and small helpers
  // ---------------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const view = { data: null, page: 0 };

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? '' : String(value));
      }
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, String(value));
    }
    return node;
  }

  const credits = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));

  // Instants shown as the API writes them, in UTC to the second: support compares them with
  // API answers and logs, and one time zone for everybody avoids "which 9 o'clock".
  function when(instant) {
    if (!instant) {
      return '—';
    }
    return instant.replace('T', ' ').replace(/\.\d+/, '').replace(/Z$/, ' UTC');
  }

  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function showMessage(text) {
    const box = $('message');
    box.textContent = text;
    box.hidden = false;
  }

  function clearMessage() {
    $('message').hidden = true;
    $('message').textContent = '';
  }

  function explainFailure(failure, id) {
    switch (failure.status) {
      case 401:
        // A refused token is of no use for the next read either: ask for another.
        sessionStorage.removeItem(TOKEN_KEY);
        showTokenForm();
        return 'The token was refused (401 ' + failure.code + '): ' + failure.message +
          ' Paste a support or finance token.';
      case 403:
        return 'This token may not read accounts (403 ' + failure.code + '): ' + failure.message +
          ' Use a support or finance token.';
      case 404:
        return 'No such account (404 ' + failure.code + '): ' + failure.message;
      case 400:
        return 'The ledger refused the request (400 ' + failure.code + '): ' + failure.message;
      case 503:
        return 'The ledger is unavailable (503 ' + failure.code + '): ' + failure.message +
          (failure.retryAfter ? ' Try again in ' + failure.retryAfter + ' s.' : ' Try again shortly.');
      case 0:
        return failure.message;
      default:
        return 'Reading ' + id + ' failed (' + failure.status + ' ' + failure.code + '): ' + failure.message;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Loading
  // ---------------------------------------------------------------------------------------

  function asOfInstant() {
    const value = $('as-of').value;
    // The picker is labelled UTC, so its wall time is read as UTC.
    return value ? new Date(value + 'Z').toISOString() : null;
  }

  let generation = 0;

  async function show() {
    clearMessage();
    const id = $('account-id').value.trim();
    if (!token()) {
      showTokenForm();
      showMessage('Paste a support or finance token first.');
      return;
    }
    if (!id) {
      showMessage('Type an account id.');
      return;
    }
    const at = asOfInstant();
    const mine = ++generation;
    $('status').textContent = 'Loading ' + id + (at ? ' as of ' + when(at) : '') + '…';
    try {
      const [summary, explanation, events] = await Promise.all([
        reads.summary(id), reads.explain(id, at), reads.events(id),
      ]);
      const base = {
        at,
        summary,
        explanation,
        // Explain replays a prefix of the stream: the same prefix of the events.
        events: events.filter((event) => event.version <= explanation.version),
        allEvents: events,
      };
      const [history, models, usage] = await Promise.all([
        reads.history(id, base), reads.models(id, base), reads.usage(id, base),
      ]);
      if (mine !== generation) {
        return;
      }
      view.data = { id, at, ...base, history, models, usage };
      view.page = 0;
      render();
      $('status').textContent = 'Showing ' + id + ' as of ' + when(explanation.at) + '.';
      $('account').hidden = false;
    } catch (failure) {
      if (mine !== generation) {
        return;
      }
      $('status').textContent = '';
      $('account').hidden = true;
      view.data = null;
      if (failure instanceof ApiFailure) {
        showMessage(explainFailure(failure, id));
      } else {
        showMessage('The page could not show this account: ' + failure.message);
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Rendering
  // ---------------------------------------------------------------------------------------

  function render() {
    renderSummary();
    renderBuckets();
    renderChart();
    renderModels();
    renderUsage();
    renderTimeline();
  }

  // Last and next refresh as of the instant shown: explain's, so "as of" moves them too.
  function refreshDates(data) {
    const ex = data.explanation;
    return {
      last: ex.last_refresh_at ? when(ex.last_refresh_at) : '—',
      next: ex.next_refresh_at ? when(ex.next_refresh_at) : 'through billing (renewal)',
    };
  }

  function renderSummary() {
    const data = view.data;
    const ex = data.explanation;
    const balance = ex.balance;
    const refresh = refreshDates(data);
    $('summary-as-of').textContent = 'as of ' + when(ex.at);
    const facts = [
      ['Account', data.id, 'account'],
      ['Tier', ex.tier, 'tier'],
      ['Billing', ex.billing || 'none', 'billing'],
      ['Scope', ex.scope, 'scope'],
      ['Business verification', ex.business_verification, 'verification'],
      ['Available', balance.unlimited ? 'unlimited' : credits(balance.total), 'total'],
      ['Held by open holds', credits(balance.held), 'held'],
      ['Last refresh', refresh.last, 'last-refresh'],
      ['Next refresh', refresh.next, 'next-refresh'],
    ];
    $('summary').replaceChildren(...facts.map(([label, value, key]) => el('div', { class: 'fact' },
      el('dt', {}, label),
      el('dd', { id: 'fact-' + key }, value === null || value === undefined ? '—' : value))));
  }

  function bucketRow(bucket, id, remaining, of, expires, state) {
    return el('tr', { 'data-bucket': bucket, 'data-id': id },
      el('th', { scope: 'row' }, bucket), el('td', {}, id),
      el('td', { class: 'num', 'data-remaining': remaining }, credits(remaining)),
      el('td', { class: 'num' }, credits(of)), el('td', {}, expires), el('td', {}, state));
  }

  function renderBuckets() {
    const balance = view.data.explanation.balance;
    const rows = [];
    const state = (live) => (live ? 'live' : 'expired');
    if (balance.allowance) {
      const a = balance.allowance;
      rows.push(bucketRow('allowance', a.id, a.remaining, a.amount, when(a.period_end), state(a.live)));
    }
    for (const lot of balance.top_ups) {
      rows.push(bucketRow('top-up', lot.lot_id, lot.remaining, lot.credits, when(lot.expires_at), state(lot.live)));
    }
    for (const grant of balance.grants) {
      rows.push(bucketRow('grant', grant.grant_id, grant.remaining, grant.credits,
        grant.expires_at ? when(grant.expires_at) : 'never', state(grant.live)));
    }
    for (const hold of balance.holds) {
      rows.push(bucketRow('hold', hold.hold_id, hold.amount, hold.amount, when(hold.expires_at),
        (hold.live ? 'open' : 'timed out') + ', ' + hold.model));
    }
    fill($('buckets').tBodies[0], rows);
    const due = view.data.explanation.due;
    $('due-block').hidden = due.length === 0;
    $('due').replaceChildren(...due.map((entry) => el('li', {}, entry.type + ': ' + entry.summary)));
  }

  const LAYERS = [
    ['allowance', 'Allowance'],
    ['top_ups', 'Top-ups'],
    ['grants', 'Grants'],
  ];

  // A stacked step chart: allowance, top-ups and grants add up to the available total; held
  // credits (already taken out of the buckets) are a dashed line.
  function renderChart() {
    const points = view.data.history.points;
    const width = 760;
    const height = 240;
    const pad = { left: 64, right: 16, top: 12, bottom: 36 };
    const times = points.map((p) => Date.parse(p.at));
    const t0 = Math.min(...times);
    const t1 = Math.max(...times, t0 + 1);
    const top = Math.max(1, ...points.map((p) => Math.max(p.allowance + p.top_ups + p.grants, p.held)));
    const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
    const root = svg('svg', {
      viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-labelledby': 'chart-svg-title',
      class: 'chart', preserveAspectRatio: 'none',
    });
    const title = svg('title', { id: 'chart-svg-title' });
    title.textContent = 'Available credits over time, split by bucket; the table below has every point.';
    root.append(title);
    for (const fraction of [0, 0.5, 1]) {
      const value = Math.round(top * fraction);
      root.append(svg('line', { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: 'grid-line' }));
      const label = svg('text', { x: pad.left - 6, y: y(value) + 4, class: 'axis-label', 'text-anchor': 'end' });
      label.textContent = credits(value);
      root.append(label);
    }
    // Step edges: a value holds until the next point.
    const steps = (value) => points.flatMap((p, i) => {
      const next = i + 1 < points.length ? times[i + 1] : times[i];
      return [[x(times[i]), value(p)], [x(next), value(p)]];
    });
    let below = () => 0;
    for (const [key] of LAYERS) {
      const lower = below;
      const upper = (p) => lower(p) + p[key];
      const edge = steps(upper).concat(steps(lower).reverse());
      root.append(svg('polygon', {
        points: edge.map(([px, py]) => px.toFixed(1) + ',' + y(py).toFixed(1)).join(' '),
        class: 'layer layer-' + key,
      }));
      below = upper;
    }
    root.append(svg('polyline', {
      points: steps((p) => p.held).map(([px, py]) => px.toFixed(1) + ',' + y(py).toFixed(1)).join(' '),
      class: 'held-line',
    }));
    for (const [t, anchor] of [[t0, 'start'], [t1, 'end']]) {
      const label = svg('text', { x: x(t), y: height - 12, class: 'axis-label', 'text-anchor': anchor });
      label.textContent = when(new Date(t).toISOString());
      root.append(label);
    }
    $('chart').replaceChildren(root);
    $('chart-legend').replaceChildren(
      ...LAYERS.map(([key, label]) => el('span', { class: 'key' }, el('span', { class: 'swatch layer-' + key }), label)),
      el('span', { class: 'key' }, el('span', { class: 'swatch held-swatch' }), 'Held (dashed line)'));
    fill($('chart-table').tBodies[0], points.map((p) => el('tr', {},
      el('th', { scope: 'row', class: 'when' }, when(p.at)), el('td', { class: 'num' }, credits(p.total)),
      el('td', { class: 'num' }, credits(p.allowance)), el('td', { class: 'num' }, credits(p.top_ups)),
      el('td', { class: 'num' }, credits(p.grants)), el('td', { class: 'num' }, credits(p.held)))));
  }

  // Badge text carries the whole state; colour only repeats it.
  function badgeText(model) {
    if (model.access === 'open') {
      return 'open';
    }
    if (model.access === 'trial') {
      const trial = model.trial;
      if (trial && trial.kind === 'runs' && trial.limit !== null) {
        return 'trial ' + (trial.limit - trial.used) + '/' + trial.limit + ' left';
      }
      if (trial && trial.closes_at) {
        return 'trial window open until ' + when(trial.closes_at);
      }
      return 'trial window opens at the first run';
    }
    const why = { TRIAL_EXHAUSTED: ' (trial used up)', TRIAL_EXPIRED: ' (trial expired)' }[model.reason_code] || '';
    if (model.reason_code && !['MODEL_TIER_REQUIRED', 'TRIAL_EXHAUSTED', 'TRIAL_EXPIRED'].includes(model.reason_code)) {
      return 'locked — ' + model.reason_code.toLowerCase().replace(/_/g, ' ');
    }
    return 'locked — needs ' + model.required_tier + why;
  }

  function renderModels() {
    $('models').replaceChildren(...view.data.models.models.map((model) => el('li', {
      class: 'badge badge-' + model.access, 'data-model': model.model, 'data-access': model.access,
      title: model.reason || '',
    }, el('span', { class: 'model-name' }, model.model), el('span', { class: 'badge-text' }, badgeText(model)))));
  }

  function renderUsage() {
    const usage = view.data.usage;
    fill($('usage').tBodies[0], usage.rows.map((r) => el('tr', { 'data-model': r.key },
      el('th', { scope: 'row' }, r.key), el('td', { class: 'num' }, credits(r.runs)),
      el('td', { class: 'num' }, credits(r.credits)))));
    $('usage').tFoot.replaceChildren(el('tr', {}, el('th', { scope: 'row' }, 'Total'),
      el('td', { class: 'num' }, credits(usage.total.runs)), el('td', { class: 'num' }, credits(usage.total.credits))));
  }

  function changeText(change) {
    const sign = change.delta > 0 ? '+' : change.delta < 0 ? '−' : '±';
    return change.bucket + ' ' + change.id + ' ' + sign + credits(Math.abs(change.delta));
  }

  function renderTimeline(focusRow) {
    const timeline = view.data.explanation.timeline;
    const pages = Math.max(1, Math.ceil(timeline.length / PAGE_SIZE));
    view.page = Math.min(Math.max(0, view.page), pages - 1);
    const first = view.page * PAGE_SIZE;
    const shown = timeline.slice(first, first + PAGE_SIZE);
    fill($('timeline').tBodies[0], shown.map((entry) => el('tr', { tabindex: 0, 'data-version': entry.version },
      el('th', { scope: 'row', class: 'num' }, entry.version),
      el('td', { class: 'when' }, when(entry.occurred_at)),
      el('td', { class: 'type' }, entry.type),
      el('td', { class: 'text' }, entry.summary),
      el('td', { class: 'text' }, entry.changes.map(changeText).join('; ') || '—'),
      el('td', { class: 'num' }, credits(entry.after.available)),
      el('td', { class: 'num' }, credits(entry.after.allowance)),
      el('td', { class: 'num' }, credits(entry.after.top_ups)),
      el('td', { class: 'num' }, credits(entry.after.grants)),
      el('td', { class: 'num' }, credits(entry.after.held)))));
    $('page-info').textContent = timeline.length === 0 ? 'No events' :
      'Rows ' + (first + 1) + '–' + (first + shown.length) + ' of ' + timeline.length +
      ' (page ' + (view.page + 1) + ' of ' + pages + ')';
    $('prev').disabled = view.page === 0;
    $('next').disabled = view.page >= pages - 1;
    if (focusRow !== undefined) {
      const rows = $('timeline').tBodies[0].rows;
      if (rows.length) {
        rows[focusRow === 'last' ? rows.length - 1 : 0].focus();
      }
    }
  }

  function turnPage(delta, focusRow) {
    if (!view.data) {
      return;
    }
    view.page += delta;
    renderTimeline(focusRow);
  }

  function onTimelineKey(event) {
    const row = event.target.closest('tr[data-version]');
    if (!row) {
      return;
    }
    const moves = {
      ArrowDown: () => (row.nextElementSibling ? row.nextElementSibling.focus() : !$('next').disabled && turnPage(1, 'first')),
      ArrowUp: () => (row.previousElementSibling ? row.previousElementSibling.focus() : !$('prev').disabled && turnPage(-1, 'last')),
      PageDown: () => !$('next').disabled && turnPage(1, 'first'),
      PageUp: () => !$('prev').disabled && turnPage(-1, 'first'),
      Home: () => row.parentElement.firstElementChild.focus(),
      End: () => row.parentElement.lastElementChild.focus(),
    };
    if (moves[event.key]) {
      event.preventDefault();
      moves[event.key]();
    }
  }

  // ---------------------------------------------------------------------------------------
  // CSV of the events: the columns of `ledger audit export --format csv`, so the file
  // verifies with `ledger audit verify --file` like any export.
  // ---------------------------------------------------------------------------------------

  const CSV_COLUMNS = ['position', 'event_id', 'stream', 'version', 'type', 'schema_version',
    'occurred_at', 'recorded_at', 'command_id', 'actor', 'prev_hash', 'hash', 'data'];

  function csvField(value) {
    const text = typeof value === 'string' ? value : value === null || value === undefined ? '' : String(value);
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function csvText() {
    if (!view.data) {
      return '';
    }
    const lines = [CSV_COLUMNS.join(',')];
    for (const event of view.data.allEvents) {
      lines.push(CSV_COLUMNS.map((column) =>
        csvField(column === 'data' ? JSON.stringify(event.data) : event[column])).join(','));
    }
    return lines.join('\n') + '\n';
  }

  function downloadCsv() {
    if (!view.data) {
      return;
    }
    const blob = new Blob([csvText()], { type: 'text/csv' });
    const link = el('a', { href: URL.createObjectURL(blob), download: view.data.id + '-events.csv' });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  // ---------------------------------------------------------------------------------------
  // Token and wiring
  // ---------------------------------------------------------------------------------------

  function showTokenForm() {
    $('token-form').hidden = false;
    $('token-set').hidden = true;
  }

  function tokenSet() {
    $('token-form').hidden = true;
    $('token-set').hidden = false;
  }

  function start() {
    if (token()) {
      tokenSet();
    }
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token').value.trim();
      if (!value) {
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, value);
      $('token').value = '';
      tokenSet();
      clearMessage();
      if ($('account-id').value.trim()) {
        show();
      } else {
        $('account-id').focus();
      }
    });
    $('forget-token').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showTokenForm();
      $('token').focus();
    });
    $('account-form').addEventListener('submit', (event) => {
      event.preventDefault();
      show();
    });
    $('as-of').addEventListener('change', () => {
      if ($('account-id').value.trim()) {
        show();
      }
    });
    $('now').addEventListener('click', () => {
      $('as-of').value = '';
      show();
    });
    $('prev').addEventListener('click', () => turnPage(-1));
    $('next').addEventListener('click', () => turnPage(1));
    $('timeline').addEventListener('keydown', onTimelineKey);
    $('csv').addEventListener('click', downloadCsv);
  }

  // For the browser tests and for support scripting in the console: read-only views of what
  // the page shows.
  window.ledgerConsole = Object.freeze({ csv: csvText, reads });

  start();
}());
