/**
 * JupyterLab plugin: the Dask Gateway sidebar, dashboard tabs and code insertion.
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IFrame, LabIcon } from '@jupyterlab/ui-components';

import { GatewaySidebar } from './sidebar';

/** A gateway arch over three cluster nodes (drawn for this project). */
const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 21V9.5C3 5.4 7 2 12 2s9 3.4 9 7.5V21h-3V9.7C18 7.2 15.3 5 12 5S6 7.2 6 9.7V21z"/>
    <circle cx="12" cy="11" r="2.2"/>
    <circle cx="9" cy="17" r="2.2"/>
    <circle cx="15" cy="17" r="2.2"/>
  </g>
</svg>`;

export const gatewayIcon = new LabIcon({
  name: 'dask-gateway-jupyterlab:icon',
  svgstr: ICON_SVG
});

/** The code that connects a notebook to a cluster; the gateway comes from dask config. */
export function connectCode(name: string): string {
  return [
    'from dask_gateway import Gateway',
    '',
    'gateway = Gateway()',
    `cluster = gateway.connect(${JSON.stringify(name)})`,
    'client = cluster.get_client()',
    'client'
  ].join('\n');
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'dask-gateway-jupyterlab:plugin',
  description: 'List and manage your Dask Gateway clusters from a sidebar.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ILayoutRestorer, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null
  ) => {
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

    const sidebar = new GatewaySidebar({ openDashboard, closeDashboard, insertCode });
    sidebar.title.icon = gatewayIcon;
    sidebar.title.caption = 'Dask Gateway clusters';
    labShell.add(sidebar, 'left', { rank: 210 });
    restorer?.add(sidebar, sidebar.id);
  }
};

export default plugin;
