/**
 * JupyterLab plugin: the Dask Gateway sidebar, its commands, dashboard tabs and code insertion.
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IFrame } from '@jupyterlab/ui-components';

import { addAllUsersCommand, AllUsersView, showBanner } from './allusers';
import { GatewayAPI } from './api';
import { addCommands, addMenuItems } from './commands';
import { connectCode } from './connect';
import { dismissedKey } from './dismissed';
import { gatewayIcon } from './icons';
import { KernelWatch } from './kernelwatch';
import { LogsView } from './logview';
import { addSettingCommands, addSettingMenuItems } from './settingcommands';
import { GatewaySettings } from './settings';
import { Panes, PlotList } from './panes';
import { onlyRunning } from './plots';
import { GatewaySidebar } from './sidebar';

export { CommandIDs } from './commands';
export { connectCode } from './connect';
export { PaneCommandIDs } from './panes';
export { gatewayIcon } from './icons';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'dask-gateway-jupyterlab:plugin',
  description: 'List and manage your Dask Gateway clusters from a sidebar.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ILayoutRestorer, INotebookTracker, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null,
    registry: ISettingRegistry | null
  ) => {
    const baseAPI = new GatewayAPI(app.serviceManager.serverSettings);
    // An admin may switch the list to every user's clusters (allusers.ts).
    const allUsers = new AllUsersView(baseAPI);
    const api = allUsers.api();
    const dashboards = new Map<string, MainAreaWidget<IFrame>>();

    const openDashboard = (name: string, url: string): void => {
      let widget = dashboards.get(name);
      if (!widget || widget.isDisposed) {
        const frame = new IFrame({
          sandbox: ['allow-scripts', 'allow-same-origin', 'allow-forms', 'allow-popups'],
          referrerPolicy: 'no-referrer'
        });
        frame.url = url;
        frame.addClass('dgj-Dashboard');
        widget = new MainAreaWidget({ content: frame });
        widget.id = `dask-gateway-dashboard-${name}`;
        widget.title.label = `Dask ${name.slice(0, 8)}`;
        widget.title.caption = `Dask dashboard of cluster ${name}\n${url}`;
        widget.title.icon = gatewayIcon;
        widget.title.closable = true;
        dashboards.set(name, widget);
        widget.disposed.connect(() => dashboards.delete(name));
        labShell.add(widget, 'main');
      }
      labShell.activateById(widget.id);
    };

    const closeDashboard = (name: string): void => {
      dashboards.get(name)?.dispose();
    };

    const logTabs = new Map<string, MainAreaWidget<LogsView>>();
    const openLogs = (name: string): void => {
      let widget = logTabs.get(name);
      if (!widget || widget.isDisposed) {
        widget = new MainAreaWidget({ content: new LogsView(api, name) });
        widget.id = `dask-gateway-logs-${name}`;
        widget.title.label = `Logs ${name.slice(0, 8)}`;
        widget.title.caption = `Logs of cluster ${name}`;
        widget.title.icon = gatewayIcon;
        widget.title.closable = true;
        logTabs.set(name, widget);
        widget.disposed.connect(() => logTabs.delete(name));
        labShell.add(widget, 'main');
      }
      labShell.activateById(widget.id);
    };

    const insertCode = (name: string): string | null => {
      const panel = notebooks?.currentWidget;
      if (!panel) {
        return 'Open a notebook first: the connect code goes into the active notebook.';
      }
      const notebook = panel.content;
      const active = notebook.activeCell;
      const emptyActive =
        active && active.model.type === 'code' && active.model.sharedModel.getSource() === '';
      if (!emptyActive) {
        NotebookActions.insertBelow(notebook);
      }
      const cell = notebook.activeCell;
      if (!cell) {
        return 'Could not add a cell to the notebook.';
      }
      if (cell.model.type !== 'code') {
        NotebookActions.changeCellType(notebook, 'code');
      }
      notebook.activeCell?.model.sharedModel.setSource(connectCode(name));
      labShell.activateById(panel.id);
      return null;
    };

    let storage: Storage | null;
    try {
      storage = window.localStorage;
    } catch {
      storage = null; // blocked by the browser: dismissals last until the page reloads
    }
    const sidebar = new GatewaySidebar({
      api,
      commands: app.commands,
      closeDashboard,
      storage,
      storageKey: dismissedKey(app.serviceManager.serverSettings.baseUrl),
      openStream: signal => baseAPI.openStream(signal, allUsers.active)
    });
    sidebar.title.icon = gatewayIcon;
    sidebar.title.caption = 'Dask Gateway clusters';

    addCommands(app.commands, {
      api,
      sidebar,
      showSidebar: () => labShell.activateById(sidebar.id),
      openDashboard,
      closeDashboard,
      openLogs,
      insertCode,
      contextCluster: () =>
        app.contextMenuHitTest(node => Boolean(node.dataset.clusterName))?.dataset.clusterName ??
        null
    });
    addMenuItems(app.contextMenu, palette);

    // Settings (schema/plugin.json), applied live; the admin's view; their commands.
    const settings = new GatewaySettings();
    settings.connect(values => {
      sidebar.setPollInterval(values.pollInterval);
      sidebar.showStopped = values.showStopped;
    });
    addSettingCommands(app.commands, {
      settings,
      save: registry ? (key, value) => registry.set(plugin.id, key, value) : null,
      sidebarShown: () => sidebar.isVisible,
      showSidebar: () => labShell.activateById(sidebar.id),
      hideSidebar: () => labShell.collapseLeft(),
      showError: error => sidebar.showError(error)
    });
    addAllUsersCommand(app.commands, allUsers, {
      refresh: () => sidebar.refresh(),
      showError: error => sidebar.showError(error)
    });
    addSettingMenuItems(app.contextMenu, palette);
    showBanner(sidebar.node, allUsers);
    allUsers.connect(() => sidebar.restartStream()); // the events of the clusters listed
    void allUsers.check();
    if (registry) {
      registry
        .load(plugin.id)
        .then(loaded => {
          settings.update(loaded.composite);
          loaded.changed.connect(() => settings.update(loaded.composite));
        })
        .catch(reason => console.warn('dask-gateway-jupyterlab: settings not loaded', reason));
    }
    if (notebooks) {
      new KernelWatch(notebooks, sidebar); // selects the active notebook's cluster
    }

    labShell.add(sidebar, 'left', { rank: 210 });
    restorer?.add(sidebar, sidebar.id);

    // Dashboard plots as panes (panes.ts), and the selected cluster's plots in the sidebar.
    const panes = new Panes({
      api,
      baseUrl: app.serviceManager.serverSettings.baseUrl,
      labShell,
      commands: app.commands,
      restorer,
      palette,
      contextMenu: app.contextMenu,
      currentCluster: () =>
        app.contextMenuHitTest(node => Boolean(node.dataset.clusterName))?.dataset.clusterName ??
        sidebar.selected ??
        onlyRunning(sidebar.clusters),
      defaultLayout: () => settings.current.defaultLayout,
      showError: error => sidebar.showError(error)
    });
    panes.setup();
    const plotList = new PlotList(panes, app.commands);
    sidebar.node.appendChild(plotList.node);
    const showPlots = () => {
      const name = sidebar.selected;
      plotList.show(name === null ? null : (sidebar.cluster(name) ?? null));
    };
    sidebar.selectionChanged.connect(showPlots);
    app.commands.commandChanged.connect(showPlots); // the sidebar's rows changed state
  }
};

export default plugin;
