import { describe, expect, it } from 'vitest';

import {
  dismissedKey,
  isEnded,
  loadDismissed,
  pruneDismissed,
  saveDismissed,
  visibleClusters
} from '../src/dismissed';
import type { ICluster } from '../src/types';

function cluster(name: string, status: string): ICluster {
  return {
    name,
    status,
    start_time: 0,
    stop_time: null,
    phase: null,
    reason: null,
    age: 0,
    dashboard_link: null,
    options: {},
    workers: null,
    cores: null,
    memory: null,
    requested: null,
    adapt: null
  };
}

class MemoryStorage {
  items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

describe('isEnded', () => {
  it('is true of stopped and failed clusters only', () => {
    expect(isEnded('STOPPED')).toBe(true);
    expect(isEnded('FAILED')).toBe(true);
    for (const status of ['PENDING', 'RUNNING', 'STOPPING']) {
      expect(isEnded(status)).toBe(false);
    }
  });
});

describe('dismissed names in storage', () => {
  it('are kept per Jupyter server', () => {
    expect(dismissedKey('/user/alice/')).not.toBe(dismissedKey('/user/bob/'));
  });

  it('round-trip, and an empty set leaves nothing behind', () => {
    const storage = new MemoryStorage();
    const key = dismissedKey('/');
    saveDismissed(storage, key, new Set(['b', 'a']));
    expect(storage.getItem(key)).toBe('["a","b"]');
    expect(loadDismissed(storage, key)).toEqual(new Set(['a', 'b']));
    saveDismissed(storage, key, new Set());
    expect(storage.items.size).toBe(0);
  });

  it('read anything unreadable as none', () => {
    const storage = new MemoryStorage();
    for (const raw of ['not json', '{"a": 1}', '42', 'null']) {
      storage.setItem('k', raw);
      expect(loadDismissed(storage, 'k')).toEqual(new Set());
    }
    storage.setItem('k', '["a", 1, null, "b"]');
    expect(loadDismissed(storage, 'k')).toEqual(new Set(['a', 'b']));
    expect(loadDismissed(null, 'k')).toEqual(new Set());
    const blocked = {
      getItem: () => {
        throw new Error('SecurityError');
      }
    };
    expect(loadDismissed(blocked, 'k')).toEqual(new Set());
  });

  it('survive a storage that refuses writes', () => {
    const full = {
      setItem: () => {
        throw new Error('QuotaExceededError');
      },
      removeItem: () => undefined
    };
    expect(() => saveDismissed(full, 'k', new Set(['a']))).not.toThrow();
  });
});

describe('visibleClusters and pruneDismissed', () => {
  const list = [
    cluster('run', 'RUNNING'),
    cluster('stopped', 'STOPPED'),
    cluster('failed', 'FAILED'),
    cluster('starting', 'PENDING')
  ];

  it('hide dismissed clusters once they have ended, never active ones', () => {
    const dismissed = new Set(['stopped', 'run', 'starting']);
    expect(visibleClusters(list, dismissed).map(c => c.name)).toEqual([
      'run',
      'failed',
      'starting'
    ]);
    expect(visibleClusters(list, new Set()).length).toBe(4);
  });

  it('forget the names the list no longer has', () => {
    expect(pruneDismissed(new Set(['stopped', 'long-gone']), list)).toEqual(new Set(['stopped']));
  });
});
