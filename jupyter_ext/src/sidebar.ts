/**
 * The left-area panel: the user's clusters, live.
 *
 * Every action is a JupyterLab command (see `commands.ts`): the panel's buttons execute
 * them with the row's cluster as argument, so the palette, the context menu and the buttons
 * all do the same thing. Rows are keyed by cluster name and updated in place on every poll,
 * so nothing flickers and half-typed numbers in the scale/adapt inputs survive a refresh.
 */
import { Notification } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { GatewayError, type IGatewayAPI } from './api';
import { CommandIDs } from './commandids';
import {
  isEnded,
  loadDismissed,
  pruneDismissed,
  saveDismissed,
  visibleClusters
} from './dismissed';
import { OptionsForm } from './form';
import {
  clusterMessage,
  clusterNote,
  formatAdapt,
  formatAge,
  formatBytes,
  formatWorkers,
  isFinal,
  isLater
} from './format';
import { Coalescer, LiveStream, pollInterval, type StreamOpener } from './live';
import { parseCount } from './options';
import { UsageSection } from './quota';
import type { ICluster } from './types';

/** How often the list refreshes while the panel is visible. */
export const POLL_INTERVAL = 3000;

export interface ISidebarOptions {
  api: IGatewayAPI;
  commands: CommandRegistry;
  /** Close the cluster's dashboard tab, if open (its cluster is gone). */
  closeDashboard: (name: string) => void;
  /** Where dismissed clusters are remembered (`window.localStorage`; null: nowhere). */
  storage?: Storage | null;
  /** The storage key (see `dismissedKey`). */
  storageKey?: string;
  /** Opens the server's event stream (`live.ts`); without it, the list is polled. */
  openStream?: StreamOpener;
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

function numberInput(className: string, placeholder: string, title: string): HTMLInputElement {
  const input = el('input', `dgj-NumberInput ${className}`);
  input.type = 'number';
  input.min = '0';
  input.step = '1';
  input.placeholder = placeholder;
  input.title = title;
  return input;
}

/** A button that executes `id` with the arguments `args()` gives at click time; its icon and
 * tooltip are the command's, its text short enough for a row. */
class CommandButton {
  readonly node: HTMLButtonElement;
  private icon: HTMLElement;

  constructor(
    private commands: CommandRegistry,
    readonly id: string,
    text: string,
    className: string,
    private args: () => Record<string, string | number | null> | null
  ) {
    const node = el('button', `dgj-Button ${className}`);
    node.type = 'button';
    this.icon = el('span', 'dgj-Button-icon');
    node.append(this.icon, el('span', 'dgj-Button-label', text));
    node.addEventListener('click', () => {
      const args = this.args();
      if (args) {
        void this.commands.execute(this.id, args);
      }
    });
    this.node = node;
    this.render();
  }

  /** Take the command's icon and caption (again: the panel's own buttons exist before the
   * commands are registered). */
  render(): void {
    this.node.title = this.commands.hasCommand(this.id) ? this.commands.caption(this.id) : '';
    const icon = this.commands.hasCommand(this.id) ? this.commands.icon(this.id) : undefined;
    this.icon.replaceChildren();
    if (icon instanceof LabIcon) {
      icon.element({ container: this.icon });
    }
  }

  /** Disabled while busy, or while the command says it cannot run for these arguments. */
  update(busy: boolean, args: Record<string, string>): void {
    this.node.disabled =
      busy || (this.commands.hasCommand(this.id) && !this.commands.isEnabled(this.id, args));
  }
}

/** One cluster's row; `update` only touches what changed. */
class ClusterRow {
  readonly node: HTMLLIElement;
  private status: HTMLElement;
  private owner: HTMLElement;
  private note: HTMLElement;
  private stats: Record<string, HTMLElement> = {};
  private live: HTMLElement[];
  private dismiss: CommandButton;
  private adaptNote: HTMLElement;
  private buttons: CommandButton[] = [];
  private scaleInput: HTMLInputElement;
  private minInput: HTMLInputElement;
  private maxInput: HTMLInputElement;
  private stopAdapt: CommandButton;
  private isBusy = false;
  cluster: ICluster;

