/**
 * The dashboard's individual plots as JupyterLab main-area panes.
 *
 * A pane holds an iframe of the plot relayed by the server extension
 * (`<base>dask-gateway/dashboard/<name>/<plot>`): the relay adds the gateway credentials on
 * the server, serves the page sandboxed (opaque origin) and grants it that one cluster, so
 * the browser never sees a credential nor the gateway's address. Panes are tracked
 * (namespace `dask-gateway-pane`) so the layout restorer reopens them, where they were,
 * after a reload. Each pane follows its cluster's state (`watch.ts`) and says "Cluster NAME
 * stopped" (failed, not found) in place of the plot, never the relay's error page.
 */
import { ILabShell, ILayoutRestorer } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { IFrame } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';
import { ContextMenu, DockLayout, PanelLayout, Widget } from '@lumino/widgets';

import { GatewayAPI, GatewayError } from './api';
import { PALETTE_CATEGORY } from './commandids';
import { gatewayIcon } from './icons';
import {
  DEFAULT_LAYOUT,
  IPlot,
  isPlotPath,
  paneId,
  paneMessage,
  PaneState,
  parsePlots,
  plotTitle,
  plotURL
} from './plots';
import type { ICluster } from './types';
import { ClusterWatches, IWatchAPI } from './watch';

/** The panes' commands (kept out of `commandids.ts`: that file is the sidebar's). */
export namespace PaneCommandIDs {
  /** `{name, plot}`: open (or show) one plot of a cluster. */
  export const openPlot = 'dask-gateway:open-plot';
  /** `{name?, plots?}`: open task stream, progress and worker memory, arranged. */
  export const openDefaultLayout = 'dask-gateway:open-default-layout';
}

/** The tracker's namespace (also the restorer's key prefix). */
export const PANE_NAMESPACE = 'dask-gateway-pane';

/** What the relay lets a plot page do: the same list as its `DASHBOARD_SANDBOX` header. */
export const PANE_SANDBOX: IFrame.SandboxExceptions[] = [
  'allow-scripts',
  'allow-forms',
  'allow-popups',
  'allow-downloads',
  'allow-modals'
];

/** The server extension's routes the panes use, over `GatewayAPI`. */
export class PaneAPI implements IWatchAPI {
  constructor(private api: GatewayAPI) {}

  cluster(name: string): Promise<ICluster> {
    return this.api.request(`clusters/${encodeURIComponent(name)}`);
  }

  events(name: string, after?: number, wait?: number, signal?: AbortSignal) {
    return this.api.events(name, after, wait, signal);
  }

  /** The scheduler's individual plots, through the relay (Jupyter-authenticated). */
  async plots(name: string): Promise<IPlot[]> {
    const data = await this.api.request<unknown>(
      `dashboard/${encodeURIComponent(name)}/individual-plots.json`
    );
    return parsePlots(data, name);
  }
}

/** A pane's content: the plot's iframe while the cluster runs, a message otherwise. */
export class PlotPane extends Widget {
  private frame: IFrame | null = null;
  private message: HTMLElement;
  private unlisten: (() => void) | null = null;
  state: PaneState = { kind: 'checking' };

  constructor(
    readonly cluster: string,
    readonly plot: string,
    readonly url: string,
    watches: ClusterWatches
  ) {
    super();
    this.addClass('dgj-PlotPane');
    this.layout = new PanelLayout(); // the iframe is a child widget: attached with the pane
    this.node.dataset.cluster = cluster;
    this.node.dataset.plot = plot;
    this.message = document.createElement('div');
    this.message.className = 'dgj-PlotPane-message';
    this.message.setAttribute('role', 'status');
    this.node.appendChild(this.message);
    this.unlisten = watches.listen(cluster, state => this.showState(state));
  }

  dispose(): void {
    this.unlisten?.();
    this.unlisten = null;
    super.dispose();
  }

  /** Show the plot or say why not. A cluster that cannot be asked keeps what is shown. */
  private showState(state: PaneState): void {
    if (this.isDisposed) {
      return;
    }
    if (state.kind === 'unreachable' && this.state.kind !== 'checking') {
      return;
    }
    this.state = state;
    this.node.dataset.state = state.kind;
    const text = paneMessage(this.cluster, state);
    if (text === null) {
      if (!this.frame) {
        const frame = new IFrame({ sandbox: PANE_SANDBOX, referrerPolicy: 'no-referrer' });
        frame.addClass('dgj-PlotPane-frame');
        frame.url = this.url;
        this.frame = frame;
        (this.layout as PanelLayout).addWidget(frame);
      }
      this.message.hidden = true;
      this.message.textContent = '';
      return;
    }
    if (this.frame && state.kind !== 'stopping') {
      this.frame.dispose(); // its websocket closes: the relay stops too
      this.frame = null;
    }
    this.message.textContent = text;
    this.message.hidden = false;
    this.message.dataset.kind = state.kind;
  }
}

