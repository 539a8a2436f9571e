import { describe, expect, it } from 'vitest';

import {
  clusterMessage,
  clusterNote,
  formatAdapt,
  formatAge,
  formatBytes,
  formatWorkers,
  isFinal,
  isLater,
  shortName
} from '../src/format';

describe('formatBytes', () => {
  it('says sizes as dask.utils.format_bytes does', () => {
    // Values and words from dask.utils.format_bytes.
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(920)).toBe('920 B');
    expect(formatBytes(930)).toBe('0.91 kiB');
    expect(formatBytes(2 ** 30)).toBe('1.00 GiB');
    expect(formatBytes(2 * 2 ** 30)).toBe('2.00 GiB');
    expect(formatBytes(536870912)).toBe('512.00 MiB');
    expect(formatBytes(0.9 * 2 ** 40)).toBe('0.90 TiB');
    expect(formatBytes(3 * 2 ** 50)).toBe('3.00 PiB');
  });
});

describe('formatAge', () => {
  it.each([
    [-5, '0 s'],
    [0, '0 s'],
    [59.9, '59 s'],
    [60, '1 min'],
    [3599, '59 min'],
    [3600, '1 h 0 min'],
    [2 * 3600 + 5 * 60 + 7, '2 h 5 min'],
    [86400, '1 d 0 h'],
    [3 * 86400 + 4 * 3600 + 59, '3 d 4 h']
  ])('%s seconds are %s', (seconds, text) => {
    expect(formatAge(seconds)).toBe(text);
  });
});

describe('cluster wording', () => {
  const name = '0123456789abcdef0123456789abcdef';

  it('names a cluster by its first 8 characters', () => {
    expect(shortName(name)).toBe('Cluster 01234567');
  });

  it('says each state, and whether it is a warning', () => {
    expect(clusterMessage(name, 'PENDING', 'PENDING')).toEqual({
      text: 'Cluster 01234567 is starting',
      warn: false
    });
    expect(clusterMessage(name, 'RUNNING', 'PENDING').text).toBe('Cluster 01234567 is running');
    expect(clusterMessage(name, 'STOPPING', 'RUNNING').text).toBe(
      'Cluster 01234567 is shutting down'
    );
    expect(clusterMessage(name, 'FAILED', 'RUNNING')).toEqual({
      text: 'Cluster 01234567 failed',
      warn: true
    });
  });

  it('takes a cluster gone after a shutdown as expected, and otherwise as a warning', () => {
    expect(clusterMessage(name, 'GONE', 'STOPPING')).toEqual({
      text: 'Cluster 01234567 has shut down',
      warn: false
    });
    expect(clusterMessage(name, 'GONE', 'RUNNING')).toEqual({
      text: 'Cluster 01234567 stopped',
      warn: true
    });
  });

  it('moves messages forward only', () => {
    expect(isLater('RUNNING', 'PENDING')).toBe(true);
    expect(isLater('PENDING', 'RUNNING')).toBe(false);
    expect(isLater('RUNNING', 'RUNNING')).toBe(false);
    expect(isLater('GONE', 'STOPPING')).toBe(true);
    expect(isLater('RUNNING', 'STOPPING')).toBe(false); // a poll from before the shutdown
    expect(isLater('SOMETHING-NEW', 'PENDING')).toBe(false);
    expect(isFinal('GONE') && isFinal('FAILED') && isFinal('STOPPED')).toBe(true);
    expect(isFinal('STOPPING')).toBe(false);
  });

  it('shows worker counts and adaptive ranges', () => {
    expect(formatWorkers(null, null)).toBe('–');
    expect(formatWorkers(2, null)).toBe('2');
    expect(formatWorkers(2, 2)).toBe('2');
    expect(formatWorkers(1, 3)).toBe('1 of 3');
    expect(formatWorkers(1, 3, 2)).toBe('1 of 3 (2 starting)');
    expect(formatWorkers(2, 2, 0)).toBe('2');
    expect(formatAdapt(null)).toBe('');
    expect(formatAdapt({ minimum: 1, maximum: 3 })).toBe('Adaptive: 1 to 3 workers');
    expect(formatAdapt({ minimum: null, maximum: null })).toBe('Adaptive: 0 to limit workers');
  });
});

describe('clusterMessage with a reason', () => {
  it('says why a cluster failed', () => {
    const reason = "The scheduler exited before it started: No module named 'distributed'";
    expect(clusterMessage('0123456789abcdef', 'FAILED', 'PENDING', reason)).toEqual({
      text: `Cluster 01234567 failed: ${reason}`,
      warn: true
    });
    expect(clusterMessage('0123456789abcdef', 'FAILED', 'PENDING', null).text).toBe(
      'Cluster 01234567 failed'
    );
  });

  it('says a stopped cluster stopped, as when it left the list', () => {
    expect(clusterMessage('0123456789abcdef', 'STOPPED', 'STOPPING')).toEqual({
      text: 'Cluster 01234567 has shut down',
      warn: false
    });
    expect(clusterMessage('0123456789abcdef', 'STOPPED', 'RUNNING')).toEqual({
      text: 'Cluster 01234567 stopped',
      warn: true
    });
  });
});

describe('clusterNote', () => {
  const now = 1_000_000_000;
  const base = { phase: null, reason: null, stop_time: null };

  it("shows a starting cluster's phase", () => {
    expect(clusterNote({ ...base, status: 'PENDING' }, now)).toBe('');
    expect(
      clusterNote({ ...base, status: 'PENDING', phase: "Waiting in Slurm's queue: Resources" }, now)
    ).toBe("Waiting in Slurm's queue: Resources");
    // A phase is a starting cluster's only.
    expect(clusterNote({ ...base, status: 'RUNNING', phase: 'Scheduler running' }, now)).toBe('');
  });

  it("shows a failed cluster's reason, or points at its logs", () => {
    expect(clusterNote({ ...base, status: 'FAILED', reason: 'It broke.' }, now)).toBe('It broke.');
    expect(clusterNote({ ...base, status: 'FAILED', stop_time: now - 90_000 }, now)).toBe(
      'Failed 1 min ago; see its logs'
    );
  });

  it('says when a stopped cluster stopped', () => {
    expect(clusterNote({ ...base, status: 'STOPPED', stop_time: now - 5_000 }, now)).toBe(
      'Stopped 5 s ago'
    );
    expect(clusterNote({ ...base, status: 'STOPPED' }, now)).toBe('Stopped');
  });
});
