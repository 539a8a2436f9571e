/**
 * The gateway's web console: the user's clusters (and, for admins, everyone's), their events
 * and logs, scale and stop, and use over time against the quota. It talks to the gateway's
 * REST API only, with the session cookie the login set; writes add the client header the API
 * requires of cookie-authenticated writes.
 */

import { formatAge, formatBytes } from '../format';
import { Child, append, el, replace, svg } from './dom';
import {
  IFilters,
  IOverviewCluster,
  IQuota,
  IUsage,
  IUsageRow,
  chartGeometry,
  dashboardUrl,
  describeOptions,
  describeWorkers,
  errorMessage,
  fillDays,
  formatHours,
  overviewPath,
  quotaKind,
  quotaPath,
  quotaScope,
  shareState,
  usageByDayPath,
  usageScope,
  usageTablePath,
  utcDay
} from './model';

const CLIENT_HEADER = 'X-Dask-Gateway-Client';
const CLUSTERS_EVERY_MS = 5000;
const USAGE_EVERY_MS = 60000;
const STATUS_CLASSES: Record<string, string> = {
  PENDING: 'dg-status-pending',
  RUNNING: 'dg-status-running',
  STOPPING: 'dg-status-stopping',
  STOPPED: 'dg-status-stopped',
  FAILED: 'dg-status-failed'
};

class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

interface IContext {
  user: string;
  admin: boolean;
  prefix: string;
}

/** One call to the gateway's API; errors carry the gateway's message. */
async function api<T>(ctx: IContext, path: string, method = 'GET', body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers[CLIENT_HEADER] = 'dask-gateway-console';
    headers['Content-Type'] = 'application/json';
  }
  const resp = await fetch(ctx.prefix + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store'
  });
  const text = await resp.text();
  if (!resp.ok) {
    throw new ApiError(resp.status, errorMessage(resp.status, text));
  }
  return (text ? JSON.parse(text) : undefined) as T;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function time(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
}

/** A table cell with the label a phone-width screen shows beside its value. */
function cell(label: string, ...children: Child[]): HTMLTableCellElement {
  return el('td', { 'data-label': label }, ...children);
}

class Console {
  private readonly alert = el('div', { id: 'dg-alert', class: 'dg-alert', role: 'alert' });
  private readonly notice = el('div', { id: 'dg-notice', class: 'dg-notice', role: 'status' });
  private readonly filters: IFilters = { everyone: false, user: '', group: '', showEnded: false };
  private readonly tbody = el('tbody');
  private readonly clustersTable: HTMLTableElement;
  private readonly headRow = el('tr');
  private readonly empty = el('p', { class: 'dg-empty' }, 'Loading clusters...');
  /** Why the last refresh failed (apart from the alert, which says what an action did). */
  private readonly refreshError = el('p', { class: 'dg-error', id: 'dg-refresh-error' });
  private readonly rows = new Map<string, Row>();
  private readonly usageBody = el('div', { id: 'dg-usage', class: 'dg-usage' });
  private readonly usageTitle = el('h2', {}, 'Your usage this period');
  private readonly usageTable = el('div', { id: 'dg-usage-table' });
  private readonly csvLink = el('a', { class: 'dg-button', id: 'dg-usage-csv', download: '' });
  private readonly bySelect = el(
    'select',
    { id: 'dg-usage-by', 'aria-label': 'Usage by' },
    el('option', { value: 'user' }, 'by user'),
    el('option', { value: 'group' }, 'by group')
  );
  private sessionEnded = false;
  private clustersTimer = 0;
  private usageTimer = 0;

  constructor(
    readonly ctx: IContext,
    readonly root: HTMLElement
  ) {
    this.clustersTable = el(
      'table',
      { class: 'dg-table dg-clusters', id: 'dg-clusters' },
      el('thead', {}, this.headRow),
      this.tbody
    );
  }