  constructor(
    cluster: ICluster,
    private sidebar: GatewaySidebar
  ) {
    this.cluster = cluster;
    const commands = sidebar.commands;
    const li = el('li', 'dgj-Cluster');
    li.dataset.clusterName = cluster.name;
    li.setAttribute('aria-selected', 'false');
    // Clicking a row (or opening its context menu) makes it the commands' default cluster.
    li.addEventListener('click', () => sidebar.select(this.cluster.name));
    li.addEventListener('contextmenu', () => sidebar.select(this.cluster.name));

    const head = el('div', 'dgj-Cluster-head');
    const name = el('span', 'dgj-Cluster-name', cluster.name);
    name.title = cluster.name;
    this.status = el('span', 'dgj-Cluster-status');
    // The owner, in an admin's all-users list (see `allusers.ts`).
    this.owner = el('span', 'dgj-Cluster-owner');
    head.append(name, this.owner, this.status);
    // A starting cluster's phase, a failed one's reason, when an ended one ended.
    this.note = el('div', 'dgj-Cluster-note');

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

    type Args = Record<string, string | number | null> | null;
    const named = (): Args => ({ name: this.cluster.name });
    const button = (id: string, text: string, className: string, args = named) => {
      const b = new CommandButton(commands, id, text, className, args);
      this.buttons.push(b);
      return b;
    };

    const actions = el('div', 'dgj-Cluster-actions');
    const dashboard = button(CommandIDs.openDashboard, 'Dashboard', 'dgj-DashboardButton');
    const insert = button(CommandIDs.insertCode, 'Insert code', 'dgj-InsertButton');
    const shutdown = button(CommandIDs.shutdown, 'Shut down', 'jp-mod-warn dgj-ShutdownButton');
    this.dismiss = button(CommandIDs.dismiss, 'Dismiss', 'dgj-DismissButton');
    actions.append(
      dashboard.node,
      button(CommandIDs.openLogs, 'Logs', 'dgj-LogsButton').node,
      insert.node,
      shutdown.node,
      this.dismiss.node
    );

    const scale = el('div', 'dgj-Cluster-row');
    this.scaleInput = numberInput('dgj-ScaleInput', 'N', 'Number of workers');
    const scaleArgs = () => {
      const count = this.count(this.scaleInput, 'a number of workers', false);
      return count === undefined ? null : { name: this.cluster.name, count };
    };
    const scaleButton = button(CommandIDs.scale, 'Scale', 'dgj-ScaleButton', scaleArgs);
    this.scaleInput.addEventListener('keydown', e => {
      if (e.key === 'Enter') {
        scaleButton.node.click();
      }
    });
    scale.append(el('span', 'dgj-Cluster-rowlabel', 'Workers'), this.scaleInput, scaleButton.node);

    const adapt = el('div', 'dgj-Cluster-row');
    this.minInput = numberInput('dgj-AdaptMin', 'min', 'Fewest workers');
    this.maxInput = numberInput('dgj-AdaptMax', 'max', 'Most workers');
    const adaptArgs = () => {
      const minimum = this.count(this.minInput, 'the minimum', true);
      const maximum =
        minimum === undefined ? undefined : this.count(this.maxInput, 'the maximum', true);
      return minimum === undefined || maximum === undefined
        ? null
        : { name: this.cluster.name, minimum, maximum };
    };
    const adaptButton = button(CommandIDs.adapt, 'Adapt', 'dgj-AdaptButton', adaptArgs);
    this.stopAdapt = button(CommandIDs.stopAdapting, 'Stop', 'dgj-StopAdaptButton');
    adapt.append(
      el('span', 'dgj-Cluster-rowlabel', 'Adapt'),
      this.minInput,
      el('span', 'dgj-Dash', '–'),
      this.maxInput,
      adaptButton.node,
      this.stopAdapt.node
    );

    li.append(head, this.note, stats, this.adaptNote, actions, scale, adapt);
    // What an ended cluster no longer offers.
    this.live = [stats, this.adaptNote, dashboard.node, insert.node, shutdown.node, scale, adapt];
    this.node = li;
    this.update(cluster);
  }

