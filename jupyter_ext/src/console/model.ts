/**
 * What the web console shows, as pure functions (no DOM, no network): unit-tested in Node.
 * The console (main.ts) turns these values into elements, always as text.
 */

import type { IQuotaEntry } from '../types';

/** A cluster as `GET /api/v1/overview` describes it. */
export interface IOverviewCluster {
  name: string;
  user: string;
  groups: string[];
  status: string;
  workers: { requested: number; running: number; pending: number };
  cores: number;
  memory: number;
  start_time: number;
  stop_time: number | null;
  options: Record<string, unknown>;
  dashboard_route: string | null;
}

/** One row of `GET /api/v1/usage`; the key naming the row depends on `by`. */
export interface IUsageRow {
  user?: string;
  group?: string | null;
  day?: string;
  clusters: number;
  core_seconds: number;
  memory_byte_seconds: number;
  core_hours: number;
  memory_gib_hours: number;
}

export interface IUsage {
  since: number;
  until: number;
  by: string;
  rows: IUsageRow[];
  total: IUsageRow;
  next_offset: number | null;
}

/** The gateway's `GET /api/v1/quota`, as the sidebar reads it too. */
export type { IQuotaEntry, IQuotaAnswer as IQuota } from '../types';
/** What the admin's filters ask for. */
export interface IFilters {
  everyone: boolean;
  user: string;
  group: string;
  showEnded: boolean;
}

export const ACTIVE_STATUSES = 'pending,running,stopping';
export const ALL_STATUSES = 'pending,running,stopping,stopped,failed';

/** A query string (with its `?`, or '' when empty) from the parameters that have a value. */
export function query(
  params: Record<string, string | number | boolean | null | undefined>
): string {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === '' || value === false) {
      continue;
    }
    const text = value === true ? '1' : String(value);
    parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(text)}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

/** The overview request for these filters (a user sees their own; admins may see all). */
export function overviewPath(filters: IFilters, admin: boolean): string {
  const everyone = admin && filters.everyone;
  return (
    '/api/v1/overview' +
    query({
      all: everyone,
      user: everyone ? filters.user.trim() : '',
      group: everyone ? filters.group.trim() : '',
      status: filters.showEnded ? ALL_STATUSES : ACTIVE_STATUSES
    })
  );
}

/** Whose usage the chart shows: the admin's filters when looking at everyone (a user filter,
 * else a group filter, else every user), otherwise the caller's own. */
export function usageScope(
  filters: IFilters,
  admin: boolean
): { user: string; group: string; everyone: boolean } {
  if (admin && filters.everyone) {
    const user = filters.user.trim();
    const group = user ? '' : filters.group.trim();
    return { user, group, everyone: !user && !group };
  }
  return { user: '', group: '', everyone: false };
}

/** The usage request by day for a scope. */
export function usageByDayPath(scope: { user: string; group: string }): string {
  return '/api/v1/usage' + query({ by: 'day', user: scope.user, group: scope.group });
}

/** The quota request: only for one user (the caller, or the one an admin filtered). */
export function quotaPath(scope: {
  user: string;
  group: string;
  everyone: boolean;
}): string | null {
  if (scope.everyone || scope.group) {
    return null;
  }
  return '/api/v1/quota' + query({ user: scope.user });
}

/** The admin's usage table by user or group, as JSON or as the CSV download. */
export function usageTablePath(by: string, format: 'json' | 'csv' = 'json'): string {
  return '/api/v1/usage' + query({ by, format: format === 'csv' ? 'csv' : '' });
}

/** Options as `name: value` lines, in the order given (values as JSON unless strings). */
export function describeOptions(options: Record<string, unknown>): string[] {
  return Object.entries(options).map(([key, value]) => {
    const text = typeof value === 'string' ? value : JSON.stringify(value);
    return `${key}: ${text}`;
  });
}

/** Workers as a row shows them: `2`, `2 of 3`, with the pending ones. */
export function describeWorkers(w: IOverviewCluster['workers']): string {
  let text = w.requested !== w.running ? `${w.running} of ${w.requested}` : String(w.running);
  if (w.pending > 0) {
    text += ` (${w.pending} starting)`;
  }
  return text;
}

/** A number of hours as the console words it: 12.5, 0.031, 1,234. */
export function formatHours(hours: number): string {
  if (hours === 0) {
    return '0';
  }
  if (Math.abs(hours) >= 100) {
    return Math.round(hours).toLocaleString('en-US');
  }
  if (Math.abs(hours) >= 1) {
    return String(Math.round(hours * 10) / 10);
  }
  return String(Number(hours.toPrecision(2)));
}

/** A quota's name as people say it. */
export function quotaKind(kind: string): string {
  return kind === 'core_hours' ? 'core-hours' : kind === 'memory_gib_hours' ? 'GiB-hours' : kind;
}

/** Whom a quota is for: the user's own, or a group's total its members share. */
export function quotaScope(q: IQuotaEntry): string {
  return q.scope === 'group' && q.group ? `shared by group ${q.group}` : 'personal';
}