  start(): void {
    replace(
      this.root,
      this.alert,
      this.notice,
      this.clustersSection(),
      this.usageSection(),
      this.ctx.admin ? this.usageTableSection() : null
    );
    this.renderHead();
    void this.refreshClusters();
    void this.refreshUsage();
    if (this.ctx.admin) {
      void this.refreshUsageTable();
    }
  }

  // -- messages ---------------------------------------------------------------------
  showError(message: string): void {
    replace(this.alert, message);
    this.alert.classList.add('dg-visible');
  }

  clearError(): void {
    replace(this.alert);
    this.alert.classList.remove('dg-visible');
  }

  showNotice(message: string): void {
    replace(this.notice, message);
    this.notice.classList.toggle('dg-visible', !!message);
  }

  /** An error of a call: a 401 means the session ended (log in again), else its message. */
  failed(err: unknown): void {
    if (err instanceof ApiError && err.status === 401) {
      this.sessionEnded = true;
      window.clearTimeout(this.clustersTimer);
      window.clearTimeout(this.usageTimer);
      replace(
        this.alert,
        'Your session has ended. ',
        el('a', { href: './', id: 'dg-login-again' }, 'Log in again')
      );
      this.alert.classList.add('dg-visible');
      return;
    }
    this.showError(messageOf(err));
  }

  // -- clusters ---------------------------------------------------------------------
  private clustersSection(): HTMLElement {
    const controls = el('div', { class: 'dg-filters' });
    if (this.ctx.admin) {
      const everyone = el('input', { type: 'checkbox', id: 'dg-everyone' });
      const user = el('input', {
        id: 'dg-filter-user',
        placeholder: 'user',
        'aria-label': 'Filter by user',
        disabled: ''
      });
      const group = el('input', {
        id: 'dg-filter-group',
        placeholder: 'group',
        'aria-label': 'Filter by group',
        disabled: ''
      });
      everyone.addEventListener('change', () => {
        this.filters.everyone = everyone.checked;
        user.disabled = group.disabled = !everyone.checked;
        this.filtersChanged();
      });
      const onText = () => {
        this.filters.user = user.value;
        this.filters.group = group.value;
        this.filtersChanged();
      };
      user.addEventListener('change', onText);
      group.addEventListener('change', onText);
      append(
        controls,
        el('label', { class: 'dg-check' }, everyone, "Everyone's clusters"),
        user,
        group
      );
    }
    const ended = el('input', { type: 'checkbox', id: 'dg-show-ended' });
    ended.addEventListener('change', () => {
      this.filters.showEnded = ended.checked;
      this.filtersChanged(false);
    });
    const refresh = el(
      'button',
      { type: 'button', class: 'dg-button', id: 'dg-refresh' },
      'Refresh'
    );
    refresh.addEventListener('click', () => {
      void this.refreshClusters();
      void this.refreshUsage();
    });
    append(controls, el('label', { class: 'dg-check' }, ended, 'Show stopped'), refresh);
    return el(
      'section',
      { class: 'dg-section', id: 'dg-clusters-section' },
      el('h2', {}, 'Clusters'),
      controls,
      this.refreshError,
      this.clustersTable,
      this.empty
    );
  }

  private filtersChanged(usageToo = true): void {
    this.renderHead();
    for (const row of this.rows.values()) {
      row.remove();
    }
    this.rows.clear();
    void this.refreshClusters();
    if (usageToo) {
      void this.refreshUsage();
    }
  }

  private everyone(): boolean {
    return this.ctx.admin && this.filters.everyone;
  }

  private renderHead(): void {
    const names = ['Cluster', 'Status', 'Workers', 'Cores', 'Memory', 'Age', 'Options', ''];
    if (this.everyone()) {
      names.splice(1, 0, 'User');
    }
    replace(this.headRow, ...names.map(n => el('th', { scope: 'col' }, n)));
  }

