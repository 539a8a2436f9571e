/**
 * Stopped and failed clusters stay in the list, dimmed, until the user dismisses them; the
 * dismissed names are kept in the browser's localStorage (pure helpers: unit-tested without
 * JupyterLab; the storage is passed in).
 */
import type { ICluster } from './types';

/** Whether a cluster has ended (it can only be looked at, and dismissed). */
export function isEnded(status: string): boolean {
  return status === 'STOPPED' || status === 'FAILED';
}

/** The storage key: per Jupyter server (JupyterHub serves every user's from one origin). */
export function dismissedKey(baseUrl: string): string {
  return `dask-gateway-jupyterlab:dismissed:${baseUrl}`;
}

/** The names stored under `key`; anything unreadable counts as none. */
export function loadDismissed(storage: Pick<Storage, 'getItem'> | null, key: string): Set<string> {
  let raw: string | null;
  try {
    raw = storage?.getItem(key) ?? null;
  } catch {
    return new Set();
  }
  if (!raw) {
    return new Set();
  }
  try {
    const value: unknown = JSON.parse(raw);
    return new Set(
      Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : []
    );
  } catch {
    return new Set();
  }
}

/** Store the names (quietly: a full or blocked storage only forgets dismissals). */
export function saveDismissed(
  storage: Pick<Storage, 'setItem' | 'removeItem'> | null,
  key: string,
  names: Set<string>
): void {
  try {
    if (names.size) {
      storage?.setItem(key, JSON.stringify([...names].sort()));
    } else {
      storage?.removeItem(key);
    }
  } catch {
    // nothing to do: the rows come back on the next page load
  }
}

/** The dismissed names still worth keeping: those of clusters the list still has (the list
 * drops ended clusters after an hour, so the stored set stays small). */
export function pruneDismissed(names: Set<string>, clusters: ICluster[]): Set<string> {
  const listed = new Set(clusters.map(c => c.name));
  return new Set([...names].filter(n => listed.has(n)));
}

/** The clusters a list shows: every active one, and the ended ones not dismissed. */
export function visibleClusters(clusters: ICluster[], dismissed: Set<string>): ICluster[] {
  return clusters.filter(c => !(isEnded(c.status) && dismissed.has(c.name)));
}
