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
import { IFrame } from '@jupyterlab/ui-components';

import { GatewayAPI } from './api';
import { addCommands, addMenuItems } from './commands';
import { connectCode } from './connect';
import { dismissedKey } from './dismissed';
import { gatewayIcon } from './icons';
import { LogsView } from './logview';
import { GatewaySidebar } from './sidebar';

export { CommandIDs } from './commands';
export { connectCode } from './connect';
export { gatewayIcon } from './icons';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'dask-gateway-jupyterlab:plugin',
  description: 'List and manage your Dask Gateway clusters from a sidebar.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ILayoutRestorer, INotebookTracker, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null
  ) => {
    const api = new GatewayAPI(app.serviceManager.serverSettings);
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
      openStream: signal => api.openStream(signal)
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

    labShell.add(sidebar, 'left', { rank: 210 });
    restorer?.add(sidebar, sidebar.id);
  }
};

export default plugin;