  async refreshClusters(): Promise<void> {
    if (this.sessionEnded) {
      return;
    }
    window.clearTimeout(this.clustersTimer);
    try {
      const answer = await api<{ clusters: IOverviewCluster[] }>(
        this.ctx,
        overviewPath(this.filters, this.ctx.admin)
      );
      this.renderClusters(answer.clusters);
      replace(this.refreshError);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        this.failed(err);
      } else {
        replace(this.refreshError, `Could not refresh the clusters: ${messageOf(err)}`);
      }
    }
    if (!this.sessionEnded) {
      this.clustersTimer = window.setTimeout(() => void this.refreshClusters(), CLUSTERS_EVERY_MS);
    }
  }

  private renderClusters(clusters: IOverviewCluster[]): void {
    const seen = new Set<string>();
    let previous: HTMLTableRowElement | null = null;
    for (const cluster of clusters) {
      seen.add(cluster.name);
      let row = this.rows.get(cluster.name);
      if (row === undefined) {
        row = new Row(this, cluster.name);
        this.rows.set(cluster.name, row);
      }
      row.update(cluster, this.everyone());
      // Keep the list's order (newest first), each row followed by its details.
      const after: ChildNode | null = previous ? previous.nextSibling : this.tbody.firstChild;
      if (after !== row.tr) {
        this.tbody.insertBefore(row.tr, after);
      }
      if (row.tr.nextSibling !== row.details) {
        this.tbody.insertBefore(row.details, row.tr.nextSibling);
      }
      previous = row.details;
    }
    for (const [name, row] of this.rows) {
      if (!seen.has(name)) {
        row.remove();
        this.rows.delete(name);
      }
    }
    replace(this.empty, clusters.length ? '' : 'No clusters.');
    this.empty.classList.toggle('dg-visible', !clusters.length);
  }

  // -- usage ------------------------------------------------------------------------
  private usageSection(): HTMLElement {
    return el(
      'section',
      { class: 'dg-section', id: 'dg-usage-section' },
      this.usageTitle,
      this.usageBody
    );
  }

  async refreshUsage(): Promise<void> {
    if (this.sessionEnded) {
      return;
    }
    window.clearTimeout(this.usageTimer);
    const scope = usageScope(this.filters, this.ctx.admin);
    replace(
      this.usageTitle,
      scope.everyone
        ? "Everyone's usage this period"
        : scope.user
          ? `Usage of ${scope.user} this period`
          : scope.group
            ? `Usage of group ${scope.group} this period`
            : 'Your usage this period'
    );
    let usage: IUsage | null = null;
    let quota: IQuota | null = null;
    let problem = '';
    try {
      usage = await api<IUsage>(this.ctx, usageByDayPath(scope));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        problem = 'Usage is not available on this gateway.';
      } else if (err instanceof ApiError && err.status !== 401) {
        problem = err.message;
      } else {
        this.failed(err);
      }
    }
    const qPath = quotaPath(scope);
    if (usage !== null && qPath !== null) {
      try {
        quota = await api<IQuota>(this.ctx, qPath);
      } catch (err) {
        if (!(err instanceof ApiError) || err.status === 401) {
          this.failed(err);
        }
        // No quota route (404) or none for this user: the use alone is shown.
      }
    }
    if (usage === null) {
      replace(this.usageBody, el('p', { class: 'dg-empty dg-visible' }, problem));
    } else {
      this.renderUsage(usage, quota);
    }
    if (!this.sessionEnded) {
      this.usageTimer = window.setTimeout(() => void this.refreshUsage(), USAGE_EVERY_MS);
    }
  }

  private renderUsage(usage: IUsage, quota: IQuota | null): void {
    const total = usage.total;
    const summary = el(
      'p',
      { class: 'dg-usage-summary', id: 'dg-usage-summary' },
      `Since ${utcDay(usage.since)}: `,
      el('strong', {}, `${formatHours(total.core_hours)} core-hours`),
      `, ${formatHours(total.memory_gib_hours)} GiB-hours in ${total.clusters} cluster` +
        (total.clusters === 1 ? '' : 's')
    );
    const quotas = el('div', { class: 'dg-quotas', id: 'dg-quotas' });
    let limit: number | null = null;
    if (quota) {
      if (quota.message) {
        append(
          quotas,
          el('p', { class: `dg-quota-message dg-${quota.state}`, role: 'status' }, quota.message)
        );
      }
      for (const q of quota.quotas) {
        if (q.kind === 'core_hours') {
          limit = limit === null ? q.limit : Math.min(limit, q.limit);
        }
        const state = shareState(q.share, quota.warn_at);
        const width = `${Math.min(100, Math.max(0, q.share * 100)).toFixed(1)}%`;
        append(
          quotas,
          el(
            'div',
            { class: `dg-quota dg-${state}` },
            el(
              'span',
              { class: 'dg-quota-label' },
              `${formatHours(q.used)} of ${formatHours(q.limit)} ${quotaKind(q.kind)} ` +
                `(${quotaScope(q)}, ${Math.round(q.share * 100)} %)`
            ),
            svg(
              'svg',
              { class: 'dg-quota-bar', width: '100%', height: 8, role: 'presentation' },
              svg('rect', { class: 'dg-quota-track', x: 0, y: 0, width: '100%', height: 8 }),
              svg('rect', { class: 'dg-quota-fill', x: 0, y: 0, width, height: 8 })
            )
          )
        );
      }
      if (!quota.quotas.length) {
        append(quotas, el('p', { class: 'dg-muted' }, 'No quota applies.'));
      }
    }
    const days = fillDays(usage.rows, usage.since, usage.until);
    replace(this.usageBody, summary, quotas, this.chart(days, limit));
  }

  private chart(days: { day: string; value: number }[], limit: number | null): Element {
    const g = chartGeometry(days, limit);
    const root = svg('svg', {
      class: 'dg-chart',
      id: 'dg-usage-chart',
      viewBox: `0 0 ${g.width} ${g.height}`,
      role: 'img',
      'aria-label': `Core-hours per day, ${formatHours(g.total)} in total`
    });
    for (const t of g.yTicks) {
      append(
        root,
        svg('line', { class: 'dg-grid', x1: g.plot.left, x2: g.plot.right, y1: t.y, y2: t.y }),
        svg(
          'text',
          { class: 'dg-axis', x: g.plot.left - 6, y: t.y + 4, 'text-anchor': 'end' },
          t.label
        )
      );
    }
    for (const b of g.bars) {
      append(
        root,
        svg(
          'rect',
          { class: 'dg-bar', x: b.x, y: b.y, width: b.w, height: Math.max(0, b.h) },
          svg('title', {}, `${b.day}: ${formatHours(b.value)} core-hours`)
        )
      );
    }
    if (g.line) {
      append(root, svg('polyline', { class: 'dg-total', points: g.line }));
    }
    if (g.limit) {
      append(
        root,
        svg('line', {
          class: 'dg-limit',
          x1: g.plot.left,
          x2: g.plot.right,
          y1: g.limit.y,
          y2: g.limit.y
        }),
        svg(
          'text',
          {
            class: 'dg-axis dg-limit-label',
            x: g.plot.right,
            y: g.limit.y - 4,
            'text-anchor': 'end'
          },
          `quota ${formatHours(g.limit.value)}`
        )
      );
    }
    for (const l of g.xLabels) {
      append(
        root,
        svg('text', { class: 'dg-axis', x: l.x, y: g.height - 6, 'text-anchor': 'middle' }, l.label)
      );
    }
    return el(
      'figure',
      { class: 'dg-figure' },
      root,
      el(
        'figcaption',
        { class: 'dg-muted' },
        'Bars: core-hours per day (UTC). Line: the running total' +
          (g.limit ? '; dashed: the quota.' : '.')
      )
    );
  }

  // -- usage by user or group (admins) ------------------------------------------------
  private usageTableSection(): HTMLElement {
    this.bySelect.addEventListener('change', () => void this.refreshUsageTable());
    return el(
      'section',
      { class: 'dg-section', id: 'dg-usage-table-section' },
      el('h2', {}, 'Usage by user or group'),
      el('div', { class: 'dg-filters' }, this.bySelect, this.csvLink),
      this.usageTable
    );
  }

  async refreshUsageTable(): Promise<void> {
    const by = this.bySelect.value === 'group' ? 'group' : 'user';
    this.csvLink.setAttribute('href', this.ctx.prefix + usageTablePath(by, 'csv'));
    replace(this.csvLink, 'Download CSV');
    try {
      const usage = await api<IUsage>(this.ctx, usageTablePath(by));
      replace(this.usageTable, this.usageRows(usage, by));
      this.csvLink.classList.remove('dg-hidden');
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        this.csvLink.classList.add('dg-hidden');
        replace(
          this.usageTable,
          el('p', { class: 'dg-empty dg-visible' }, 'Usage is not available on this gateway.')
        );
      } else {
        this.failed(err);
      }
    }
  }

  private usageRows(usage: IUsage, by: string): HTMLElement {
    const label = by === 'group' ? 'Group' : 'User';
    const line = (name: string, r: IUsageRow, cls = '') =>
      el(
        'tr',
        cls ? { class: cls } : {},
        cell(label, name),
        cell('Clusters', String(r.clusters)),
        cell('Core-hours', formatHours(r.core_hours)),
        cell('GiB-hours', formatHours(r.memory_gib_hours))
      );
    const body = el('tbody');
    for (const r of usage.rows) {
      const name = by === 'group' ? (r.group ?? '(no group)') : (r.user ?? '');
      append(body, line(name, r));
    }
    append(body, line('Total', usage.total, 'dg-total-row'));
    return el(
      'table',
      { class: 'dg-table dg-usage-rows' },
      el('caption', { class: 'dg-muted' }, `From ${time(usage.since)} to ${time(usage.until)}`),
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          ...[label, 'Clusters', 'Core-hours', 'GiB-hours'].map(n => el('th', { scope: 'col' }, n))
        )
      ),
      body
    );
  }

  // -- actions ----------------------------------------------------------------------
  async scale(name: string, count: number): Promise<void> {
    this.clearError();
    try {
      const result = await api<{ ok: boolean; msg: string | null }>(
        this.ctx,
        `/api/v1/clusters/${encodeURIComponent(name)}/scale`,
        'POST',
        { count }
      );
      this.showNotice(result.ok ? `Scaled ${name} to ${count} workers` : (result.msg ?? ''));
    } catch (err) {
      this.failed(err);
    }
    void this.refreshClusters();
  }

  async stop(name: string): Promise<void> {
    this.clearError();
    try {
      await api<void>(this.ctx, `/api/v1/clusters/${encodeURIComponent(name)}`, 'DELETE');
      this.showNotice(`Stopping ${name}`);
    } catch (err) {
      this.failed(err);
    }
    void this.refreshClusters();
  }
}

