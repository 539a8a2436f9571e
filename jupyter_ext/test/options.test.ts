import { describe, expect, it } from 'vitest';

import { inputText, optionValue, parseCount } from '../src/options';
import type { IOptionField } from '../src/types';

describe('optionValue', () => {
  it('sends numbers as numbers', () => {
    expect(optionValue('int', '3')).toBe(3);
    expect(optionValue('int', ' +3 ')).toBe(3);
    expect(optionValue('int', '-2')).toBe(-2);
    expect(optionValue('float', '0.5')).toBe(0.5);
    expect(optionValue('float', '.5')).toBe(0.5);
    expect(optionValue('float', '1e3')).toBe(1000);
    expect(optionValue('int', '2.5')).toBe(2.5); // the server says it is not an integer
  });

  it('sends what is not a number as the text typed, for the server to name it', () => {
    expect(optionValue('int', 'abc')).toBe('abc');
    expect(optionValue('int', '')).toBe('');
    expect(optionValue('float', 'Infinity')).toBe('Infinity');
    expect(optionValue('float', '0x10')).toBe('0x10');
    expect(optionValue('int', '1 2')).toBe('1 2');
    expect(optionValue('float', '1e400')).toBe('1e400'); // no JSON number for Infinity
  });

  it('sends booleans, choices and strings as they are', () => {
    expect(optionValue('bool', true)).toBe(true);
    expect(optionValue('bool', false)).toBe(false);
    expect(optionValue('select', 'basic')).toBe('basic');
    expect(optionValue('string', ' spaced ')).toBe(' spaced ');
    expect(optionValue('some-new-type', 'x')).toBe('x');
  });

  it('parses mappings as JSON, and leaves text that is not JSON as text', () => {
    expect(optionValue('mapping', '{"A": "1"}')).toEqual({ A: '1' });
    expect(optionValue('mapping', '  ')).toEqual({});
    expect(optionValue('mapping', '[1]')).toEqual([1]);
    expect(optionValue('mapping', '{A: 1}')).toBe('{A: 1}');
  });
});

describe('inputText', () => {
  const field = (type: string, value: unknown): IOptionField => ({
    field: 'f',
    label: 'F',
    default: value,
    spec: { type }
  });

  it('shows each default as text', () => {
    expect(inputText(field('int', 1))).toBe('1');
    expect(inputText(field('float', 0.25))).toBe('0.25');
    expect(inputText(field('select', 'basic'))).toBe('basic');
    expect(inputText(field('string', null))).toBe('');
    expect(inputText(field('mapping', { A: 1 }))).toBe('{"A":1}');
    expect(inputText(field('mapping', null))).toBe('{}');
  });
});

describe('parseCount', () => {
  it('takes non-negative integers', () => {
    expect(parseCount('0', 'a number of workers', false)).toEqual({ value: 0 });
    expect(parseCount(' 12 ', 'a number of workers', false)).toEqual({ value: 12 });
  });

  it('takes an empty bound only where allowed', () => {
    expect(parseCount('', 'the maximum', true)).toEqual({ value: null });
    expect(parseCount('  ', 'a number of workers', false)).toEqual({
      error: 'Enter a number of workers: a whole number, 0 or more'
    });
  });

  it('refuses anything else, saying what was typed', () => {
    expect(parseCount('-1', 'the minimum', true)).toEqual({
      error: 'The minimum must be a whole number, 0 or more (got -1)'
    });
    expect(parseCount('2.5', 'a number of workers', false)).toEqual({
      error: 'A number of workers must be a whole number, 0 or more (got 2.5)'
    });
  });
});
