/**
 * Watching the state of the clusters that have panes open (no DOM: unit-tested in Node).
 *
 * One watch per cluster, shared by all its panes, and only while a pane is open. It asks the
 * cluster's state (`GET dask-gateway/clusters/<name>`), then waits for the cluster's next
 * events with the events relay's long-poll (`?after=<cursor>&wait=30`), and asks the state
 * again only when an event came: a quiet cluster costs one held request, not a poll. A
 * gateway without the events route (the public dask-gateway-server) is polled instead.
 * `refresh()` asks at once (e.g. when the live sidebar hears of a change first).
 */
import type { IClusterEvent } from './types';
import { isFinalState, paneState, PaneState, retryDelay } from './plots';

/** The calls a watch makes (the server extension's routes, through `GatewayAPI`). */
export interface IWatchAPI {
  /** The cluster's state; rejects with an error having `status` 404 if it is unknown, 403
   * if it is not this user's to see. */
  cluster(name: string): Promise<{ status: string; reason: string | null }>;
  /** The events after `after`, holding up to `wait` s for one. */
  events(
    name: string,
    after?: number,
    wait?: number,
    signal?: AbortSignal
  ): Promise<{ events: IClusterEvent[]; cursor: number; done: boolean }>;
}

/** How long the events long-poll holds (s), and the polling interval without it (ms). */
export const EVENTS_WAIT = 30;
export const POLL_FALLBACK = 10000;

function statusOf(error: unknown): number {
  const status = (error as { status?: unknown } | null)?.status;
  return typeof status === 'number' ? status : 0;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise(resolve => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}

export type StateListener = (state: PaneState) => void;

/** The state of one cluster, followed until it ends or the last listener leaves. */
export class ClusterWatch {
  state: PaneState = { kind: 'checking' };
  private listeners = new Set<StateListener>();
  private stopped = false;
  private wake = new AbortController();
  private cursor: number | undefined = undefined;
  private useEvents = true;
  private running: Promise<void> | null = null;

  constructor(
    private api: IWatchAPI,
    readonly name: string,
    private pollInterval = POLL_FALLBACK
  ) {}

  /** Listen to the state (called at once with the current one); returns the unsubscribe. */
  listen(listener: StateListener): () => void {
    this.listeners.add(listener);
    listener(this.state);
    if (this.running === null && !this.stopped) {
      this.running = this.run();
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) {
        this.stop();
      }
    };
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /** Ask the state now instead of waiting for an event or the next poll. */
  refresh(): void {
    this.wake.abort();
  }

  stop(): void {
    this.stopped = true;
    this.wake.abort();
  }

  /** The loop; resolves once stopped or the cluster ended. */
  whenDone(): Promise<void> {
    return this.running ?? Promise.resolve();
  }

  private set(state: PaneState): void {
    this.state = state;
    for (const listener of [...this.listeners]) {
      listener(state);
    }
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      if (this.wake.signal.aborted) {
        this.wake = new AbortController();
      }
      let state: PaneState;
      try {
        const cluster = await this.api.cluster(this.name);
        state = paneState(cluster.status, cluster.reason);
        failures = 0;
      } catch (error) {
        const status = statusOf(error);
        if (status === 404) {
          state = { kind: 'unknown' };
        } else if (status === 403) {
          state = { kind: 'forbidden', message: messageOf(error) };
        } else {
          state = { kind: 'unreachable', message: messageOf(error) };
          failures += 1;
        }
      }
      if (this.stopped) {
        return;
      }
      this.set(state);
      if (isFinalState(state)) {
        this.stopped = true;
        return;
      }
      if (state.kind === 'unreachable') {
        await sleep(retryDelay(failures), this.wake.signal);
      } else {
        await this.untilChange();
      }
    }
  }

  /** Wait until the cluster may have changed: an event, the poll interval, or `refresh`. */
  private async untilChange(): Promise<void> {
    const signal = this.wake.signal;
    while (this.useEvents && !this.stopped && !signal.aborted) {
      try {
        const first = this.cursor === undefined;
        const answer = await this.api.events(
          this.name,
          this.cursor,
          first ? undefined : EVENTS_WAIT,
          signal
        );
        this.cursor = answer.cursor;
        if (answer.done || (!first && answer.events.length > 0)) {
          return;
        }
      } catch (error) {
        if (signal.aborted || this.stopped) {
          return;
        }
        const status = statusOf(error);
        if (status === 404 || status === 501 || status === 400) {
          this.useEvents = false; // no events route (the public gateway): poll
        } else {
          await sleep(this.pollInterval, signal);
          return;
        }
      }
    }
    if (!this.stopped && !signal.aborted) {
      await sleep(this.pollInterval, signal);
    }
  }
}

/** The watches of every cluster with panes, one per cluster. */
export class ClusterWatches {
  private watches = new Map<string, ClusterWatch>();

  constructor(
    private api: IWatchAPI,
    private pollInterval = POLL_FALLBACK
  ) {}

  /** Follow `name`'s state; returns the unsubscribe. */
  listen(name: string, listener: StateListener): () => void {
    let watch = this.watches.get(name);
    if (!watch || watch.isStopped) {
      watch = new ClusterWatch(this.api, name, this.pollInterval);
      this.watches.set(name, watch);
    }
    const current = watch;
    const unsubscribe = current.listen(listener);
    return () => {
      unsubscribe();
      if (current.isStopped && this.watches.get(name) === current) {
        this.watches.delete(name);
      }
    };
  }

  /** Ask the cluster's state now (if it is watched). */
  refresh(name: string): void {
    this.watches.get(name)?.refresh();
  }

  get size(): number {
    return [...this.watches.values()].filter(w => !w.isStopped).length;
  }

  dispose(): void {
    for (const watch of this.watches.values()) {
      watch.stop();
    }
    this.watches.clear();
  }
}