/** A cluster's row in the table, and its details row (events and logs), kept across
 * refreshes so what the user typed or opened stays. */
class Row {
  readonly tr = el('tr', { class: 'dg-cluster' });
  readonly details = el('tr', { class: 'dg-details dg-hidden' });
  private readonly detailsCell = el('td', { colspan: '9' });
  private readonly actions = el('div', { class: 'dg-actions' });
  private readonly dashboard = el('a', {
    class: 'dg-button dg-dashboard',
    target: '_blank',
    rel: 'noopener noreferrer'
  });
  private readonly scaleInput = el('input', {
    type: 'number',
    min: '0',
    step: '1',
    class: 'dg-scale-input',
    'aria-label': 'Workers'
  });
  private readonly scaleButton = el(
    'button',
    { type: 'button', class: 'dg-button dg-scale' },
    'Scale'
  );
  private readonly stopButton = el(
    'button',
    { type: 'button', class: 'dg-button dg-stop' },
    'Stop'
  );
  private readonly confirm = el('span', { class: 'dg-confirm dg-hidden' });
  private readonly detailsButton = el(
    'button',
    { type: 'button', class: 'dg-button dg-toggle', 'aria-expanded': 'false' },
    'Details'
  );
  private readonly events = el('ol', { class: 'dg-events' });
  private readonly logs = el('pre', { class: 'dg-log' });
  private readonly logPicker = el('select', { class: 'dg-log-picker', 'aria-label': 'Log' });
  private logTexts: Record<string, string> = {};
  private open = false;
  private scaleTouched = false;

