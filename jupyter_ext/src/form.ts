/**
 * The "New cluster" form, built from the gateway's options spec.
 *
 * Field types and validation messages mirror the Python client (`dask_gateway/options.py`),
 * which the notebook widget uses, so a user sees the same words in both places; the server
 * extension validates again with that very class before submitting.
 */
import type { IOptionField } from './api';

/** Python's repr() of a str, enough for messages. */
function pyStr(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/** Python's repr() of a float (`5.0`, not `5`). */
function pyFloat(value: number): string {
  if (Number.isInteger(value) && Math.abs(value) < 1e16) {
    return value.toFixed(1);
  }
  return String(value);
}

/** `_format_bound` in options.py: `4`, not `4.0`. */
function formatBound(bound: number): string {
  return String(bound);
}

type Result = { value: unknown } | { error: string };

function checkBounds(field: IOptionField, value: number, shown: string): Result {
  const { min, max } = field.spec;
  if (min !== null && min !== undefined && value < min) {
    return { error: `${field.field} must be >= ${formatBound(min)}, got ${shown}` };
  }
  if (max !== null && max !== undefined && value > max) {
    return { error: `${field.field} must be <= ${formatBound(max)}, got ${shown}` };
  }
  return { value };
}

/** Validate the raw input of one field as `Field.validate` would. */
export function validateField(field: IOptionField, raw: string | boolean): Result {
  const kind = field.spec.type;
  if (kind === 'bool') {
    return { value: Boolean(raw) };
  }
  const text = String(raw).trim();
  if (kind === 'int') {
    if (!/^[+-]?\d+$/.test(text)) {
      const asNumber = text === '' ? NaN : Number(text);
      const shown = Number.isFinite(asNumber) ? pyFloat(asNumber) : pyStr(String(raw));
      return { error: `${field.field} must be an integer, got ${shown}` };
    }
    const value = parseInt(text, 10);
    return checkBounds(field, value, String(value));
  }
  if (kind === 'float') {
    const value = text === '' ? NaN : Number(text);
    if (!Number.isFinite(value)) {
      return { error: `${field.field} must be a float, got ${pyStr(String(raw))}` };
    }
    return checkBounds(field, value, pyFloat(value));
  }
  if (kind === 'select') {
    const choices = field.spec.options ?? [];
    if (!choices.includes(String(raw))) {
      return { error: `${pyStr(String(raw))} is not a valid option for ${field.field}` };
    }
    return { value: String(raw) };
  }
  if (kind === 'mapping') {
    let parsed: unknown;
    try {
      parsed = text === '' ? {} : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      return { error: `${field.field} must be a mapping, got ${pyStr(String(raw))}` };
    }
    return { value: parsed };
  }
  return { value: String(raw) };
}

interface IFieldView {
  field: IOptionField;
  input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
  error: HTMLElement;
}

/** A form for the given fields; `values()` is null while any field is invalid. */
export class OptionsForm {
  readonly node: HTMLFormElement;
  private views: IFieldView[] = [];
  private submit: HTMLButtonElement;

  constructor(
    fields: IOptionField[],
    onSubmit: (values: Record<string, unknown>) => void,
    onCancel: () => void
  ) {
    const form = document.createElement('form');
    form.className = 'dgj-Form';
    form.noValidate = true; // our messages, not the browser's
    const title = document.createElement('div');
    title.className = 'dgj-Form-title';
    title.textContent = 'New cluster';
    form.appendChild(title);
    if (fields.length === 0) {
      const note = document.createElement('div');
      note.className = 'dgj-Form-note';
      note.textContent = 'This gateway offers no options; the cluster uses its defaults.';
      form.appendChild(note);
    }
    for (const field of fields) {
      form.appendChild(this.makeField(field));
    }
    const buttons = document.createElement('div');
    buttons.className = 'dgj-Form-buttons';
    this.submit = document.createElement('button');
    this.submit.type = 'submit';
    this.submit.className = 'jp-mod-accept dgj-Button';
    this.submit.textContent = 'Create';
    const cancel = document.createElement('button');
    cancel.type = 'button';
    cancel.className = 'dgj-Button';
    cancel.textContent = 'Cancel';
    cancel.addEventListener('click', onCancel);
    buttons.append(this.submit, cancel);
    form.appendChild(buttons);
    form.addEventListener('submit', event => {
      event.preventDefault();
      const values = this.values();
      if (values) {
        onSubmit(values);
      }
    });
    this.node = form;
    this.validateAll();
  }

  set busy(value: boolean) {
    this.submit.disabled = value || !this.isValid();
    this.submit.textContent = value ? 'Creating…' : 'Create';
  }

  private makeField(field: IOptionField): HTMLElement {
    const row = document.createElement('label');
    row.className = 'dgj-Field';
    row.dataset.field = field.field;
    const label = document.createElement('span');
    label.className = 'dgj-Field-label';
    label.textContent = field.label || field.field;
    let input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
    const kind = field.spec.type;
    if (kind === 'select') {
      const select = document.createElement('select');
      for (const choice of field.spec.options ?? []) {
        const option = document.createElement('option');
        option.value = option.textContent = choice;
        select.appendChild(option);
      }
      select.value = String(field.default ?? '');
      input = select;
    } else if (kind === 'bool') {
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = Boolean(field.default);
      input = box;
    } else if (kind === 'mapping') {
      const area = document.createElement('textarea');
      area.rows = 3;
      area.value = JSON.stringify(field.default ?? {});
      input = area;
    } else {
      const text = document.createElement('input');
      if (kind === 'int' || kind === 'float') {
        text.type = 'number';
        text.step = kind === 'int' ? '1' : 'any';
        if (field.spec.min !== null && field.spec.min !== undefined) {
          text.min = String(field.spec.min);
        }
        if (field.spec.max !== null && field.spec.max !== undefined) {
          text.max = String(field.spec.max);
        }
      } else {
        text.type = 'text';
      }
      text.value = field.default === null || field.default === undefined ? '' : String(field.default);
      input = text;
    }
    input.classList.add('dgj-Field-input');
    input.name = field.field;
    const error = document.createElement('div');
    error.className = 'dgj-Field-error';
    error.setAttribute('role', 'alert');
    input.addEventListener('input', () => this.validateAll());
    input.addEventListener('change', () => this.validateAll());
    row.append(label, input, error);
    this.views.push({ field, input, error });
    return row;
  }

  private raw(view: IFieldView): string | boolean {
    const input = view.input;
    if (input instanceof HTMLInputElement && input.type === 'checkbox') {
      return input.checked;
    }
    return input.value;
  }

  private isValid(): boolean {
    return this.views.every(v => !('error' in validateField(v.field, this.raw(v))));
  }

  private validateAll(): void {
    for (const view of this.views) {
      const result = validateField(view.field, this.raw(view));
      const message = 'error' in result ? result.error : '';
      view.error.textContent = message;
      view.input.classList.toggle('dgj-mod-invalid', Boolean(message));
    }
    this.submit.disabled = !this.isValid();
  }

  /** The validated values, or null (with messages shown) if any field is invalid. */
  values(): Record<string, unknown> | null {
    this.validateAll();
    const out: Record<string, unknown> = {};
    for (const view of this.views) {
      const result = validateField(view.field, this.raw(view));
      if ('error' in result) {
        return null;
      }
      out[view.field.field] = result.value;
    }
    return out;
  }
}
