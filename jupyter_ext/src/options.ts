/**
 * From what a user typed to the values sent to the server (pure: unit-tested without
 * JupyterLab).
 *
 * Whether a value is valid is the server's to say: it checks with the Python client's own
 * `Options` (`POST dask-gateway/options/validate`), so the form shows the client's words.
 * These helpers only turn text into JSON the way the user meant it.
 */
import type { IOptionField } from './types';

/** A JSON number literal, as typed (no `Infinity`, hex, or blanks). */
const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

/** The value to send for an input of an option field of type `kind`.
 *
 * Text that is not a number stays text, so the server answers with the client's own message
 * (`worker_cores must be an integer, got 'abc'`) rather than one made up here. */
export function optionValue(kind: string, raw: string | boolean): unknown {
  if (kind === 'bool') {
    return Boolean(raw);
  }
  const text = String(raw);
  if (kind === 'int' || kind === 'float') {
    const trimmed = text.trim();
    const value = NUMBER.test(trimmed) ? Number(trimmed) : NaN;
    // Past the float range (1e400) JSON has no number for it: the text goes instead.
    return Number.isFinite(value) ? value : text;
  }
  if (kind === 'mapping') {
    if (text.trim() === '') {
      return {};
    }
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

/** The text an input starts with for the field's default. */
export function inputText(field: IOptionField): string {
  const value = field.default;
  if (value === null || value === undefined) {
    return field.spec.type === 'mapping' ? '{}' : '';
  }
  if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') {
    return String(value);
  }
  return JSON.stringify(value);
}

/** A worker count typed in the sidebar: a non-negative integer, or null when empty and
 * `allowEmpty` (an open end of an adaptive range). */
export function parseCount(
  text: string,
  what: string,
  allowEmpty: boolean
): { value: number | null } | { error: string } {
  const trimmed = text.trim();
  if (trimmed === '') {
    return allowEmpty ? { value: null } : { error: `Enter ${what}: a whole number, 0 or more` };
  }
  if (!/^\d+$/.test(trimmed)) {
    return { error: `${capitalize(what)} must be a whole number, 0 or more (got ${trimmed})` };
  }
  return { value: parseInt(trimmed, 10) };
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