export interface IPanesOptions {
  api: GatewayAPI;
  /** The Jupyter server's base URL (the relay is under it). */
  baseUrl: string;
  labShell: ILabShell;
  commands: CommandRegistry;
  restorer: ILayoutRestorer | null;
  palette: ICommandPalette | null;
  contextMenu: ContextMenu;
  /** The cluster a command without `{name}` acts on (context menu, selection, the only
   * running one), if any. */
  currentCluster: () => string | null;
  /** The plots the default layout opens (the settings' `defaultLayout`, see slice 4). */
  defaultLayout?: () => readonly string[];
  /** Say an error (the sidebar's message area). */
  showError: (error: unknown) => void;
}

/** Opens, tracks and restores the panes; one per JupyterLab. */
export class Panes {
  readonly tracker = new WidgetTracker<MainAreaWidget<PlotPane>>({
    namespace: PANE_NAMESPACE
  });
  readonly watches: ClusterWatches;
  readonly paneAPI: PaneAPI;

  constructor(private options: IPanesOptions) {
    this.paneAPI = new PaneAPI(options.api);
    this.watches = new ClusterWatches(this.paneAPI);
  }

  /** The open pane of `plot` of cluster `name`, if any. */
  find(name: string, plot: string): MainAreaWidget<PlotPane> | undefined {
    return this.tracker.find(w => w.content.cluster === name && w.content.plot === plot);
  }

  /** Open (or show) a plot; `where`: how to place a new pane in the main area. */
  async open(
    name: string,
    plot: string,
    where: { mode?: DockLayout.InsertMode; ref?: string | null; activate?: boolean } = {}
  ): Promise<MainAreaWidget<PlotPane>> {
    const existing = this.find(name, plot);
    if (existing) {
      if (where.activate !== false) {
        this.options.labShell.activateById(existing.id);
      }
      return existing;
    }
    const url = plotURL(this.options.baseUrl, name, plot);
    const content = new PlotPane(name, plot, url, this.watches);
    const widget = new MainAreaWidget({ content });
    widget.id = paneId(name, plot);
    widget.addClass('dgj-PlotPaneWidget');
    widget.title.label = `${plotTitle(plot)} · ${name.slice(0, 8)}`;
    widget.title.caption = `${plotTitle(plot)} of Dask cluster ${name}`;
    widget.title.icon = gatewayIcon;
    widget.title.closable = true;
    this.options.labShell.add(widget, 'main', {
      mode: where.mode ?? 'split-right',
      ref: where.ref ?? null,
      activate: where.activate ?? true
    });
    await this.tracker.add(widget);
    return widget;
  }

  /** The default layout: the first plot beside what is open, the second below it, the others
   * beside the second. Plots already open are shown, not moved. */
  async openDefaultLayout(name: string, plots: readonly string[]): Promise<void> {
    let first: string | null = null;
    let previous: string | null = null;
    for (const [index, plot] of plots.entries()) {
      const where =
        index === 0
          ? { mode: 'split-right' as const, ref: null }
          : index === 1
            ? { mode: 'split-bottom' as const, ref: first }
            : { mode: 'split-right' as const, ref: previous };
      const widget = await this.open(name, plot, { ...where, activate: false });
      first ??= widget.id;
      previous = widget.id;
    }
    if (first) {
      this.options.labShell.activateById(first);
    }
  }

  /** Register the commands, the palette and context menu items, and the restorer. */
  setup(): void {
    const { commands, palette, restorer, contextMenu } = this.options;
    const nameOf = (args: ReadonlyPartialJSONObject): string | null =>
      typeof args.name === 'string' && args.name ? args.name : this.options.currentCluster();

    commands.addCommand(PaneCommandIDs.openPlot, {
      label: args =>
        isPlotPath(args.plot) ? `Open Dask Plot: ${plotTitle(args.plot)}` : 'Open Dask Plot',
      caption: 'Open one plot of the cluster’s dashboard as a pane',
      icon: gatewayIcon,
      execute: async args => {
        const name = nameOf(args);
        if (!name || !isPlotPath(args.plot)) {
          this.options.showError('Open a plot with a cluster name and a plot path.');
          return;
        }
        return this.open(name, args.plot, { activate: args.activate !== false });
      }
    });

    commands.addCommand(PaneCommandIDs.openDefaultLayout, {
      label: 'Open Dask Default Layout',
      caption: 'Open the task stream, progress and worker memory plots of the cluster',
      icon: gatewayIcon,
      execute: async args => {
        const name = nameOf(args);
        if (!name) {
          this.options.showError('Select a running cluster in the Dask Gateway sidebar first.');
          return;
        }
        const given = Array.isArray(args.plots) ? args.plots.filter(isPlotPath) : null;
        const plots = given ?? this.options.defaultLayout?.() ?? DEFAULT_LAYOUT;
        await this.openDefaultLayout(name, plots.filter(isPlotPath));
      }
    });

    palette?.addItem({ command: PaneCommandIDs.openDefaultLayout, category: PALETTE_CATEGORY });
    contextMenu.addItem({
      command: PaneCommandIDs.openDefaultLayout,
      selector: '.dgj-Sidebar .dgj-Cluster',
      rank: 0.5,
      args: { origin: 'context-menu' }
    });

    if (restorer) {
      void restorer.restore(this.tracker, {
        command: PaneCommandIDs.openPlot,
        args: widget => ({
          name: widget.content.cluster,
          plot: widget.content.plot,
          activate: false
        }),
        name: widget => `${widget.content.cluster}:${widget.content.plot}`
      });
    }
  }