/** The bar's state for a share of a quota: ok, warning (at `warnAt`), exhausted. */
export function shareState(share: number, warnAt: number): 'ok' | 'warning' | 'exhausted' {
  if (share >= 1) {
    return 'exhausted';
  }
  return share >= warnAt ? 'warning' : 'ok';
}

/** `2026-12-05` of a time (ms since the epoch), in UTC as the usage route counts days. */
export function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Every UTC day from `since` to `until` (ms) with its core-hours (0 where no row). */
export function fillDays(
  rows: IUsageRow[],
  since: number,
  until: number
): { day: string; value: number }[] {
  const byDay = new Map<string, number>();
  for (const row of rows) {
    if (row.day) {
      byDay.set(row.day, (byDay.get(row.day) ?? 0) + row.core_hours);
    }
  }
  const out: { day: string; value: number }[] = [];
  const start = Date.UTC(
    new Date(since).getUTCFullYear(),
    new Date(since).getUTCMonth(),
    new Date(since).getUTCDate()
  );
  const last = Math.max(start, until - 1);
  // Bounded: a long range is shown as its last 92 days.
  for (let t = start; t <= last && out.length < 10000; t += 86400000) {
    const day = utcDay(t);
    out.push({ day, value: byDay.get(day) ?? 0 });
  }
  return out.slice(-92);
}

/** A "nice" upper bound and step for an axis reaching `max`: 1, 2 or 5 times a power of 10. */
export function niceScale(max: number, ticks = 4): { top: number; step: number } {
  if (!(max > 0) || !isFinite(max)) {
    return { top: 1, step: 0.25 };
  }
  const rough = max / ticks;
  const power = Math.pow(10, Math.floor(Math.log10(rough)));
  const step = [1, 2, 5, 10].map(m => m * power).find(s => s >= rough) ?? 10 * power;
  return { top: Math.ceil(max / step - 1e-9) * step, step };
}

export interface IChart {
  width: number;
  height: number;
  plot: { left: number; top: number; right: number; bottom: number };
  bars: { x: number; y: number; w: number; h: number; day: string; value: number }[];
  /** The running total, as SVG polyline points. */
  line: string;
  total: number;
  limit: { y: number; value: number } | null;
  yTicks: { y: number; label: string }[];
  xLabels: { x: number; label: string }[];
}

/** The chart of use over time: a bar per day (core-hours that day), the running total as a
 * line, and the quota's limit for the period (if any) as a level, on one axis. */
export function chartGeometry(
  days: { day: string; value: number }[],
  limit: number | null,
  width = 640,
  height = 220
): IChart {
  const plot = { left: 44, top: 18, right: width - 8, bottom: height - 24 };
  const w = plot.right - plot.left;
  const h = plot.bottom - plot.top;
  let total = 0;
  const cumulative = days.map(d => (total += d.value));
  const { top, step } = niceScale(Math.max(total, limit ?? 0, ...days.map(d => d.value)));
  const y = (v: number) => plot.bottom - (v / top) * h;
  const slot = days.length ? w / days.length : w;
  const bars = days.map((d, i) => {
    const barH = (d.value / top) * h;
    return {
      x: plot.left + i * slot + slot * 0.15,
      y: plot.bottom - barH,
      w: Math.max(1, slot * 0.7),
      h: barH,
      day: d.day,
      value: d.value
    };
  });
  const line = cumulative
    .map((v, i) => `${(plot.left + (i + 0.5) * slot).toFixed(1)},${y(v).toFixed(1)}`)
    .join(' ');
  const yTicks = [];
  for (let v = 0; v <= top + step / 2; v += step) {
    yTicks.push({ y: y(v), label: formatHours(Number(v.toPrecision(6))) });
  }
  const every = Math.max(1, Math.ceil(days.length / 8));
  const xLabels = days
    .map((d, i) => ({ x: plot.left + (i + 0.5) * slot, label: d.day.slice(5), i }))
    .filter(l => l.i % every === 0)
    .map(({ x, label }) => ({ x, label }));
  return {
    width,
    height,
    plot,
    bars,
    line,
    total,
    limit: limit !== null && limit > 0 ? { y: y(limit), value: limit } : null,
    yTicks,
    xLabels
  };
}

/** The error text of a failed API call: the gateway's `{"error": message}`, else the status. */
export function errorMessage(status: number, body: string): string {
  try {
    const parsed: unknown = JSON.parse(body);
    if (parsed && typeof parsed === 'object' && 'error' in parsed) {
      const message = parsed.error;
      if (typeof message === 'string' && message) {
        return message;
      }
    }
  } catch {
    // not JSON: fall through
  }
  return `The gateway answered ${status}`;
}

/** The dashboard's URL under the gateway's prefix, only for a route of the expected shape. */
export function dashboardUrl(prefix: string, cluster: IOverviewCluster): string | null {
  if (!cluster.dashboard_route) {
    return null;
  }
  return `${prefix}/clusters/${encodeURIComponent(cluster.name)}/status`;
}
