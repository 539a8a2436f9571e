/**
 * A cluster's logs in a main-area tab: a component picker (scheduler, workers) and the text,
 * which follows new lines as they are written.
 *
 * Following is a long-poll of the server extension's relay: each request asks for the bytes
 * after the last answer's `offset` and waits up to `FOLLOW_WAIT` s for more; the gateway
 * answers as soon as the log grows, or with `done` once the cluster has ended (the log is then
 * complete, and the tab says so). Switching component or closing the tab aborts the request.
 */
import { Widget } from '@lumino/widgets';

import { GatewayError, type IGatewayAPI } from './api';
import { appendChunk, componentLabel, type ILogText, orderComponents, retryDelay } from './logs';

/** Seconds each follow request may wait on the gateway for new text. */
export const FOLLOW_WAIT = 25;
/** The most text a tab keeps (characters); older lines give way. */
export const MAX_CHARS = 2_000_000;
/** How often the component list is refreshed while following (ms). */
const COMPONENTS_EVERY = 15_000;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text) {
    node.textContent = text;
  }
  return node;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>(resolve => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });

/** The logs of cluster `name`, following the chosen component. */
export class LogsView extends Widget {
  private picker: HTMLSelectElement;
  private status: HTMLElement;
  private pre: HTMLPreElement;
  private shown: ILogText = { text: '', offset: null };
  private component = 'scheduler';
  private controller: AbortController | null = null;
  private componentsAt = 0;

  constructor(
    private readonly api: IGatewayAPI,
    readonly clusterName: string
  ) {
    super();
    this.addClass('dgj-Logs');
    this.id = `dask-gateway-logs-view-${clusterName}`;
    const bar = el('div', 'dgj-Logs-toolbar');
    const label = el('label', 'dgj-Logs-label', 'Component ');
    this.picker = el('select', 'dgj-Logs-component');
    this.picker.setAttribute('aria-label', 'Log component');
    this.picker.append(new Option(componentLabel('scheduler'), 'scheduler'));
    this.picker.addEventListener('change', () => this.showComponent(this.picker.value));
    // Workers come and go: list them afresh when the picker is about to open.
    this.picker.addEventListener('focus', () => void this.loadComponents());
    label.append(this.picker);
    this.status = el('span', 'dgj-Logs-status');
    this.status.setAttribute('role', 'status');
    bar.append(label, this.status);
    this.pre = el('pre', 'dgj-Logs-text');
    this.pre.tabIndex = 0;
    this.node.append(bar, this.pre);
    void this.loadComponents();
    this.showComponent('scheduler');
  }

  dispose(): void {
    this.controller?.abort();
    this.controller = null;
    super.dispose();
  }

  /** Show (and follow) `component` from its newest kept text. */
  showComponent(component: string): void {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.component = component;
    this.picker.value = component;
    this.shown = { text: '', offset: null };
    this.pre.textContent = '';
    this.setStatus('Loading…', 'loading');
    void this.follow(component, controller.signal);
  }

  private setStatus(text: string, state: string): void {
    this.status.textContent = text;
    this.status.dataset.state = state;
    this.node.dataset.state = state;
  }

  /** The components the gateway has logs of, into the picker (the shown one stays). */
  private async loadComponents(): Promise<void> {
    this.componentsAt = Date.now();
    let names: string[];
    try {
      names = Object.keys((await this.api.logs(this.clusterName, { tail: 1 })).logs ?? {});
    } catch {
      return; // the follow loop says what is wrong
    }
    if (this.isDisposed) {
      return;
    }
    const components = orderComponents(names, this.component);
    const current = [...this.picker.options].map(o => o.value);
    if (current.join('\n') !== components.join('\n')) {
      this.picker.replaceChildren(...components.map(c => new Option(componentLabel(c), c)));
      this.picker.value = this.component;
    }
  }

  private async follow(component: string, signal: AbortSignal): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      const first = this.shown.offset === null;
      const asked = Date.now();
      let answer;
      try {
        answer = await this.api.logs(
          this.clusterName,
          first ? { component } : { component, offset: this.shown.offset ?? 0, wait: FOLLOW_WAIT },
          signal
        );
      } catch (error) {
        if (signal.aborted) {
          return;
        }
        const status = error instanceof GatewayError ? error.status : 0;
        const message = error instanceof Error ? error.message : String(error);
        const delay = retryDelay(status, failures++);
        if (delay === null) {
          this.setStatus(message, 'error');
          return;
        }
        this.setStatus(`${message} (trying again)`, 'error');
        await sleep(delay, signal);
        continue;
      }
      failures = 0;
      const chunk = answer.logs?.[component] ?? '';
      this.append(chunk, answer.start, answer.offset);
      if (answer.done) {
        this.setStatus('The cluster has ended: this is its whole log.', 'ended');
        void this.loadComponents();
        return;
      }
      this.setStatus('Following new lines…', 'following');
      if (Date.now() - this.componentsAt > COMPONENTS_EVERY) {
        void this.loadComponents();
      }
      if (!first && !chunk && Date.now() - asked < 1000) {
        await sleep(1000, signal); // a server that does not hold the request: do not spin
      }
    }
  }

  private append(chunk: string, start: number | undefined, offset: number | undefined): void {
    const pre = this.pre;
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    const before = this.shown.text;
    this.shown = appendChunk(this.shown, chunk, start, offset, MAX_CHARS);
    const text = this.shown.text;
    if (text.startsWith(before) && before) {
      pre.append(text.slice(before.length)); // only the new lines: selections survive
    } else if (text !== before) {
      pre.textContent = text;
    }
    if (atBottom) {
      pre.scrollTop = pre.scrollHeight;
    }
  }
}