  /** The count typed in `input`, or undefined (and a message) if it is not one. */
  private count(
    input: HTMLInputElement,
    what: string,
    allowEmpty: boolean
  ): number | null | undefined {
    const result = parseCount(input.value, what, allowEmpty);
    if ('error' in result) {
      this.sidebar.showError(result.error);
      return undefined;
    }
    return result.value;
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
    this.setText(this.owner, cluster.user ?? '');
    this.owner.title = cluster.user ? `Owner: ${cluster.user}` : '';
    this.owner.hidden = !cluster.user;
    const ended = isEnded(status);
    this.node.classList.toggle('dgj-mod-ended', ended);
    for (const node of this.live) {
      node.hidden = ended;
    }
    this.dismiss.node.hidden = !ended;
    this.setText(this.note, clusterNote(cluster, Date.now()));
    this.note.title = this.note.textContent ?? '';
    this.setText(
      this.stats.workers,
      formatWorkers(cluster.workers, cluster.requested, cluster.pending ?? null)
    );
    this.setText(this.stats.cores, cluster.cores === null ? '–' : String(cluster.cores));
    this.setText(this.stats.memory, cluster.memory === null ? '–' : formatBytes(cluster.memory));
    this.setText(this.stats.age, formatAge(cluster.age));
    this.setText(this.adaptNote, formatAdapt(cluster.adapt));
    this.stopAdapt.node.hidden = !cluster.adapt || ended;
    this.node.classList.toggle('dgj-mod-pending', status === 'PENDING');
    this.updateButtons();
  }

  updateButtons(): void {
    for (const b of this.buttons) {
      // Opening the dashboard changes nothing: it stays available while an action runs.
      b.update(this.isBusy && b.id !== CommandIDs.openDashboard, { name: this.cluster.name });
    }
  }

  set busy(value: boolean) {
    this.isBusy = value;
    this.node.classList.toggle('dgj-mod-busy', value);
    this.updateButtons();
  }

  set selected(value: boolean) {
    this.node.classList.toggle('jp-mod-selected', value);
    this.node.setAttribute('aria-selected', String(value));
  }
}

/** The sidebar widget. */
export class GatewaySidebar extends Widget {
  readonly api: IGatewayAPI;
  readonly commands: CommandRegistry;
  private closeDashboard: (name: string) => void;
  private storage: Storage | null;
  private storageKey: string;
  private dismissed: Set<string>;
  /** Clusters shut down from here: once stopped, they leave the list (their owner knows). */
  private shutDownHere = new Set<string>();
  /** The last list, dismissed clusters included. */
  private listed: ICluster[] = [];
  private list: HTMLUListElement;
  private empty: HTMLElement;
  private message: HTMLElement;
  private messageText: HTMLElement;
  private address: HTMLElement;
  private formHost: HTMLElement;
  private form: OptionsForm | null = null;
  private formLoading = false;
  private newButton: CommandButton;
  private toolbar: CommandButton[];
  private rows = new Map<string, ClusterRow>();
  private selectedName: string | null = null;
  /** The selected row changed (its cluster's name, or null): the plot list follows it. */
  readonly selectionChanged = new Signal<GatewaySidebar, string | null>(this);
  /** The cluster the message is about, the state it says, and whether a list has shown the
   * cluster since (until then, its absence means nothing). Null: the message is not about a
   * cluster's state. */
  private about: { name: string; status: string; seen: boolean; before?: string } | null = null;
  private loaded = false;
  /** Whether stopped and failed clusters are listed (the `showStopped` setting). */
  private listEnded = true;
  private listError = false;
  private commandStates = '';
  private poll: Poll;
  /** The user's use this period against their quotas (hidden when the gateway has none). */
  readonly usage: UsageSection;
  /** A refresh was asked for (an action, the Refresh command): the usage too, at once. */
  private usageDue = true;
  /** The event stream (null: polling only) and the per-cluster refreshes it asks for. */
  readonly live: LiveStream | null = null;
  private refresher = new Coalescer(name => this.loadCluster(name));
  /** The list's poll interval (ms) when the stream is not live. */
  private fallbackInterval = POLL_INTERVAL;

