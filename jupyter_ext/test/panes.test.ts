import { describe, expect, it } from 'vitest';

import {
  DEFAULT_LAYOUT,
  isFinalState,
  isPlotPath,
  onlyRunning,
  paneId,
  paneMessage,
  paneState,
  parsePlots,
  plotPath,
  plotTitle,
  plotURL
} from '../src/plots';
import type { ICluster, IClusterEvent } from '../src/types';
import { ClusterWatch, ClusterWatches, IWatchAPI } from '../src/watch';

const NAME = 'a'.repeat(32);

describe('plot paths', () => {
  it('accepts the plots of a dashboard', () => {
    for (const plot of [...DEFAULT_LAYOUT, 'statics/individual-cluster-map.html']) {
      expect(isPlotPath(plot)).toBe(true);
    }
  });

  it('refuses what could leave the dashboard, name a grant or a websocket', () => {
    for (const plot of [
      '',
      '/individual-task-stream',
      '../status',
      'a/../../x',
      '~grant/individual-task-stream',
      'individual-task-stream/ws',
      'https://evil.example/x',
      'a//b',
      'a b',
      'x?token=1',
      42,
      null,
      'x'.repeat(201)
    ]) {
      expect(isPlotPath(plot)).toBe(false);
    }
  });

  it('reads the URLs of individual-plots.json, with or without the gateway prefix', () => {
    expect(plotPath('/individual-task-stream', NAME)).toBe('individual-task-stream');
    expect(plotPath(`/clusters/${NAME}/individual-progress`, NAME)).toBe('individual-progress');
    expect(plotPath('/statics/individual-cluster-map.html', NAME)).toBe(
      'statics/individual-cluster-map.html'
    );
    expect(plotPath('/individual-cpu?x=1', NAME)).toBe('individual-cpu');
    expect(plotPath('/../status', NAME)).toBeNull();
  });

  it('titles plots from their paths', () => {
    expect(plotTitle('individual-task-stream')).toBe('Task Stream');
    expect(plotTitle('individual-workers-memory')).toBe('Workers Memory');
    expect(plotTitle('individual-cpu')).toBe('CPU');
    expect(plotTitle('statics/individual-cluster-map.html')).toBe('Cluster Map');
  });

  it('parses the plot list, sorted by title, dropping what is not a plot', () => {
    const plots = parsePlots(
      {
        'Individual Task Stream': '/individual-task-stream',
        'Individual Progress': '/individual-progress',
        Evil: '/../../api/contents',
        Again: '/individual-progress',
        Weird: 3
      },
      NAME
    );
    expect(plots).toEqual([
      { plot: 'individual-progress', title: 'Progress' },
      { plot: 'individual-task-stream', title: 'Task Stream' }
    ]);
    expect(parsePlots(null, NAME)).toEqual([]);
    expect(parsePlots(['/individual-cpu'], NAME)).toEqual([]);
  });

  it('addresses plots through the relay', () => {
    expect(plotURL('http://h:1/base/', 'n a', 'individual-cpu')).toBe(
      'http://h:1/base/dask-gateway/dashboard/n%20a/individual-cpu'
    );
    expect(plotURL('/', NAME, 'statics/x.html')).toBe(
      `/dask-gateway/dashboard/${NAME}/statics/x.html`
    );
  });

  it('gives each pane a stable, unique id', () => {
    expect(paneId(NAME, 'statics/x.html')).toBe(`dask-gateway-pane-${NAME}-statics_x_html`);
    expect(paneId(NAME, 'individual-cpu')).not.toBe(paneId(NAME, 'individual-progress'));
  });
});

describe('the cluster of a command without a name', () => {
  it('is the only running cluster, if there is exactly one', () => {
    const c = (name: string, status: string) => ({ name, status }) as ICluster;
    expect(onlyRunning([c('a', 'STOPPED'), c('b', 'RUNNING'), c('c', 'PENDING')])).toBe('b');
    expect(onlyRunning([c('a', 'RUNNING'), c('b', 'RUNNING')])).toBeNull();
    expect(onlyRunning([])).toBeNull();
  });
});

describe('pane messages', () => {
  it('says what happened to the cluster, in plain words', () => {
    expect(paneMessage(NAME, paneState('RUNNING'))).toBeNull();
    expect(paneMessage(NAME, paneState('STOPPED'))).toBe(`Cluster ${NAME} stopped.`);
    expect(paneMessage(NAME, paneState('FAILED', 'The scheduler exited'))).toBe(
      `Cluster ${NAME} failed: The scheduler exited`
    );
    expect(paneMessage(NAME, paneState('FAILED'))).toBe(`Cluster ${NAME} failed.`);
    expect(paneMessage(NAME, { kind: 'unknown' })).toContain(`Cluster ${NAME} not found`);
    expect(paneMessage(NAME, paneState('PENDING'))).toContain('is starting');
  });

  it('stops watching once the cluster cannot change', () => {
    expect(isFinalState(paneState('STOPPED'))).toBe(true);
    expect(isFinalState(paneState('FAILED'))).toBe(true);
    expect(isFinalState({ kind: 'unknown' })).toBe(true);
    expect(isFinalState({ kind: 'forbidden', message: 'no' })).toBe(true);
    expect(isFinalState(paneState('RUNNING'))).toBe(false);
    expect(isFinalState({ kind: 'unreachable', message: 'x' })).toBe(false);
  });
});