  constructor(
    private readonly owner: Console,
    readonly name: string
  ) {
    this.tr.setAttribute('data-cluster', name);
    this.details.setAttribute('data-cluster', name);
    append(this.details, this.detailsCell);
    const yes = el(
      'button',
      { type: 'button', class: 'dg-button dg-danger dg-stop-yes' },
      'Stop it'
    );
    const no = el('button', { type: 'button', class: 'dg-button dg-stop-no' }, 'Cancel');
    append(this.confirm, 'Stop this cluster? ', yes, no);
    this.stopButton.addEventListener('click', () => this.confirming(true));
    no.addEventListener('click', () => this.confirming(false));
    yes.addEventListener('click', () => {
      this.confirming(false);
      void this.owner.stop(this.name);
    });
    this.scaleInput.addEventListener('input', () => (this.scaleTouched = true));
    this.scaleButton.addEventListener('click', () => {
      const count = Number(this.scaleInput.value);
      if (!Number.isInteger(count) || count < 0) {
        this.owner.showError('Give a whole number of workers (0 or more)');
        return;
      }
      this.scaleTouched = false;
      void this.owner.scale(this.name, count);
    });
    this.detailsButton.addEventListener('click', () => this.toggle());
    this.logPicker.addEventListener('change', () => this.showLog());
    const refresh = el('button', { type: 'button', class: 'dg-button' }, 'Refresh');
    refresh.addEventListener('click', () => void this.load());
    append(
      this.detailsCell,
      el(
        'div',
        { class: 'dg-details-grid' },
        el('div', {}, el('h3', {}, 'Events'), this.events),
        el(
          'div',
          {},
          el('h3', { class: 'dg-log-title' }, 'Logs', this.logPicker, refresh),
          this.logs
        )
      )
    );
  }