  constructor(options: ISidebarOptions) {
    super();
    this.api = options.api;
    this.commands = options.commands;
    this.closeDashboard = options.closeDashboard;
    this.storage = options.storage ?? null;
    this.storageKey = options.storageKey ?? 'dask-gateway-jupyterlab:dismissed';
    this.dismissed = loadDismissed(this.storage, this.storageKey);
    this.id = 'dask-gateway-sidebar';
    this.addClass('dgj-Sidebar');

    const header = el('div', 'dgj-Header');
    const title = el('h2', 'dgj-Title', 'Dask Gateway');
    this.newButton = new CommandButton(
      this.commands,
      CommandIDs.newCluster,
      'New cluster',
      'jp-mod-accept dgj-NewButton',
      () => ({})
    );
    const refresh = new CommandButton(
      this.commands,
      CommandIDs.refresh,
      'Refresh',
      'dgj-RefreshButton',
      () => ({})
    );
    this.toolbar = [this.newButton, refresh];
    const tools = el('div', 'dgj-Toolbar');
    tools.append(this.newButton.node, refresh.node);
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
    this.list.setAttribute('aria-label', 'Clusters');
    this.usage = new UsageSection(this.api);
    this.node.append(header, this.usage.node, this.message, this.formHost, this.empty, this.list);

    this.poll = new Poll({
      auto: false,
      factory: () => this.load(),
      frequency: { interval: POLL_INTERVAL, backoff: true, max: 30 * 1000 },
      // Tick only while the panel is shown and the browser tab is visible.
      standby: () => (this.isVisible ? 'when-hidden' : true),
      name: 'dask-gateway-jupyterlab:clusters'
    });
    if (options.openStream) {
      this.live = new LiveStream(options.openStream, {
        onReady: () => this.refresh(),
        onCluster: note => {
          if (this.isVisible) {
            void this.refreshCluster(note.cluster);
          }
        },
        onState: state => {
          this.node.dataset.live = state; // for styles and tests
          this.applyPollInterval(false);
        }
      });
    }
  }

  /** Poll at the interval the stream's state asks for: the setting while it is not live, its
   * slow safety refresh while it is. `refresh`: tick now (the one scheduled keeps the old). */
  private applyPollInterval(refresh: boolean): void {
    const interval = pollInterval(this.live?.state ?? 'unsupported', this.fallbackInterval);
    if (!this.poll.isDisposed && this.poll.frequency.interval !== interval) {
      const max = Math.max(interval, 30 * 1000);
      this.poll.frequency = { ...this.poll.frequency, interval, max };
      if (refresh) {
        this.refresh();
      }
    }
  }

  /** Refresh one cluster's row now (coalesced: one request in flight per cluster). */
  refreshCluster(name: string): Promise<void> {
    return this.refresher.request(name);
  }

  private async loadCluster(name: string): Promise<void> {
    let cluster: ICluster;
    try {
      cluster = await this.api.cluster(name);
    } catch (error) {
      if (error instanceof GatewayError && error.status === 404) {
        this.refresh(); // gone: the list says what remains
      }
      return;
    }
    if (this.shutDownHere.has(name) && isEnded(cluster.status)) {
      this.refresh(); // the list's rules for clusters shut down from here
      return;
    }
    const index = this.listed.findIndex(c => c.name === name);
    const owned = this.listed.some(c => c.user !== undefined); // an admin's all-users list
    if (owned && index < 0) {
      this.refresh(); // a new cluster: the list names its owner
      return;
    }
    if (index >= 0 && cluster.user === undefined && this.listed[index].user !== undefined) {
      cluster = { ...cluster, user: this.listed[index].user }; // the owner stays shown
    }
    const listed = this.listed.filter(c => c.name !== name);
    listed.splice(index < 0 ? listed.length : index, 0, cluster);
    this.render(listed);
  }

  /** Reconnect the event stream: what it should carry changed (the admin's all-users view). */
  restartStream(): void {
    if (this.live && this.isAttached) {
      this.live.stop();
      this.live.start();
    }
  }

