import { describe, expect, it } from 'vitest';

import {
  Coalescer,
  type IClusterEventNote,
  LiveStream,
  type LiveState,
  parseSSE,
  pollInterval,
  SAFETY_INTERVAL
} from '../src/live';

describe('parseSSE', () => {
  it('splits complete events and keeps the rest', () => {
    const { messages, rest } = parseSSE(
      'retry: 3000\n\nevent: ready\ndata: {"poller": 1}\n\n: keepalive\n\nevent: cluster\ndata: {"clu'
    );
    expect(messages).toEqual([{ event: 'ready', data: '{"poller": 1}' }]);
    expect(rest).toBe('event: cluster\ndata: {"clu');
  });

  it('joins data lines, takes CRLF, defaults the event name', () => {
    const { messages } = parseSSE('data: a\r\ndata:b\r\n\r\n');
    expect(messages).toEqual([{ event: 'message', data: 'a\nb' }]);
  });
});

describe('Coalescer', () => {
  it('runs at most once in flight per key, and once more for requests meanwhile', async () => {
    const calls: string[] = [];
    let release: () => void = () => undefined;
    const coalescer = new Coalescer(key => {
      calls.push(key);
      return new Promise<void>(resolve => {
        release = resolve;
      });
    });
    const first = coalescer.request('a');
    void coalescer.request('a');
    void coalescer.request('a');
    expect(calls).toEqual(['a']);
    expect(coalescer.inFlight).toBe(1);
    release();
    await new Promise(resolve => setTimeout(resolve, 0));
    expect(calls).toEqual(['a', 'a']); // one more, not two
    release();
    await first;
    expect(coalescer.inFlight).toBe(0);
  });

  it('keeps keys apart and survives a failing run', async () => {
    const calls: string[] = [];
    const coalescer = new Coalescer(key => {
      calls.push(key);
      return key === 'bad' ? Promise.reject(new Error('no')) : Promise.resolve();
    });
    await Promise.all([coalescer.request('a'), coalescer.request('bad')]);
    await coalescer.request('bad');
    expect(calls).toEqual(['a', 'bad', 'bad']);
  });
});

/** A stream body the test writes to. */
function pipe(): { response: Response; write: (text: string) => void; end: () => void } {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start: c => {
      controller = c;
    }
  });
  const encoder = new TextEncoder();
  return {
    response: new Response(body, { status: 200 }),
    write: text => controller.enqueue(encoder.encode(text)),
    end: () => controller.close()
  };
}

const tick = () => new Promise(resolve => setTimeout(resolve, 5));

describe('LiveStream', () => {
  it('dispatches ready, cluster events and state changes, and reconnects', async () => {
    const pipes = [pipe(), pipe()];
    let opened = 0;
    const log: string[] = [];
    const states: LiveState[] = [];
    const live = new LiveStream(
      () => Promise.resolve(pipes[opened++].response),
      {
        onReady: () => log.push('ready'),
        onCluster: (note: IClusterEventNote) => log.push(`${note.cluster}:${note.kind}`),
        onState: state => states.push(state)
      },
      [0]
    );
    live.start();
    await tick();
    pipes[0].write('retry: 3000\n\nevent: ready\ndata: {"poller": 1, "healthy": true}\n\n');
    pipes[0].write('event: cluster\ndata: {"cluster": "c1", "kind": "scaled", "worker": null,');
    await tick();
    pipes[0].write(' "time": 1}\n\n: keepalive\n\nevent: down\ndata: {"message": "x"}\n\n');
    await tick();
    expect(log).toEqual(['ready', 'c1:scaled']);
    expect(states).toEqual(['live', 'down']);
    pipes[0].end(); // the server went away: reconnect
    await tick();
    await tick();
    expect(opened).toBe(2);
    pipes[1].write('event: ready\ndata: {"healthy": true}\n\n');
    await tick();
    expect(states).toEqual(['live', 'down', 'live']);
    expect(log).toEqual(['ready', 'c1:scaled', 'ready']);
    live.stop();
    await tick();
    expect(opened).toBe(2);
  });

  it('gives up for good on 501 (a gateway without events: poll)', async () => {
    let opened = 0;
    const states: LiveState[] = [];
    const live = new LiveStream(
      () => {
        opened++;
        return Promise.resolve(new Response('{"error": "no events"}', { status: 501 }));
      },
      { onReady: () => undefined, onCluster: () => undefined, onState: s => states.push(s) },
      [0]
    );
    live.start();
    await tick();
    await tick();
    live.start();
    await tick();
    expect(opened).toBe(1);
    expect(states).toEqual(['unsupported']);
    expect(live.state).toBe('unsupported');
  });
});

describe('pollInterval', () => {
  it('polls slowly while live, at the fallback otherwise', () => {
    expect(pollInterval('live', 3000)).toBe(SAFETY_INTERVAL);
    expect(pollInterval('down', 3000)).toBe(3000);
    expect(pollInterval('unsupported', 10000)).toBe(10000);
    expect(pollInterval('connecting', 3000)).toBe(3000);
  });
});