  private confirming(on: boolean): void {
    this.confirm.classList.toggle('dg-hidden', !on);
    this.stopButton.classList.toggle('dg-hidden', on);
  }

  update(c: IOverviewCluster, showUser: boolean): void {
    const active = ['PENDING', 'RUNNING'].includes(c.status);
    const now = Date.now();
    const age =
      c.stop_time !== null
        ? `ran ${formatAge((c.stop_time - c.start_time) / 1000)}`
        : formatAge((now - c.start_time) / 1000);
    const options = describeOptions(c.options);
    const link = dashboardUrl(this.owner.ctx.prefix, c);
    if (link) {
      this.dashboard.setAttribute('href', link);
      replace(this.dashboard, 'Dashboard');
    }
    this.dashboard.classList.toggle('dg-hidden', !link);
    if (!this.scaleTouched && document.activeElement !== this.scaleInput) {
      this.scaleInput.value = String(c.workers.requested);
    }
    for (const node of [this.scaleInput, this.scaleButton, this.stopButton]) {
      node.classList.toggle('dg-hidden', !active);
    }
    if (!active) {
      this.confirm.classList.add('dg-hidden');
    }
    replace(
      this.actions,
      this.dashboard,
      el('span', { class: 'dg-scale-group' }, this.scaleInput, this.scaleButton),
      this.stopButton,
      this.confirm,
      this.detailsButton
    );
    const cells: HTMLTableCellElement[] = [
      cell(
        'Cluster',
        el('span', { class: 'dg-name', title: c.name }, c.name.slice(0, 12)),
        c.groups.length ? el('span', { class: 'dg-muted dg-groups' }, c.groups.join(', ')) : null
      ),
      cell(
        'Status',
        el('span', { class: `dg-status ${STATUS_CLASSES[c.status] ?? ''}` }, c.status.toLowerCase())
      ),
      cell('Workers', describeWorkers(c.workers)),
      cell('Cores', String(Math.round(c.cores * 100) / 100)),
      cell('Memory', formatBytes(c.memory)),
      cell('Age', age),
      cell(
        'Options',
        options.length
          ? el('ul', { class: 'dg-options' }, ...options.map(o => el('li', {}, o)))
          : el('span', { class: 'dg-muted' }, 'defaults')
      ),
      el('td', {}, this.actions)
    ];
    if (showUser) {
      cells.splice(1, 0, cell('User', c.user));
    }
    replace(this.tr, ...cells);
    this.detailsCell.setAttribute('colspan', String(cells.length));
    this.tr.classList.toggle('dg-ended', !active && c.status !== 'STOPPING');
  }