  dispose(): void {
    this.live?.stop();
    this.poll.dispose();
    this.form?.dispose();
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
    for (const b of this.toolbar) {
      b.render();
      b.update(false, {});
    }
    if (this.isVisible) {
      void this.poll.start();
    }
    this.live?.start();
  }

  protected onBeforeDetach(msg: Message): void {
    this.live?.stop();
    super.onBeforeDetach(msg);
  }

  /** The clusters of the last list, in its order. */
  get clusters(): ICluster[] {
    return [...this.rows.values()].map(row => row.cluster);
  }

  cluster(name: string): ICluster | undefined {
    return this.rows.get(name)?.cluster;
  }

  /** The row the commands act on when not told which (clicked or right-clicked last). */
  get selected(): string | null {
    return this.selectedName !== null && this.rows.has(this.selectedName)
      ? this.selectedName
      : null;
  }

  select(name: string | null): void {
    const changed = name !== this.selectedName;
    this.selectedName = name;
    for (const [key, row] of this.rows) {
      row.selected = key === name;
    }
    if (changed) {
      this.selectionChanged.emit(name);
    }
  }

  /** Poll every `seconds` when the event stream is down or unsupported (the `pollInterval`
   * setting); while the stream is live, only its safety refresh polls. */
  setPollInterval(seconds: number): void {
    this.fallbackInterval = Math.round(seconds * 1000);
    this.applyPollInterval(true);
  }

  /** The seconds between two polls when the stream is not live. */
  get pollInterval(): number {
    return this.fallbackInterval / 1000;
  }

  /** List stopped and failed clusters, or not (the `showStopped` setting). */
  set showStopped(value: boolean) {
    if (value !== this.listEnded) {
      this.listEnded = value;
      if (this.loaded) {
        this.render(this.listed);
      }
    }
  }

  get showStopped(): boolean {
    return this.listEnded;
  }

  /** Refresh now (after an action, or from the Refresh command). */
  refresh(): void {
    this.usageDue = true;
    if (!this.poll.isDisposed) {
      void this.poll.refresh();
    }
  }

  /** Mark the cluster's row busy while `action` runs, then refresh the list. */
  async whileBusy<T>(name: string, action: () => Promise<T>): Promise<T> {
    const row = this.rows.get(name);
    if (row) {
      row.busy = true;
    }
    try {
      return await action();
    } finally {
      if (row) {
        row.busy = false;
      }
      if (this.live?.state === 'live') {
        // The row at once, from the gateway's answer to the action (its new count);
        // the list's other rows follow their own events.
        void this.refreshCluster(name);
        this.usage.refresh(true);
      } else {
        this.refresh();
      }
    }
  }

  /** Whether `name` was dismissed (it is no longer shown once it has ended). */
  isDismissed(name: string): boolean {
    return this.dismissed.has(name);
  }

  /** Hide an ended cluster from the list, in this browser, for good. */
  dismiss(name: string): void {
    this.dismissed.add(name);
    saveDismissed(this.storage, this.storageKey, this.dismissed);
    if (this.selectedName === name) {
      this.selectedName = null;
    }
    this.render(this.listed);
  }

  /** Show that `name` is shutting down until the list says more. */
  markStopping(name: string): void {
    this.shutDownHere.add(name);
    const row = this.rows.get(name);
    if (row) {
      row.update({ ...row.cluster, status: 'STOPPING' });
    }
    this.follow(name, 'STOPPING');
    this.commands.notifyCommandChanged();
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
    if (!this.isVisible) {
      // A command run from the palette or a menu while the panel is closed: say it anyway.
      const options = { autoClose: 5000 };
      if (kind === 'error') {
        Notification.error(text, options);
      } else if (kind === 'warn') {
        Notification.warning(text, options);
      } else {
        Notification.info(text, options);
      }
    }
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
    const reason = cluster?.reason ?? null;
    // A failure's reason may come a poll after the failure (its event is stored just after).
    const reasonCame = status === 'FAILED' && about.status === 'FAILED' && reason !== null;
    if (!isLater(status, about.status) && !reasonCame) {
      return;
    }
    const { text, warn } = clusterMessage(about.name, status, about.status, reason);
    this.showMessage(text, warn ? 'warn' : 'info');
    this.message.dataset.cluster = about.name;
    about.status = status;
    if (isFinal(status) && !(status === 'FAILED' && reason === null)) {
      this.about = null; // its last word
    }
  }

