import { describe, expect, it } from 'vitest';

import { connectCode } from '../src/connect';

describe('connectCode', () => {
  it('connects to the named cluster with the kernel’s dask config', () => {
    expect(connectCode('abc123')).toBe(
      [
        'from dask_gateway import Gateway',
        '',
        'gateway = Gateway()',
        'cluster = gateway.connect("abc123")',
        'client = cluster.get_client()',
        'client'
      ].join('\n')
    );
  });

  it('quotes any name as a Python string literal', () => {
    const code = connectCode('a"b\\c\nd');
    expect(code).toContain('cluster = gateway.connect("a\\"b\\\\c\\nd")');
    expect(code.split('\n')).toHaveLength(6); // the newline stays escaped
  });
});