  dispose(): void {
    this.watches.dispose();
  }
}

/** The sidebar's list of the selected cluster's plots, and the default-layout button. */
export class PlotList {
  readonly node: HTMLElement;
  private title: HTMLElement;
  private list: HTMLUListElement;
  private note: HTMLElement;
  private shown: string | null = null;
  private cache = new Map<string, IPlot[]>();
  private loading: string | null = null;
  private failedAt = 0;

  constructor(
    private panes: Panes,
    private commands: CommandRegistry
  ) {
    const node = document.createElement('section');
    node.className = 'dgj-Plots';
    node.hidden = true;
    const head = document.createElement('div');
    head.className = 'dgj-Plots-head';
    this.title = document.createElement('h3');
    this.title.className = 'dgj-Plots-title';
    const layout = document.createElement('button');
    layout.type = 'button';
    layout.className = 'dgj-Button dgj-LayoutButton';
    layout.textContent = 'Default layout';
    layout.title = 'Open the task stream, progress and worker memory plots';
    layout.addEventListener('click', () => {
      if (this.shown) {
        void this.commands.execute(PaneCommandIDs.openDefaultLayout, { name: this.shown });
      }
    });
    head.append(this.title, layout);
    this.note = document.createElement('div');
    this.note.className = 'dgj-Plots-note';
    this.list = document.createElement('ul');
    this.list.className = 'dgj-Plots-list';
    this.list.setAttribute('aria-label', 'Dashboard plots');
    node.append(head, this.note, this.list);
    this.node = node;
  }

  /** Show the plots of `cluster` (a running one), or hide the list (null). */
  show(cluster: ICluster | null): void {
    const name = cluster && cluster.status === 'RUNNING' ? cluster.name : null;
    if (name === this.shown) {
      // A list that failed (a dashboard not up yet) is asked again on the next change.
      if (name !== null && !this.cache.has(name) && Date.now() - this.failedAt > 5000) {
        void this.load(name);
      }
      return;
    }
    this.shown = name;
    this.node.hidden = name === null;
    this.node.dataset.cluster = name ?? '';
    this.list.replaceChildren();
    if (name === null) {
      return;
    }
    this.title.textContent = `Plots of ${name.slice(0, 8)}`;
    this.title.title = name;
    const cached = this.cache.get(name);
    if (cached) {
      this.render(name, cached);
    } else {
      void this.load(name);
    }
  }

  private async load(name: string): Promise<void> {
    if (this.loading === name) {
      return;
    }
    this.loading = name;
    this.note.textContent = 'Loading plots…';
    this.note.hidden = false;
    try {
      const plots = await this.panes.paneAPI.plots(name);
      this.cache.set(name, plots);
      if (this.shown === name) {
        this.render(name, plots);
      }
    } catch (error) {
      this.failedAt = Date.now();
      if (this.shown === name) {
        const text = error instanceof GatewayError ? error.message : String(error);
        this.note.textContent = `No plots: ${text}`;
      }
    } finally {
      this.loading = null;
    }
  }

  private render(name: string, plots: IPlot[]): void {
    this.note.hidden = plots.length > 0;
    this.note.textContent = plots.length ? '' : 'This scheduler offers no individual plots.';
    const items = plots.map(({ plot, title }) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'dgj-PlotButton';
      button.dataset.plot = plot;
      button.textContent = title; // the scheduler's text: never HTML
      button.title = `Open ${title} as a pane`;
      button.addEventListener('click', () => {
        void this.commands.execute(PaneCommandIDs.openPlot, { name, plot });
      });
      li.appendChild(button);
      return li;
    });
    this.list.replaceChildren(...items);
  }
}
