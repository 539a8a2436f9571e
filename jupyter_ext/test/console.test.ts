import { describe, expect, it } from 'vitest';

import {
  IFilters,
  chartGeometry,
  dashboardUrl,
  describeOptions,
  describeWorkers,
  errorMessage,
  fillDays,
  formatHours,
  niceScale,
  overviewPath,
  query,
  quotaPath,
  shareState,
  usageByDayPath,
  usageScope,
  usageTablePath
} from '../src/console/model';

const NONE: IFilters = { everyone: false, user: '', group: '', showEnded: false };

describe('requests', () => {
  it('builds query strings from the values that are set, encoded', () => {
    expect(query({})).toBe('');
    expect(query({ a: '', b: null, c: false, d: undefined })).toBe('');
    expect(query({ all: true, user: 'a b&c', n: 3 })).toBe('?all=1&user=a%20b%26c&n=3');
  });

  it('asks the overview for the own clusters unless an admin looks at everyone', () => {
    expect(overviewPath(NONE, false)).toBe('/api/v1/overview?status=pending%2Crunning%2Cstopping');
    const everyone = { ...NONE, everyone: true, user: ' bob ', group: 'physics' };
    // A user's filters never ask for more than their own.
    expect(overviewPath(everyone, false)).toBe(
      '/api/v1/overview?status=pending%2Crunning%2Cstopping'
    );
    expect(overviewPath({ ...everyone, showEnded: true }, true)).toBe(
      '/api/v1/overview?all=1&user=bob&group=physics&status=pending%2Crunning%2Cstopping%2Cstopped%2Cfailed'
    );
  });

  it('scopes usage and quota like the clusters', () => {
    expect(usageScope(NONE, true)).toEqual({ user: '', group: '', everyone: false });
    const all = { ...NONE, everyone: true };
    expect(usageScope(all, true)).toEqual({ user: '', group: '', everyone: true });
    expect(usageScope({ ...all, user: 'bob', group: 'g' }, true)).toEqual({
      user: 'bob',
      group: '',
      everyone: false
    });
    expect(usageScope({ ...all, group: 'g' }, true)).toEqual({
      user: '',
      group: 'g',
      everyone: false
    });
    expect(usageByDayPath({ user: 'bob', group: '' })).toBe('/api/v1/usage?by=day&user=bob');
    expect(quotaPath({ user: '', group: '', everyone: false })).toBe('/api/v1/quota');
    expect(quotaPath({ user: 'bob', group: '', everyone: false })).toBe('/api/v1/quota?user=bob');
    expect(quotaPath({ user: '', group: 'g', everyone: false })).toBeNull();
    expect(quotaPath({ user: '', group: '', everyone: true })).toBeNull();
    expect(usageTablePath('group', 'csv')).toBe('/api/v1/usage?by=group&format=csv');
    expect(usageTablePath('user')).toBe('/api/v1/usage?by=user');
  });
});

describe('wording', () => {
  it('says options, workers and hours', () => {
    expect(describeOptions({ worker_cores: 2, environment: '<img src=x>', flag: true })).toEqual([
      'worker_cores: 2',
      'environment: <img src=x>',
      'flag: true'
    ]);
    expect(describeWorkers({ requested: 2, running: 2, pending: 0 })).toBe('2');
    expect(describeWorkers({ requested: 3, running: 1, pending: 2 })).toBe('1 of 3 (2 starting)');
    expect(formatHours(0)).toBe('0');
    expect(formatHours(0.0312)).toBe('0.031');
    expect(formatHours(12.54)).toBe('12.5');
    expect(formatHours(1234.4)).toBe('1,234');
    expect(shareState(0.5, 0.8)).toBe('ok');
    expect(shareState(0.8, 0.8)).toBe('warning');
    expect(shareState(1, 0.8)).toBe('exhausted');
  });

  it('reads the gateway error message, else names the status', () => {
    expect(errorMessage(403, '{"error": "User a lacks permissions"}')).toBe(
      'User a lacks permissions'
    );
    expect(errorMessage(502, '<html>bad gateway</html>')).toBe('The gateway answered 502');
    expect(errorMessage(500, '{"other": 1}')).toBe('The gateway answered 500');
  });

  it('links a running dashboard under the prefix, with the name encoded', () => {
    const c = {
      name: 'a/b',
      user: 'u',
      groups: [],
      status: 'RUNNING',
      workers: { requested: 0, running: 0, pending: 0 },
      cores: 1,
      memory: 0,
      start_time: 0,
      stop_time: null,
      options: {},
      dashboard_route: '/clusters/a/b/status'
    };
    expect(dashboardUrl('/gw', c)).toBe('/gw/clusters/a%2Fb/status');
    expect(dashboardUrl('', { ...c, dashboard_route: null })).toBeNull();
  });
});

describe('the chart', () => {
  it('fills the days without use with zeros, in UTC', () => {
    const since = Date.UTC(2026, 11, 1);
    const until = Date.UTC(2026, 11, 4, 12);
    const rows = [
      {
        day: '2026-12-02',
        clusters: 1,
        core_seconds: 7200,
        memory_byte_seconds: 0,
        core_hours: 2,
        memory_gib_hours: 0
      }
    ];
    expect(fillDays(rows, since, until)).toEqual([
      { day: '2026-12-01', value: 0 },
      { day: '2026-12-02', value: 2 },
      { day: '2026-12-03', value: 0 },
      { day: '2026-12-04', value: 0 }
    ]);
    // A long range shows its last 92 days.
    expect(fillDays([], since, since + 400 * 86400000)).toHaveLength(92);
  });

  it('picks nice scales', () => {
    expect(niceScale(0)).toEqual({ top: 1, step: 0.25 });
    expect(niceScale(7)).toEqual({ top: 8, step: 2 });
    expect(niceScale(100)).toEqual({ top: 100, step: 50 });
    expect(niceScale(0.3).top).toBeCloseTo(0.3);
    expect(niceScale(0.31).top).toBeCloseTo(0.4);
  });

  it('draws bars per day, the running total and the quota on one axis', () => {
    const days = [
      { day: '2026-12-01', value: 1 },
      { day: '2026-12-02', value: 3 }
    ];
    const g = chartGeometry(days, 10, 640, 220);
    expect(g.total).toBe(4);
    expect(g.bars).toHaveLength(2);
    // The quota (10) sets the top of the axis: its line is at the top of the plot.
    expect(g.limit?.y).toBeCloseTo(g.plot.top);
    const [a, b] = g.bars;
    expect(b.h).toBeCloseTo(3 * a.h);
    expect(a.y + a.h).toBeCloseTo(g.plot.bottom);
    expect(g.line.split(' ')).toHaveLength(2);
    expect(g.yTicks[0].label).toBe('0');
    expect(g.yTicks[g.yTicks.length - 1].label).toBe('10');
    expect(g.xLabels.map(l => l.label)).toEqual(['12-01', '12-02']);
    // Without a quota the data sets the scale; no quota line.
    expect(chartGeometry(days, null).limit).toBeNull();
  });
});