  private async load(): Promise<void> {
    // Beside the list, not before it: the usage's errors never hold the list back.
    this.usage.refresh(this.usageDue);
    this.usageDue = false;
    let data;
    try {
      data = await this.api.listClusters();
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
    // A cluster shut down from here leaves once stopped; one that failed stays to say why.
    let changed = false;
    for (const c of data.clusters) {
      if (this.shutDownHere.has(c.name) && isEnded(c.status)) {
        this.shutDownHere.delete(c.name);
        if (c.status === 'STOPPED') {
          this.dismissed.add(c.name);
          changed = true;
        }
      }
    }
    const kept = pruneDismissed(this.dismissed, data.clusters);
    if (kept.size !== this.dismissed.size) {
      this.dismissed = kept; // those the list dropped (ended over an hour ago)
      changed = true;
    }
    if (changed) {
      saveDismissed(this.storage, this.storageKey, this.dismissed);
    }
    this.render(data.clusters);
  }

  /** Show `all` (the listed clusters) but the dismissed ones. */
  private render(all: ICluster[]): void {
    this.listed = all;
    const clusters = visibleClusters(all, this.dismissed).filter(
      c => this.listEnded || !isEnded(c.status)
    );
    const seen = new Set<string>();
    let previous: HTMLElement | null = null;
    for (const cluster of clusters) {
      seen.add(cluster.name);
      let row = this.rows.get(cluster.name);
      if (row) {
        row.update(cluster);
      } else {
        row = new ClusterRow(cluster, this);
        row.selected = cluster.name === this.selectedName;
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
        this.closeDashboard(name);
        row.node.remove();
        this.rows.delete(name);
      }
    }
    this.empty.hidden = clusters.length > 0;
    this.empty.textContent = 'No clusters running. Create one with “New cluster”.';
    this.updateMessage(all);
    // What the commands' enabled states depend on; menus and the palette re-render on change.
    const states = clusters
      .map(c => `${c.name}:${c.status}:${c.adapt !== null}:${c.dashboard_link !== null}`)
      .join(' ');
    if (states !== this.commandStates) {
      this.commandStates = states;
      this.commands.notifyCommandChanged();
    }
  }

  /** Whether the new-cluster form is open (or loading). */
  get formOpen(): boolean {
    return this.formLoading || this.form !== null;
  }

  private formChanged(): void {
    this.newButton.update(false, {});
    this.commands.notifyCommandChanged(CommandIDs.newCluster);
  }

  private closeForm(): void {
    this.form?.dispose();
    this.form = null;
    this.formLoading = false;
    this.formHost.replaceChildren();
    this.formChanged();
  }

  /** Show the new-cluster form, with the gateway's options (a no-op if it is open). */
  async openForm(): Promise<void> {
    if (this.formOpen) {
      return;
    }
    this.formLoading = true;
    this.formChanged();
    this.formHost.replaceChildren(el('div', 'dgj-Empty', 'Loading options…'));
    let fields;
    try {
      fields = (await this.api.options()).cluster_options;
    } catch (error) {
      this.closeForm();
      this.showError(error);
      return;
    }
    this.formLoading = false;
    const form: OptionsForm = new OptionsForm(fields, {
      validate: values => this.api.validateOptions(values),
      submit: values => void this.create(form, values),
      cancel: () => this.closeForm()
    });
    this.form = form;
    this.formHost.replaceChildren(form.node);
    form.node.querySelector<HTMLElement>('.dgj-Field-input')?.focus();
  }

  private async create(form: OptionsForm, values: Record<string, unknown>): Promise<void> {
    form.busy = true;
    try {
      const { name } = await this.api.createCluster(values);
      this.closeForm();
      this.follow(name, 'PENDING');
      this.refresh();
    } catch (error) {
      form.busy = false;
      this.showError(error);
    }
  }
}
