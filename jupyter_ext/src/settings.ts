/**
 * The sidebar's settings (schema/plugin.json, in JupyterLab's settings editor), read live:
 * every change applies at once, without a reload.
 *
 * `readSettings` is pure (unit-tested without JupyterLab): whatever the stored settings hold,
 * it gives usable values, so a hand-edited file can never stop the sidebar.
 */

/** The settings, as the sidebar uses them. */
export interface IGatewaySettings {
  /** Seconds between two refreshes of the list while polling (the fallback when nothing is
   * pushed). */
  pollInterval: number;
  /** The plots `dask-gateway:open-default-layout` opens: paths of the scheduler's
   * `individual-plots.json`, without the leading slash (e.g. `individual-task-stream`). */
  defaultLayout: string[];
  /** Whether stopped and failed clusters stay listed (until dismissed). */
  showStopped: boolean;
}

/** The fewest and most seconds between two polls (the schema says the same). */
export const POLL_MIN = 1;
export const POLL_MAX = 3600;

export const DEFAULT_SETTINGS: Readonly<IGatewaySettings> = Object.freeze({
  pollInterval: 3,
  defaultLayout: ['individual-task-stream', 'individual-progress', 'individual-workers-memory'],
  showStopped: true
});

/** The settings from JupyterLab's composite values; anything missing or unusable takes its
 * default (a poll interval out of range is clamped to it). */
export function readSettings(composite: unknown): IGatewaySettings {
  const values = (composite !== null && typeof composite === 'object' ? composite : {}) as Record<
    string,
    unknown
  >;
  const poll = values.pollInterval;
  const pollInterval =
    typeof poll === 'number' && Number.isFinite(poll)
      ? Math.min(POLL_MAX, Math.max(POLL_MIN, poll))
      : DEFAULT_SETTINGS.pollInterval;
  const layout = values.defaultLayout;
  const defaultLayout = Array.isArray(layout)
    ? layout
        .filter((p): p is string => typeof p === 'string' && p.trim() !== '')
        .map(p => p.trim().replace(/^\/+/, ''))
    : [...DEFAULT_SETTINGS.defaultLayout];
  const stopped = values.showStopped;
  const showStopped = typeof stopped === 'boolean' ? stopped : DEFAULT_SETTINGS.showStopped;
  return { pollInterval, defaultLayout, showStopped };
}

/** The current settings, and who to tell when they change. */
export class GatewaySettings {
  private values: IGatewaySettings = readSettings({});
  private listeners: ((settings: IGatewaySettings) => void)[] = [];

  get current(): IGatewaySettings {
    return this.values;
  }

  /** Take new composite values and tell every listener. */
  update(composite: unknown): void {
    this.values = readSettings(composite);
    for (const listener of this.listeners) {
      listener(this.values);
    }
  }

  /** Call `listener` now and on every change. */
  connect(listener: (settings: IGatewaySettings) => void): void {
    this.listeners.push(listener);
    listener(this.values);
  }
}