class HttpError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** A scripted server extension: the states to answer, and events long-polls that answer
 * when the test releases them. */
class FakeAPI implements IWatchAPI {
  statuses: (string | number)[] = [];
  clusterCalls = 0;
  eventCalls: { after?: number; wait?: number }[] = [];
  eventsStatus = 0;
  private pending: ((done: boolean) => void)[] = [];

  cluster(name: string) {
    this.clusterCalls += 1;
    const next = this.statuses.length > 1 ? this.statuses.shift()! : this.statuses[0];
    if (typeof next === 'number') {
      return Promise.reject(new HttpError(`Cluster ${name} not found`, next));
    }
    return Promise.resolve({ status: next, reason: null });
  }

  events(name: string, after?: number, wait?: number, signal?: AbortSignal) {
    this.eventCalls.push({ after, wait });
    if (this.eventsStatus) {
      return Promise.reject(new HttpError('no route', this.eventsStatus));
    }
    if (wait === undefined) {
      return Promise.resolve({ events: [] as IClusterEvent[], cursor: 5, done: false });
    }
    return new Promise<{ events: IClusterEvent[]; cursor: number; done: boolean }>(
      (resolve, reject) => {
        signal?.addEventListener('abort', () => reject(new Error('aborted')));
        this.pending.push(done =>
          resolve({
            events: [{ id: 6, time: 0, kind: 'stopped', worker: null, message: '', detail: '' }],
            cursor: 6,
            done
          })
        );
      }
    );
  }

  /** Answer the held long-poll with an event. */
  release(done: boolean): void {
    this.pending.shift()?.(done);
  }

  get held(): number {
    return this.pending.length;
  }
}

const tick = () => new Promise(resolve => setTimeout(resolve, 0));

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !check(); i++) {
    await tick();
  }
  expect(check()).toBe(true);
}

describe('cluster watch', () => {
  it('asks the state, then long-polls the events, and asks again only on an event', async () => {
    const api = new FakeAPI();
    api.statuses = ['RUNNING', 'STOPPED'];
    const seen: string[] = [];
    const watch = new ClusterWatch(api, NAME);
    watch.listen(s => seen.push(s.kind));
    await until(() => api.held === 1);
    expect(seen).toEqual(['checking', 'running']);
    expect(api.clusterCalls).toBe(1);
    // The first events call takes the cursor, the next holds after it.
    expect(api.eventCalls).toEqual([
      { after: undefined, wait: undefined },
      { after: 5, wait: 30 }
    ]);
    api.release(true);
    await watch.whenDone();
    expect(seen).toEqual(['checking', 'running', 'stopped']);
    expect(api.clusterCalls).toBe(2);
    expect(watch.isStopped).toBe(true);
  });

  it('says a cluster the gateway does not know is not found', async () => {
    const api = new FakeAPI();
    api.statuses = [404];
    const seen: string[] = [];
    const watch = new ClusterWatch(api, NAME);
    watch.listen(s => seen.push(s.kind));
    await watch.whenDone();
    expect(seen).toEqual(['checking', 'unknown']);
    expect(api.eventCalls).toEqual([]);
  });

  it('says a cluster the gateway refuses cannot be shown, and stops asking', async () => {
    const api = new FakeAPI();
    api.statuses = [403];
    const seen: string[] = [];
    const watch = new ClusterWatch(api, NAME);
    watch.listen(s => seen.push(s.kind));
    await watch.whenDone();
    expect(seen).toEqual(['checking', 'forbidden']);
    expect(api.clusterCalls).toBe(1);
    expect(paneMessage(NAME, watch.state)).toBe(
      `Cluster ${NAME} cannot be shown: Cluster ${NAME} not found`
    );
  });

  it('polls a gateway without the events route', async () => {
    const api = new FakeAPI();
    api.statuses = ['RUNNING', 'RUNNING', 'FAILED'];
    api.eventsStatus = 404;
    const seen: string[] = [];
    const watch = new ClusterWatch(api, NAME, 1);
    watch.listen(s => seen.push(s.kind));
    await watch.whenDone();
    expect(seen).toEqual(['checking', 'running', 'running', 'failed']);
    expect(api.eventCalls.length).toBe(1); // tried once, then polls only
  });

  it('keeps trying while the state cannot be asked', async () => {
    const api = new FakeAPI();
    api.statuses = [502, 'STOPPED'];
    const seen: string[] = [];
    const watch = new ClusterWatch(api, NAME);
    watch.listen(s => seen.push(s.kind));
    await until(() => seen.includes('unreachable'));
    watch.refresh(); // instead of waiting out the back-off
    await watch.whenDone();
    expect(seen).toEqual(['checking', 'unreachable', 'stopped']);
  });

  it('shares one watch per cluster, stopped when the last pane leaves', async () => {
    const api = new FakeAPI();
    api.statuses = ['RUNNING'];
    const watches = new ClusterWatches(api);
    const a: string[] = [];
    const b: string[] = [];
    const offA = watches.listen(NAME, s => a.push(s.kind));
    await until(() => api.held === 1);
    const offB = watches.listen(NAME, s => b.push(s.kind));
    expect(b).toEqual(['running']); // the current state at once, no new request
    expect(api.clusterCalls).toBe(1);
    expect(watches.size).toBe(1);
    offA();
    expect(watches.size).toBe(1);
    offB();
    expect(watches.size).toBe(0);
    await tick();
    expect(api.clusterCalls).toBe(1);
  });
});