  private toggle(): void {
    this.open = !this.open;
    this.details.classList.toggle('dg-hidden', !this.open);
    this.detailsButton.setAttribute('aria-expanded', String(this.open));
    if (this.open) {
      void this.load();
    }
  }

  /** The cluster's events and the end of its logs (the existing routes). */
  async load(): Promise<void> {
    const base = `/api/v1/clusters/${encodeURIComponent(this.name)}`;
    try {
      const answer = await api<{
        events: { time: number; kind: string; message: string; detail: string }[];
      }>(this.owner.ctx, `${base}/events?limit=1000`);
      const items = answer.events
        .slice(-100)
        .map(e =>
          el(
            'li',
            { class: 'dg-event' },
            el('time', { class: 'dg-muted' }, time(e.time)),
            ' ',
            el('span', { class: 'dg-event-kind' }, e.kind),
            ' ',
            el('span', { class: 'dg-event-message' }, e.message),
            e.detail ? el('pre', { class: 'dg-log dg-event-detail' }, e.detail) : null
          )
        );
      replace(
        this.events,
        ...(items.length ? items : [el('li', { class: 'dg-muted' }, 'No events.')])
      );
    } catch (err) {
      replace(this.events, el('li', { class: 'dg-error' }, messageOf(err)));
    }
    try {
      const answer = await api<{ logs: Record<string, string> }>(
        this.owner.ctx,
        `${base}/logs?tail=200`
      );
      this.logTexts = answer.logs;
      const chosen = this.logPicker.value;
      const names = Object.keys(answer.logs);
      replace(this.logPicker, ...names.map(n => el('option', { value: n }, n)));
      if (names.includes(chosen)) {
        this.logPicker.value = chosen;
      }
      this.showLog();
    } catch (err) {
      this.logTexts = {};
      replace(this.logPicker);
      replace(this.logs, messageOf(err));
    }
  }

  private showLog(): void {
    const text = this.logTexts[this.logPicker.value];
    replace(this.logs, text === undefined ? 'No logs.' : text || '(empty)');
    // The newest lines matter most: show the end.
    this.logs.scrollTop = this.logs.scrollHeight;
  }

  remove(): void {
    this.tr.remove();
    this.details.remove();
  }
}

function main(): void {
  const root = document.getElementById('dg-console');
  if (root === null) {
    return;
  }
  const data = document.body.dataset;
  const ctx: IContext = {
    user: data.user ?? '',
    admin: data.admin === '1',
    prefix: data.prefix ?? ''
  };
  new Console(ctx, root).start();
}

main();
