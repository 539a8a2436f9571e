/**
 * The dashboard panes' bookkeeping (pure: unit-tested without JupyterLab): which plots a
 * scheduler offers, how a plot is named, checked and addressed through the relay, and what a
 * pane says about its cluster's state.
 */

import type { ICluster } from './types';

/** The one running cluster of `clusters`, if there is exactly one (what a plot command
 * without a name, nothing selected, acts on). */
export function onlyRunning(clusters: ICluster[]): string | null {
  const running = clusters.filter(c => c.status === 'RUNNING');
  return running.length === 1 ? running[0].name : null;
}

/** One individual plot of a scheduler's dashboard. */
export interface IPlot {
  /** Its path under the dashboard, e.g. `individual-task-stream`. */
  plot: string;
  /** What the list and the tab call it, e.g. `Task Stream`. */
  title: string;
}

/** The plots `open-default-layout` opens, in this order (task stream, progress, memory). */
export const DEFAULT_LAYOUT: readonly string[] = [
  'individual-task-stream',
  'individual-progress',
  'individual-workers-memory'
];

/** Whether `plot` is a path the panes may open: relative, plain segments, nothing that could
 * leave the cluster's dashboard (`..`), name a grant (`~`) or a websocket. */
export function isPlotPath(plot: unknown): plot is string {
  if (typeof plot !== 'string' || plot.length === 0 || plot.length > 200) {
    return false;
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9_.\-/]*$/.test(plot)) {
    return false;
  }
  const segments = plot.split('/');
  return (
    segments.every(s => s !== '' && s !== '.' && s !== '..') &&
    segments[segments.length - 1] !== 'ws'
  );
}

/** The plot path of a URL of `individual-plots.json` (`/individual-task-stream`, or with the
 * gateway's `/clusters/<name>/` prefix); null if it is not one the panes open. */
export function plotPath(url: string, name: string): string | null {
  let path = url.trim();
  const query = path.search(/[?#]/);
  if (query >= 0) {
    path = path.slice(0, query);
  }
  path = path.replace(/^\/+/, '');
  const prefix = `clusters/${name}/`;
  if (path.startsWith(prefix)) {
    path = path.slice(prefix.length);
  }
  return isPlotPath(path) ? path : null;
}

/** A plot's title from its path: `individual-workers-memory` -> `Workers Memory`. */
export function plotTitle(plot: string): string {
  const parts = plot.split('/');
  const last = parts[parts.length - 1];
  const words = last
    .replace(/\.html$/, '')
    .replace(/^individual-/, '')
    .split(/[-_]+/)
    .filter(Boolean)
    .map((w: string) =>
      ['cpu', 'gpu', 'rmm'].includes(w) ? w.toUpperCase() : w[0].toUpperCase() + w.slice(1)
    );
  return words.join(' ') || plot;
}

/** The plots of an `individual-plots.json` answer (`{title: url}`), by title; what is not a
 * plot path is left out. */
export function parsePlots(data: unknown, name: string): IPlot[] {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    return [];
  }
  const seen = new Set<string>();
  const plots: IPlot[] = [];
  for (const url of Object.values(data as Record<string, unknown>)) {
    if (typeof url !== 'string') {
      continue;
    }
    const plot = plotPath(url, name);
    if (plot !== null && !seen.has(plot)) {
      seen.add(plot);
      plots.push({ plot, title: plotTitle(plot) });
    }
  }
  return plots.sort((a, b) => a.title.localeCompare(b.title));
}

/** The relayed URL of a plot: `<base>dask-gateway/dashboard/<name>/<plot>` (the relay makes
 * the page sandboxed and grants it this one cluster). */
export function plotURL(baseUrl: string, name: string, plot: string): string {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const path = plot
    .split('/')
    .map(s => encodeURIComponent(s))
    .join('/');
  return `${base}dask-gateway/dashboard/${encodeURIComponent(name)}/${path}`;
}

/** A pane's DOM id: unique per cluster and plot, stable across reloads. */
export function paneId(name: string, plot: string): string {
  return `dask-gateway-pane-${name}-${plot.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

/** What a pane knows of its cluster. `unknown`: the gateway does not know it (404);
 * `forbidden`: the gateway refuses it to this user (403, e.g. another user's cluster);
 * `unreachable`: the state could not be asked (the pane keeps what it shows, and retries). */
export type PaneState =
  | { kind: 'checking' }
  | { kind: 'pending' }
  | { kind: 'running' }
  | { kind: 'stopping' }
  | { kind: 'stopped' }
  | { kind: 'failed'; reason: string | null }
  | { kind: 'unknown' }
  | { kind: 'forbidden'; message: string }
  | { kind: 'unreachable'; message: string };

/** The state of a cluster status as the server extension gives it. */
export function paneState(status: string, reason: string | null = null): PaneState {
  switch (status) {
    case 'PENDING':
      return { kind: 'pending' };
    case 'RUNNING':
      return { kind: 'running' };
    case 'STOPPING':
      return { kind: 'stopping' };
    case 'STOPPED':
      return { kind: 'stopped' };
    case 'FAILED':
      return { kind: 'failed', reason };
    default:
      return { kind: 'unknown' };
  }
}

/** Whether the cluster can no longer change: the pane stops watching. */
export function isFinalState(state: PaneState): boolean {
  return (
    state.kind === 'stopped' ||
    state.kind === 'failed' ||
    state.kind === 'unknown' ||
    state.kind === 'forbidden'
  );
}

/** What a pane shows instead of its plot; null while the plot is shown. */
export function paneMessage(name: string, state: PaneState): string | null {
  switch (state.kind) {
    case 'running':
      return null;
    case 'checking':
      return `Connecting to cluster ${name}…`;
    case 'pending':
      return `Cluster ${name} is starting; the plot appears once it runs.`;
    case 'stopping':
      return `Cluster ${name} is stopping.`;
    case 'stopped':
      return `Cluster ${name} stopped.`;
    case 'failed':
      return state.reason ? `Cluster ${name} failed: ${state.reason}` : `Cluster ${name} failed.`;
    case 'unknown':
      return `Cluster ${name} not found: it may have ended long ago.`;
    case 'forbidden':
      return `Cluster ${name} cannot be shown: ${state.message}`;
    case 'unreachable':
      return `Cannot reach cluster ${name}: ${state.message}`;
  }
}

/** How long to wait (ms) before asking a cluster's state again after a failure. */
export function retryDelay(attempt: number): number {
  return Math.min(30000, 1000 * 2 ** Math.min(attempt, 5));
}
