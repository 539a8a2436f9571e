/**
 * The "New cluster" form, built from the gateway's options spec.
 *
 * Values are checked by the server with the Python client's own `Options` (the class the
 * notebook widget uses), so a user sees the same words in both places and nothing here
 * re-implements its rules.
 */
import { inputText, optionValue } from './options';
import type { IOptionField, IValidation } from './types';

/** Wait this long after the last keystroke before asking the server. */
export const VALIDATE_DELAY = 250;

export interface IFormHandlers {
  /** The server's check of `values`: the client's message per refused field. */
  validate(values: Record<string, unknown>): Promise<IValidation>;
  /** Called with values the server found valid. */
  submit(values: Record<string, unknown>): void;
  cancel(): void;
}

interface IFieldView {
  field: IOptionField;
  input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
  error: HTMLElement;
}

/** A form for the given fields, validated by the server as the user types. */
export class OptionsForm {
  readonly node: HTMLFormElement;
  private views: IFieldView[] = [];
  private submitButton: HTMLButtonElement;
  private note: HTMLElement;
  private timer: number | undefined;
  /** Number of the latest check asked for: older answers are ignored. */
  private asked = 0;
  private invalid = false;
  private working = false;

  constructor(
    fields: IOptionField[],
    private handlers: IFormHandlers
  ) {
    const form = document.createElement('form');
    form.className = 'dgj-Form';
    form.noValidate = true; // the client's messages, not the browser's
    const title = document.createElement('div');
    title.className = 'dgj-Form-title';
    title.textContent = 'New cluster';
    form.appendChild(title);
    this.note = document.createElement('div');
    this.note.className = 'dgj-Form-note';
    if (fields.length === 0) {
      this.note.textContent = 'This gateway offers no options; the cluster uses its defaults.';
    }
    form.appendChild(this.note);
    for (const field of fields) {
      form.appendChild(this.makeField(field));
    }
    const buttons = document.createElement('div');
    buttons.className = 'dgj-Form-buttons';
    this.submitButton = document.createElement('button');
    this.submitButton.type = 'submit';
    this.submitButton.className = 'jp-mod-accept dgj-Button';
    this.submitButton.textContent = 'Create';
    const cancel = document.createElement('button');
    cancel.type = 'button';
    cancel.className = 'dgj-Button';
    cancel.textContent = 'Cancel';
    cancel.addEventListener('click', () => handlers.cancel());
    buttons.append(this.submitButton, cancel);
    form.appendChild(buttons);
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this.trySubmit();
    });
    this.node = form;
    void this.check();
  }

  /** True while the cluster is being created (the button says so). */
  set busy(value: boolean) {
    this.working = value;
    this.submitButton.textContent = value ? 'Creating…' : 'Create';
    this.updateButton();
  }

  /** The values as typed, converted to what the server takes. */
  values(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const view of this.views) {
      out[view.field.field] = optionValue(view.field.spec.type, this.raw(view));
    }
    return out;
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    this.asked++; // answers still on their way find nothing to update
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
      select.value = inputText(field);
      input = select;
    } else if (kind === 'bool') {
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = Boolean(field.default);
      input = box;
    } else if (kind === 'mapping') {
      const area = document.createElement('textarea');
      area.rows = 3;
      area.value = inputText(field);
      input = area;
    } else {
      const text = document.createElement('input');
      if (kind === 'int' || kind === 'float') {
        // Not type="number": the browser would hand over '' for what it cannot parse, and
        // the user would not see their own text in the message.
        text.inputMode = kind === 'int' ? 'numeric' : 'decimal';
      }
      text.type = 'text';
      text.value = inputText(field);
      input = text;
    }
    input.classList.add('dgj-Field-input');
    input.name = field.field;
    const error = document.createElement('div');
    error.className = 'dgj-Field-error';
    error.setAttribute('role', 'alert');
    input.addEventListener('input', () => this.schedule());
    input.addEventListener('change', () => this.schedule());
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

  private schedule(): void {
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.check(), VALIDATE_DELAY);
  }

  /** Ask the server about the current values and show its answer (if still the latest).
   * Returns whether they are valid, or null if the answer is stale or did not come. */
  private async check(): Promise<boolean | null> {
    window.clearTimeout(this.timer);
    const asked = ++this.asked;
    let result: IValidation;
    try {
      result = await this.handlers.validate(this.values());
    } catch (error) {
      if (asked === this.asked) {
        // Creating checks again: a failed check does not block the form.
        this.note.textContent = `Could not check the values: ${(error as Error).message}`;
      }
      return null;
    }
    if (asked !== this.asked) {
      return null;
    }
    if (this.views.length) {
      this.note.textContent = '';
    }
    this.show(result.errors);
    return !this.invalid;
  }

  private show(errors: Record<string, string>): void {
    for (const view of this.views) {
      const message = errors[view.field.field] ?? '';
      if (view.error.textContent !== message) {
        view.error.textContent = message;
      }
      view.input.classList.toggle('dgj-mod-invalid', Boolean(message));
    }
    this.invalid = Object.keys(errors).length > 0;
    this.updateButton();
  }

  private updateButton(): void {
    this.submitButton.disabled = this.working || this.invalid;
  }

  private async trySubmit(): Promise<void> {
    if (this.working) {
      return;
    }
    const values = this.values();
    const valid = await this.check();
    if (valid !== false) {
      this.handlers.submit(values);
    }
  }
}
