/**
 * The left-area panel: the user's clusters, live, with their actions.
 *
 * Rows are keyed by cluster name and updated in place on every poll, so nothing flickers
 * and half-typed numbers in the scale/adapt inputs survive a refresh.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { api, GatewayError, ICluster } from './api';
import { OptionsForm } from './form';

/** How often the list refreshes while the panel is visible. */
export const POLL_INTERVAL = 3000;

export interface ISidebarActions {
  openDashboard(name: string, url: string): void;
  /** Close the cluster's dashboard tab, if open (its cluster is gone). */
  closeDashboard(name: string): void;
  /** Insert the connect code into the active notebook; returns an error message or null. */
  insertCode(name: string): string | null;
}

/** `dask.utils.format_bytes`: 2.00 GiB. */
export function formatBytes(n: number): string {
  const units: [string, number][] = [
    ['PiB', 2 ** 50],
    ['TiB', 2 ** 40],
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['kiB', 2 ** 10]
  ];
  for (const [unit, size] of units) {
    if (n >= size * 0.9) {
      return `${(n / size).toFixed(2)} ${unit}`;
    }
  }
  return `${n} B`;
}

export function formatAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m} min`;
  }
  const h = Math.floor(m / 60);
  if (h < 24) {
    return `${h} h ${m % 60} min`;
  }
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** How far along its life a cluster is: messages about it only move forward (a poll that
 * was already under way when it changed may still report the state before). */
const LIFE_ORDER: Record<string, number> = {
  PENDING: 0,
  RUNNING: 1,
  STOPPING: 2,
  STOPPED: 3,
  FAILED: 3,
  GONE: 3
};

/** The message about cluster `name` in state `status` (GONE: no longer listed), and whether
 * it is a warning. `before` is the state the previous message said. */
export function clusterMessage(
  name: string,
  status: string,
  before: string
): { text: string; warn: boolean } {
  const short = `Cluster ${name.slice(0, 8)}`;
  switch (status) {
    case 'PENDING':
      return { text: `${short} is starting`, warn: false };
    case 'RUNNING':
      return { text: `${short} is running`, warn: false };
    case 'STOPPING':
      return { text: `${short} is shutting down`, warn: false };
    case 'FAILED':
      return { text: `${short} failed`, warn: true };
    default:
      // Gone from the list: expected after a shutdown, not while it was starting or running.
      return before === 'STOPPING'
        ? { text: `${short} has shut down`, warn: false }
        : { text: `${short} stopped`, warn: true };
  }
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

function button(label: string, className: string, title: string): HTMLButtonElement {
  const b = el('button', `dgj-Button ${className}`, label);
  b.type = 'button';
  b.title = title;
  return b;
}

function numberInput(className: string, placeholder: string, title: string): HTMLInputElement {
  const input = el('input', `dgj-NumberInput ${className}`);
  input.type = 'number';
  input.min = '0';
  input.step = '1';
  input.placeholder = placeholder;
  input.title = title;
  return input;
}

/** Parse a non-negative integer input; null if empty and allowed, else an error. */
function parseCount(input: HTMLInputElement, what: string, allowEmpty: boolean): number | null {
  const text = input.value.trim();
  if (text === '' && allowEmpty) {
    return null;
  }
  if (!/^\d+$/.test(text)) {
    throw new GatewayError(`${what} must be a non-negative integer, got '${text}'`, 400);
  }
  return parseInt(text, 10);
}

/** One cluster's row; `update` only touches what changed. */
class ClusterRow {
  readonly node: HTMLLIElement;
  private status: HTMLElement;
  private stats: Record<string, HTMLElement> = {};
  private adaptNote: HTMLElement;
  private buttons: HTMLButtonElement[] = [];
  private scaleInput: HTMLInputElement;
  private minInput: HTMLInputElement;
  private maxInput: HTMLInputElement;
  private stopAdapt: HTMLButtonElement;
  private dashboard: HTMLButtonElement;
  cluster: ICluster;

  constructor(
    cluster: ICluster,
    private sidebar: GatewaySidebar
  ) {
    this.cluster = cluster;
    const li = el('li', 'dgj-Cluster');
    li.dataset.clusterName = cluster.name;

    const head = el('div', 'dgj-Cluster-head');
    const name = el('span', 'dgj-Cluster-name', cluster.name);
    name.title = cluster.name;
    this.status = el('span', 'dgj-Cluster-status');
    head.append(name, this.status);

    const stats = el('dl', 'dgj-Cluster-stats');
    for (const [key, label] of [
      ['workers', 'Workers'],
      ['cores', 'Cores'],
      ['memory', 'Memory'],
      ['age', 'Age']
    ]) {
      const dt = el('dt', '', label);
      const dd = el('dd');
      dd.dataset.stat = key;
      this.stats[key] = dd;
      stats.append(dt, dd);
    }
    this.adaptNote = el('div', 'dgj-Cluster-adapt-note');

    const actions = el('div', 'dgj-Cluster-actions');
    this.dashboard = button('Dashboard', 'dgj-DashboardButton', 'Open the Dask dashboard in a tab');
    this.dashboard.addEventListener('click', () => this.openDashboard());
    const insert = button('Insert code', 'dgj-InsertButton',
      'Insert code that connects to this cluster into the active notebook');
    insert.addEventListener('click', () => this.insertCode());
    const shutdown = button('Shut down', 'jp-mod-warn dgj-ShutdownButton', 'Shut this cluster down');
    shutdown.addEventListener('click', () => void this.shutdown());
    actions.append(this.dashboard, insert, shutdown);

    const scale = el('div', 'dgj-Cluster-row');
    this.scaleInput = numberInput('dgj-ScaleInput', 'N', 'Number of workers');
    const scaleButton = button('Scale', 'dgj-ScaleButton', 'Scale to this many workers');
    scaleButton.addEventListener('click', () => void this.scale());
    this.scaleInput.addEventListener('keydown', e => {
      if (e.key === 'Enter') {
        void this.scale();
      }
    });
    scale.append(el('span', 'dgj-Cluster-rowlabel', 'Workers'), this.scaleInput, scaleButton);

    const adapt = el('div', 'dgj-Cluster-row');
    this.minInput = numberInput('dgj-AdaptMin', 'min', 'Fewest workers');
    this.maxInput = numberInput('dgj-AdaptMax', 'max', 'Most workers');
    const adaptButton = button('Adapt', 'dgj-AdaptButton', 'Scale with the load between min and max');
    adaptButton.addEventListener('click', () => void this.adapt());
    this.stopAdapt = button('Stop', 'dgj-StopAdaptButton', 'Stop adaptive scaling');
    this.stopAdapt.addEventListener('click', () => void this.stopAdapting());
    adapt.append(el('span', 'dgj-Cluster-rowlabel', 'Adapt'), this.minInput,
      el('span', 'dgj-Dash', '–'), this.maxInput, adaptButton, this.stopAdapt);

    li.append(head, stats, this.adaptNote, actions, scale, adapt);
    this.buttons = [this.dashboard, insert, shutdown, scaleButton, adaptButton, this.stopAdapt];
    this.node = li;
    this.update(cluster);
  }

  private setText(node: HTMLElement, text: string): void {
    if (node.textContent !== text) {
      node.textContent = text;
    }
  }

  update(cluster: ICluster): void {
    this.cluster = cluster;
    const status = cluster.status;
    this.setText(this.status, status);
    this.status.dataset.status = status;
    this.node.dataset.status = status;
    const workers =
      cluster.workers === null
        ? '–'
        : cluster.requested !== null && cluster.requested !== cluster.workers
          ? `${cluster.workers} of ${cluster.requested}`
          : String(cluster.workers);
    this.setText(this.stats.workers, workers);
    this.setText(this.stats.cores, cluster.cores === null ? '–' : String(cluster.cores));
    this.setText(this.stats.memory, cluster.memory === null ? '–' : formatBytes(cluster.memory));
    this.setText(this.stats.age, formatAge(cluster.age));
    const adapt = cluster.adapt;
    this.setText(
      this.adaptNote,
      adapt ? `Adaptive: ${adapt.minimum ?? 0} to ${adapt.maximum ?? 'limit'} workers` : ''
    );
    this.stopAdapt.hidden = !adapt;
    const running = status === 'RUNNING';
    this.dashboard.disabled = !running || !cluster.dashboard_link;
    this.node.classList.toggle('dgj-mod-pending', status === 'PENDING');
  }

  set busy(value: boolean) {
    for (const b of this.buttons) {
      if (b !== this.dashboard) {
        b.disabled = value;
      }
    }
    this.node.classList.toggle('dgj-mod-busy', value);
  }

  private async run(action: () => Promise<void>): Promise<void> {
    this.busy = true;
    try {
      await action();
    } catch (error) {
      this.sidebar.showError(error);
    } finally {
      this.busy = false;
      this.sidebar.refresh();
    }
  }

  private openDashboard(): void {
    void this.run(async () => {
      const { url } = await api.dashboard(this.cluster.name);
      this.sidebar.actions.openDashboard(this.cluster.name, url);
    });
  }

  private insertCode(): void {
    const error = this.sidebar.actions.insertCode(this.cluster.name);
    if (error) {
      this.sidebar.showError(error);
    }
  }

  private async scale(): Promise<void> {
    await this.run(async () => {
      const n = parseCount(this.scaleInput, 'The worker count', false) as number;
      const result = await api.scale(this.cluster.name, n);
      this.sidebar.showInfo(result.msg ?? `Scaling ${this.short} to ${n} workers`, !result.ok);
    });
  }

  private async adapt(): Promise<void> {
    await this.run(async () => {
      const min = parseCount(this.minInput, 'minimum', true);
      const max = parseCount(this.maxInput, 'maximum', true);
      if (min !== null && max !== null && min > max) {
        throw new GatewayError(`minimum (${min}) must not exceed maximum (${max})`, 400);
      }
      const result = await api.adapt(this.cluster.name, min, max);
      this.sidebar.showInfo(
        result.msg ?? `${this.short} now adapts between ${min ?? 0} and ${max ?? 'the limit'} workers`,
        !result.ok
      );
    });
  }

  private async stopAdapting(): Promise<void> {
    await this.run(async () => {
      await api.adapt(this.cluster.name, null, null, false);
      this.sidebar.showInfo(`${this.short} stopped adapting; its workers stay`);
    });
  }

  private get short(): string {
    return `Cluster ${this.cluster.name.slice(0, 8)}`;
  }

  private async shutdown(): Promise<void> {
    const result = await showDialog({
      title: 'Shut down cluster?',
      body: `Shut down cluster ${this.cluster.name}? Its scheduler and workers stop, and ` +
        'any work on it is lost.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Shut down' })]
    });
    if (!result.button.accept) {
      return;
    }
    await this.run(async () => {
      // Close the dashboard first: it would only show connection errors from now on.
      this.sidebar.actions.closeDashboard(this.cluster.name);
      await api.shutdown(this.cluster.name);
      this.update({ ...this.cluster, status: 'STOPPING' });
      this.sidebar.follow(this.cluster.name, 'STOPPING');
    });
  }
}

/** The sidebar widget. */
export class GatewaySidebar extends Widget {
  private list: HTMLUListElement;
  private empty: HTMLElement;
  private message: HTMLElement;
  private messageText: HTMLElement;
  private address: HTMLElement;
  private formHost: HTMLElement;
  private newButton: HTMLButtonElement;
  private rows = new Map<string, ClusterRow>();
  /** The cluster the message is about, the state it says, and whether a list has shown the
   * cluster since (until then, its absence means nothing). Null: the message is not about a
   * cluster's state. */
  private about: { name: string; status: string; seen: boolean } | null = null;
  private loaded = false;
  private poll: Poll;

  constructor(readonly actions: ISidebarActions) {
    super();
    this.id = 'dask-gateway-sidebar';
    this.addClass('dgj-Sidebar');

    const header = el('div', 'dgj-Header');
    const title = el('h2', 'dgj-Title', 'Dask Gateway');
    this.newButton = button('New cluster', 'jp-mod-accept dgj-NewButton',
      'Create a cluster with options you choose');
    this.newButton.addEventListener('click', () => void this.openForm());
    const refresh = button('Refresh', 'dgj-RefreshButton', 'Refresh the list now');
    refresh.addEventListener('click', () => this.refresh());
    const tools = el('div', 'dgj-Toolbar');
    tools.append(this.newButton, refresh);
    this.address = el('div', 'dgj-Address');
    header.append(title, this.address, tools);

    this.message = el('div', 'dgj-Message');
    this.message.setAttribute('role', 'status');
    this.messageText = el('span', 'dgj-Message-text');
    const dismiss = el('button', 'dgj-Message-close', '×');
    dismiss.type = 'button';
    dismiss.title = 'Dismiss';
    dismiss.addEventListener('click', () => this.clearMessage());
    this.message.append(this.messageText, dismiss);
    this.message.hidden = true;

    this.formHost = el('div', 'dgj-FormHost');
    this.empty = el('div', 'dgj-Empty', 'Loading clusters…');
    this.list = el('ul', 'dgj-ClusterList');
    this.node.append(header, this.message, this.formHost, this.empty, this.list);

    this.poll = new Poll({
      auto: false,
      factory: () => this.load(),
      frequency: { interval: POLL_INTERVAL, backoff: true, max: 30 * 1000 },
      // Tick only while the panel is shown and the browser tab is visible.
      standby: () => (this.isVisible ? 'when-hidden' : true),
      name: 'dask-gateway-jupyterlab:clusters'
    });
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (!this.poll.isDisposed) {
      void this.poll.start();
      this.refresh();
    }
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      void this.poll.start();
    }
  }

  /** Refresh now (after an action, or from the Refresh button). */
  refresh(): void {
    if (!this.poll.isDisposed) {
      void this.poll.refresh();
    }
  }

  showError(error: unknown): void {
    const text = error instanceof Error ? error.message : String(error);
    this.setMessage(text, 'error');
  }

  showInfo(text: string, warn = false): void {
    this.setMessage(text, warn ? 'warn' : 'info');
  }

  /** Say what state cluster `name` is in, and keep saying it as its state changes. */
  follow(name: string, status: string): void {
    this.about = { name, status, seen: this.rows.has(name) };
    const { text, warn } = clusterMessage(name, status, status);
    this.showMessage(text, warn ? 'warn' : 'info');
    this.message.dataset.cluster = name;
  }

  private setMessage(text: string, kind: string): void {
    this.about = null;
    this.showMessage(text, kind);
  }

  private showMessage(text: string, kind: string): void {
    this.messageText.textContent = text;
    this.message.dataset.kind = kind;
    delete this.message.dataset.cluster;
    this.message.hidden = false;
  }

  private clearMessage(): void {
    this.about = null;
    this.message.hidden = true;
    this.messageText.textContent = '';
  }

  /** The message follows the state of the cluster it is about, forward only. */
  private updateMessage(clusters: ICluster[]): void {
    const about = this.about;
    if (!about) {
      return;
    }
    const cluster = clusters.find(c => c.name === about.name);
    if (cluster) {
      about.seen = true;
    } else if (!about.seen) {
      return; // a list from before the cluster existed
    }
    const status = cluster ? cluster.status : 'GONE';
    if ((LIFE_ORDER[status] ?? 0) <= (LIFE_ORDER[about.status] ?? 0)) {
      return;
    }
    const { text, warn } = clusterMessage(about.name, status, about.status);
    this.showMessage(text, warn ? 'warn' : 'info');
    this.message.dataset.cluster = about.name;
    about.status = status;
    if ((LIFE_ORDER[status] ?? 0) >= LIFE_ORDER.GONE) {
      this.about = null; // its last word
    }
  }

  private listError = false;

  private async load(): Promise<void> {
    let data;
    try {
      data = await api.listClusters();
    } catch (error) {
      this.listError = true;
      this.showError(error);
      if (!this.loaded) {
        this.empty.textContent = 'Clusters unavailable.';
      }
      throw error; // the poll backs off
    }
    if (this.listError) {
      this.listError = false; // the gateway is back: drop its stale error
      if (this.message.dataset.kind === 'error') {
        this.clearMessage();
      }
    }
    this.loaded = true;
    this.address.textContent = data.address;
    this.address.title = `Gateway: ${data.address}`;
    this.render(data.clusters);
  }

  private render(clusters: ICluster[]): void {
    const seen = new Set<string>();
    let previous: HTMLElement | null = null;
    for (const cluster of clusters) {
      seen.add(cluster.name);
      let row = this.rows.get(cluster.name);
      if (row) {
        row.update(cluster);
      } else {
        row = new ClusterRow(cluster, this);
        this.rows.set(cluster.name, row);
      }
      // Keep DOM order = list order without re-inserting unchanged rows.
      const expected: ChildNode | null = previous ? previous.nextSibling : this.list.firstChild;
      if (expected !== row.node) {
        this.list.insertBefore(row.node, expected);
      }
      previous = row.node;
    }
    for (const [name, row] of this.rows) {
      if (!seen.has(name)) {
        this.actions.closeDashboard(name);
        row.node.remove();
        this.rows.delete(name);
      }
    }
    this.empty.hidden = clusters.length > 0;
    this.empty.textContent = 'No clusters running. Create one with “New cluster”.';
    this.updateMessage(clusters);
  }

  private closeForm(): void {
    this.formHost.replaceChildren();
    this.newButton.disabled = false;
  }

  private async openForm(): Promise<void> {
    this.newButton.disabled = true;
    this.formHost.replaceChildren(el('div', 'dgj-Empty', 'Loading options…'));
    let fields;
    try {
      fields = (await api.options()).cluster_options;
    } catch (error) {
      this.closeForm();
      this.showError(error);
      return;
    }
    const form: OptionsForm = new OptionsForm(
      fields,
      values => void this.create(form, values),
      () => this.closeForm()
    );
    this.formHost.replaceChildren(form.node);
  }

  private async create(form: OptionsForm, values: Record<string, unknown>): Promise<void> {
    form.busy = true;
    try {
      const { name } = await api.createCluster(values);
      this.closeForm();
      this.follow(name, 'PENDING');
      this.refresh();
    } catch (error) {
      form.busy = false;
      this.showError(error);
    }
  }
}
