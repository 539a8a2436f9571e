/**
 * How the sidebar words sizes, ages and cluster states (pure: unit-tested without JupyterLab).
 */

/** `dask.utils.format_bytes`: 2.00 GiB. */
export function formatBytes(n: number): string {
  const units: [string, number][] = [
    ['PiB', 2 ** 50],
    ['TiB', 2 ** 40],
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['kiB', 2 ** 10]
  ];
  for (const [unit, size] of units) {
    if (n >= size * 0.9) {
      return `${(n / size).toFixed(2)} ${unit}`;
    }
  }
  return `${n} B`;
}

/** A cluster's age in the largest units that say it: `42 s`, `3 min`, `2 h 5 min`. */
export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m} min`;
  }
  const h = Math.floor(m / 60);
  if (h < 24) {
    return `${h} h ${m % 60} min`;
  }
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** How messages name a cluster: its name's first 8 characters are enough to tell. */
export function shortName(name: string): string {
  return `Cluster ${name.slice(0, 8)}`;
}

/** How far along its life a cluster is: messages about it only move forward (a poll that
 * was already under way when it changed may still report the state before). */
const LIFE_ORDER: Record<string, number> = {
  PENDING: 0,
  RUNNING: 1,
  STOPPING: 2,
  STOPPED: 3,
  FAILED: 3,
  GONE: 3
};

/** Whether `status` is further along than `before` (unknown states count as the start). */
export function isLater(status: string, before: string): boolean {
  return (LIFE_ORDER[status] ?? 0) > (LIFE_ORDER[before] ?? 0);
}

/** Whether nothing follows `status` (stopped, failed, or no longer listed). */
export function isFinal(status: string): boolean {
  return (LIFE_ORDER[status] ?? 0) >= LIFE_ORDER.GONE;
}

/** The message about cluster `name` in state `status` (GONE: no longer listed), and whether
 * it is a warning. `before` is the state the previous message said; `reason`, a failed
 * cluster's. */
export function clusterMessage(
  name: string,
  status: string,
  before: string,
  reason: string | null = null
): { text: string; warn: boolean } {
  const short = shortName(name);
  switch (status) {
    case 'PENDING':
      return { text: `${short} is starting`, warn: false };
    case 'RUNNING':
      return { text: `${short} is running`, warn: false };
    case 'STOPPING':
      return { text: `${short} is shutting down`, warn: false };
    case 'FAILED':
      return { text: reason ? `${short} failed: ${reason}` : `${short} failed`, warn: true };
    default:
      // Gone from the list: expected after a shutdown, not while it was starting or running.
      return before === 'STOPPING'
        ? { text: `${short} has shut down`, warn: false }
        : { text: `${short} stopped`, warn: true };
  }
}

/** The worker count as a row shows it: `2`, or `1 of 3` while workers are on their way, with
 * how many of them are starting (`1 of 3 (2 starting)`) when the gateway says. */
export function formatWorkers(
  workers: number | null,
  requested: number | null,
  pending: number | null = null
): string {
  if (workers === null) {
    return '–';
  }
  const text =
    requested !== null && requested !== workers ? `${workers} of ${requested}` : String(workers);
  return pending ? `${text} (${pending} starting)` : text;
}

/** The adaptive range a row notes, or '' when the cluster does not adapt. */
export function formatAdapt(
  adapt: { minimum: number | null; maximum: number | null } | null
): string {
  return adapt ? `Adaptive: ${adapt.minimum ?? 0} to ${adapt.maximum ?? 'limit'} workers` : '';
}

/** The line under a cluster's name: a starting cluster's phase, a failed cluster's reason,
 * when an ended one ended; '' when there is nothing to say. `now` in ms since the epoch. */
export function clusterNote(
  cluster: {
    status: string;
    phase: string | null;
    reason: string | null;
    stop_time: number | null;
  },
  now: number
): string {
  const ago = (ms: number | null) =>
    ms === null ? '' : ` ${formatAge(Math.max(0, now - ms) / 1000)} ago`;
  switch (cluster.status) {
    case 'PENDING':
      return cluster.phase ?? '';
    case 'FAILED':
      return cluster.reason ?? `Failed${ago(cluster.stop_time)}; see its logs`;
    case 'STOPPED':
      return `Stopped${ago(cluster.stop_time)}`;
    default:
      return '';
  }
}
