/**
 * The live sidebar: the server extension's `dask-gateway/stream` (Server-Sent Events, fed by
 * one upstream long-poll on the gateway's events per Jupyter server), and what the sidebar
 * does with it: refresh the affected cluster's row at once, at most one refresh in flight per
 * cluster. Polling stays as the fallback (stream down, or a gateway without events: 501).
 *
 * No JupyterLab imports: the stream is opened by a function passed in (`fetch`-like), so the
 * parser, the coalescing and the reconnecting are tested in plain Node.
 */

/** One Server-Sent Event. */
export interface ISSEMessage {
  event: string;
  data: string;
}

/** Split `buffer` into complete events (blank-line terminated) and the incomplete rest.
 * Comments (`: ...`), `id:` and `retry:` lines are ignored; `data:` lines are joined. */
export function parseSSE(buffer: string): { messages: ISSEMessage[]; rest: string } {
  const messages: ISSEMessage[] = [];
  const text = buffer.replace(/\r\n?/g, '\n');
  const blocks = text.split('\n\n');
  const rest = blocks.pop() ?? '';
  for (const block of blocks) {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) {
        continue;
      }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) {
        value = value.slice(1);
      }
      if (field === 'event') {
        event = value;
      } else if (field === 'data') {
        data.push(value);
      }
    }
    if (data.length || event !== 'message') {
      messages.push({ event, data: data.join('\n') });
    }
  }
  return { messages, rest };
}

/** An event of a cluster, as the stream sends it. */
export interface IClusterEventNote {
  cluster: string;
  kind: string;
  worker: string | null;
  time: number;
}

/**
 * At most one run in flight per key: a request while one runs marks the key dirty, and one
 * more run follows when it ends (however many requests came meanwhile).
 */
export class Coalescer {
  private running = new Map<string, Promise<void>>();
  private dirty = new Set<string>();

  constructor(private run: (key: string) => Promise<void>) {}

  /** Run for `key` now, or once more after the run in flight. Resolves when the key is
   * up to date with this request. */
  request(key: string): Promise<void> {
    const current = this.running.get(key);
    if (current) {
      this.dirty.add(key); // the run in flight runs once more
      return current;
    }
    const go = async (): Promise<void> => {
      try {
        do {
          this.dirty.delete(key);
          try {
            await this.run(key);
          } catch {
            // the caller's run shows its own errors; the next request tries again
          }
        } while (this.dirty.has(key));
      } finally {
        this.running.delete(key);
      }
    };
    const promise = go();
    this.running.set(key, promise);
    return promise;
  }

  /** Keys with a run in flight. */
  get inFlight(): number {
    return this.running.size;
  }
}

/** The stream's state: `connecting` (not yet), `live` (events flow: no polling needed),
 * `down` (the stream or the gateway is unreachable: poll, reconnecting), `unsupported` (the
 * gateway keeps no events: poll, for good). */
export type LiveState = 'connecting' | 'live' | 'down' | 'unsupported';

export interface ILiveHandlers {
  /** The stream is (again) complete from now on: read the whole list once. */
  onReady(): void;
  /** Something happened to this cluster. */
  onCluster(note: IClusterEventNote): void;
  /** The state changed (the sidebar polls unless `live`). */
  onState(state: LiveState): void;
}

/** Opens the stream: a `Response` whose body is the event stream (or an error status). */
export type StreamOpener = (signal: AbortSignal) => Promise<Response>;

/** Reconnect delays after the stream failed, in ms (the last repeats). */
export const RECONNECT = [1000, 2000, 5000, 10000, 30000];

/**
 * The browser's end of `dask-gateway/stream`: reads it, dispatches its events, reconnects
 * with backoff when it ends, and says when to poll instead.
 */
export class LiveStream {
  private controller: AbortController | null = null;
  private failures = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stateValue: LiveState = 'connecting';
  private stopped = true;

  constructor(
    private open: StreamOpener,
    private handlers: ILiveHandlers,
    private delays: number[] = RECONNECT
  ) {}

  get state(): LiveState {
    return this.stateValue;
  }

  private setState(state: LiveState): void {
    if (state !== this.stateValue) {
      this.stateValue = state;
      this.handlers.onState(state);
    }
  }

  /** Connect (a no-op if connected or connecting). */
  start(): void {
    if (!this.stopped || this.stateValue === 'unsupported') {
      return;
    }
    this.stopped = false;
    void this.connect();
  }

  /** Disconnect; `start` connects again. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.controller?.abort();
    this.controller = null;
  }

  private retry(): void {
    if (this.stopped) {
      return;
    }
    const delay = this.delays[Math.min(this.failures, this.delays.length - 1)];
    this.failures += 1;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.connect();
    }, delay);
  }

  private async connect(): Promise<void> {
    const controller = new AbortController();
    this.controller = controller;
    let response: Response;
    try {
      response = await this.open(controller.signal);
    } catch {
      if (!controller.signal.aborted) {
        this.setState('down');
        this.retry();
      }
      return;
    }
    if (response.status === 501 || response.status === 404) {
      // A gateway without events (or a server extension without the stream): poll.
      this.controller = null;
      this.stopped = true;
      this.setState('unsupported');
      return;
    }
    if (!response.ok || !response.body) {
      this.setState('down');
      this.retry();
      return;
    }
    try {
      await this.read(response.body, controller.signal);
    } catch {
      // the connection broke (or was aborted)
    }
    if (!controller.signal.aborted) {
      this.setState('down');
      this.retry();
    }
  }

  private async read(body: ReadableStream<Uint8Array>, signal: AbortSignal): Promise<void> {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    signal.addEventListener('abort', () => void reader.cancel().catch(() => undefined));
    for (;;) {
      const { done, value } = await reader.read();
      if (done || signal.aborted) {
        return;
      }
      buffer += decoder.decode(value, { stream: true });
      const { messages, rest } = parseSSE(buffer);
      buffer = rest;
      for (const message of messages) {
        this.dispatch(message);
      }
    }
  }

  private dispatch(message: ISSEMessage): void {
    let data: Record<string, unknown>;
    try {
      data = JSON.parse(message.data || '{}') as Record<string, unknown>;
    } catch {
      return;
    }
    switch (message.event) {
      case 'ready':
        this.failures = 0;
        this.setState(data.healthy === false ? 'down' : 'live');
        this.handlers.onReady();
        break;
      case 'cluster':
        if (typeof data.cluster === 'string') {
          this.handlers.onCluster(data as unknown as IClusterEventNote);
        }
        break;
      case 'down':
        this.setState('down');
        break;
      case 'up':
        this.setState('live');
        this.handlers.onReady();
        break;
      case 'resync':
        this.handlers.onReady();
        break;
    }
  }
}

/** Poll this often while the stream is live: a safety net only (ms). */
export const SAFETY_INTERVAL = 60 * 1000;

/** The poll interval for a stream state: the safety refresh while live, else `fallback`. */
export function pollInterval(state: LiveState, fallback: number): number {
  return state === 'live' ? SAFETY_INTERVAL : fallback;
}
