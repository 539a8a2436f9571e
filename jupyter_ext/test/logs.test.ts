import { describe, expect, it } from 'vitest';

import {
  appendChunk,
  componentLabel,
  GAP_MARK,
  keepNewest,
  orderComponents,
  queryString,
  retryDelay
} from '../src/logs';

describe('queryString', () => {
  it('sends only the values that are set, encoded', () => {
    expect(queryString({})).toBe('');
    expect(queryString({ after: undefined, wait: undefined })).toBe('');
    expect(queryString({ after: 0, wait: 25 })).toBe('?after=0&wait=25');
    expect(queryString({ component: 'worker:a b&c', offset: 10 })).toBe(
      '?component=worker%3Aa%20b%26c&offset=10'
    );
  });
});

describe('components', () => {
  it('names them for the picker', () => {
    expect(componentLabel('scheduler')).toBe('Scheduler');
    expect(componentLabel('worker:dask-worker-1')).toBe('Worker dask-worker-1');
    expect(componentLabel('other')).toBe('other');
  });

  it('puts the scheduler first and keeps the one shown', () => {
    expect(orderComponents(['worker:b', 'scheduler', 'worker:a'])).toEqual([
      'scheduler',
      'worker:b',
      'worker:a'
    ]);
    expect(orderComponents([], 'scheduler')).toEqual(['scheduler']);
    expect(orderComponents(['scheduler'], 'worker:gone')).toEqual(['scheduler', 'worker:gone']);
    expect(orderComponents(['scheduler', 'scheduler'])).toEqual(['scheduler']);
  });
});

describe('appendChunk', () => {
  const empty = { text: '', offset: null };

  it('starts with the first answer and follows from its offset', () => {
    let shown = appendChunk(empty, 'a\nb\n', 0, 4, 1000);
    expect(shown).toEqual({ text: 'a\nb\n', offset: 4 });
    shown = appendChunk(shown, '', 4, 4, 1000); // the long-poll timed out: nothing new
    expect(shown).toEqual({ text: 'a\nb\n', offset: 4 });
    shown = appendChunk(shown, 'c\n', 4, 6, 1000);
    expect(shown).toEqual({ text: 'a\nb\nc\n', offset: 6 });
  });

  it('says when older bytes are no longer kept', () => {
    expect(appendChunk(empty, 'z\n', 500, 502, 1000).text).toBe(GAP_MARK + 'z\n');
  });

  it('marks a gap when the log outgrew what the gateway keeps', () => {
    const shown = appendChunk({ text: 'a\nb', offset: 3 }, 'y\n', 100, 102, 1000);
    expect(shown).toEqual({ text: `a\nb\n${GAP_MARK}y\n`, offset: 102 });
  });

  it('keeps the newest text, cut at a line start', () => {
    const shown = appendChunk({ text: 'one\ntwo\n', offset: 8 }, 'three\n', 8, 14, 9);
    expect(shown.text).toBe(GAP_MARK + 'three\n');
    expect(shown.offset).toBe(14);
  });
});

describe('keepNewest', () => {
  it('leaves short text alone', () => {
    expect(keepNewest('abc\n', 10)).toBe('abc\n');
  });
  it('cuts at the next line start', () => {
    expect(keepNewest('0123\n4567\n89\n', 7)).toBe(GAP_MARK + '89\n');
    expect(keepNewest('0123\n4567\n89\n', 8)).toBe(GAP_MARK + '4567\n89\n');
  });
  it('cuts mid-line only when there is no later line', () => {
    expect(keepNewest('x'.repeat(20), 5)).toBe(GAP_MARK + 'xxxxx');
  });
});

describe('retryDelay', () => {
  it('stops on refusals', () => {
    expect(retryDelay(400, 0)).toBeNull();
    expect(retryDelay(403, 0)).toBeNull();
  });
  it('asks for a missing log for a minute', () => {
    expect(retryDelay(404, 0)).toBe(5000);
    expect(retryDelay(404, 11)).toBe(5000);
    expect(retryDelay(404, 12)).toBeNull();
  });
  it('backs off on other failures', () => {
    expect(retryDelay(502, 0)).toBe(1000);
    expect(retryDelay(0, 3)).toBe(8000);
    expect(retryDelay(500, 10)).toBe(30000);
  });
});
