/**
 * The sidebar's actions as JupyterLab commands: in the command palette (category "Dask
 * Gateway"), in the context menu of a cluster row, and behind the panel's buttons.
 *
 * A command that acts on a cluster takes its name as `{name}`. Without it, it acts on the row
 * its context menu was opened on, else on the selected row, else on the only cluster, else it
 * asks which. Outcomes and errors are said in the panel (and as a notification while the
 * panel is closed); commands never reject, so a button click cannot end in an unhandled error.
 */
import { Dialog, ICommandPalette, InputDialog, showDialog } from '@jupyterlab/apputils';
import {
  addIcon,
  closeIcon,
  codeIcon,
  fastForwardIcon,
  launchIcon,
  numberingIcon,
  pauseIcon,
  refreshIcon,
  stopIcon,
  textEditorIcon
} from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { ReadonlyJSONObject, ReadonlyPartialJSONObject } from '@lumino/coreutils';
import { ContextMenu, Widget } from '@lumino/widgets';

import type { IGatewayAPI } from './api';
import { CommandIDs, PALETTE_CATEGORY } from './commandids';
import { isEnded } from './dismissed';
import { shortName } from './format';
import { parseCount } from './options';
import type { GatewaySidebar } from './sidebar';
import type { ICluster } from './types';

export { CommandIDs, PALETTE_CATEGORY } from './commandids';

/** What the commands act through; every part is passed in. */
export interface ICommandsContext {
  api: IGatewayAPI;
  sidebar: GatewaySidebar;
  /** Show (and focus) the sidebar. */
  showSidebar(): void;
  /** Open (or focus) the cluster's dashboard tab at `url`. */
  openDashboard(name: string, url: string): void;
  /** Close the cluster's dashboard tab, if open. */
  closeDashboard(name: string): void;
  /** Open (or focus) the tab that shows and follows the cluster's logs. */
  openLogs(name: string): void;
  /** Insert the connect code into the active notebook; an error message, or null. */
  insertCode(name: string): string | null;
  /** The cluster of the row the last context menu was opened on, if any. */
  contextCluster(): string | null;
}

type Args = ReadonlyPartialJSONObject;

/** Context menu items pass this, so the command takes the row under the menu. */
const FROM_CONTEXT_MENU: ReadonlyJSONObject = { origin: 'context-menu' };

/** Whether a cluster (undefined: not listed yet) can still be scaled or shut down. */
const isLive = (c: ICluster | undefined): boolean =>
  !c || c.status === 'PENDING' || c.status === 'RUNNING';
const hasDashboard = (c: ICluster | undefined): boolean =>
  !c || (c.status === 'RUNNING' && Boolean(c.dashboard_link));

/** The body of the adapt dialog: two counts, either may stay empty. */
class AdaptBody extends Widget implements Dialog.IBodyWidget<{ min: string; max: string }> {
  private min: HTMLInputElement;
  private max: HTMLInputElement;

  constructor(adapt: ICluster['adapt']) {
    super();
    this.addClass('dgj-AdaptDialog');
    const field = (label: string, value: number | null | undefined, name: string) => {
      const row = document.createElement('label');
      row.className = 'dgj-Field';
      const span = document.createElement('span');
      span.className = 'dgj-Field-label';
      span.textContent = label;
      const input = document.createElement('input');
      input.className = 'dgj-Field-input';
      input.name = name;
      input.inputMode = 'numeric';
      input.value = value === null || value === undefined ? '' : String(value);
      row.append(span, input);
      this.node.appendChild(row);
      return input;
    };
    this.min = field('Fewest workers (empty: 0)', adapt?.minimum, 'minimum');
    this.max = field('Most workers (empty: the gateway’s limit)', adapt?.maximum, 'maximum');
  }

  getValue(): { min: string; max: string } {
    return { min: this.min.value, max: this.max.value };
  }
}

/** Register the commands on `commands`. */
export function addCommands(commands: CommandRegistry, context: ICommandsContext): void {
  const { api, sidebar } = context;

  /** The cluster named by the arguments, the context menu or the selection, if any. */
  const named = (args: Args): string | null => {
    if (typeof args.name === 'string' && args.name) {
      return args.name;
    }
    if (args.origin === FROM_CONTEXT_MENU.origin) {
      const name = context.contextCluster();
      if (name) {
        return name;
      }
    }
    return sidebar.selected;
  };

  /** The cluster to act on; asks when there are several. Null: none (said why) or cancelled. */
  const target = async (
    args: Args,
    verb: string,
    accepts: (c: ICluster | undefined) => boolean
  ): Promise<string | null> => {
    const name = named(args);
    if (name) {
      return name;
    }
    const candidates = (await api.listClusters()).clusters.filter(c => accepts(c));
    if (candidates.length === 1) {
      return candidates[0].name;
    }
    if (candidates.length === 0) {
      sidebar.showError(`There is no cluster to ${verb}.`);
      return null;
    }
    const choice = await InputDialog.getItem({
      title: `Which cluster to ${verb}?`,
      items: candidates.map(c => c.name),
      current: 0,
      okLabel: 'Select'
    });
    return choice.button.accept ? choice.value : null;
  };

  /** Enabled unless the named cluster is listed in a state `accepts` refuses. */
  const enabledFor =
    (accepts: (c: ICluster | undefined) => boolean) =>
    (args: Args): boolean => {
      const name = named(args);
      return name === null || accepts(sidebar.cluster(name));
    };

  /** Run an action; its errors are said in the panel, never thrown at the caller. */
  const attempt = async <T>(action: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await action();
    } catch (error) {
      sidebar.showError(error);
      return undefined;
    }
  };

  commands.addCommand(CommandIDs.newCluster, {
    label: 'New Cluster…',
    caption: 'Create a cluster with options you choose',
    icon: addIcon,
    isEnabled: () => !sidebar.formOpen,
    execute: () => {
      context.showSidebar();
      return sidebar.openForm();
    }
  });

  commands.addCommand(CommandIDs.refresh, {
    label: 'Refresh Cluster List',
    caption: 'Refresh the list of clusters now',
    icon: refreshIcon,
    execute: () => sidebar.refresh()
  });

  commands.addCommand(CommandIDs.scale, {
    label: 'Scale Cluster…',
    caption: 'Set the number of workers (stops adaptive scaling)',
    icon: numberingIcon,
    isEnabled: enabledFor(isLive),
    execute: args =>
      attempt(async () => {
        const name = await target(args, 'scale', isLive);
        if (!name) {
          return;
        }
        let count = args.count;
        if (count === undefined) {
          const current = sidebar.cluster(name);
          const answer = await InputDialog.getText({
            title: `Scale ${shortName(name)}`,
            label: 'Number of workers',
            text: String(current?.requested ?? current?.workers ?? ''),
            okLabel: 'Scale'
          });
          if (!answer.button.accept || answer.value === null) {
            return;
          }
          const parsed = parseCount(answer.value, 'a number of workers', false);
          if ('error' in parsed) {
            sidebar.showError(parsed.error);
            return;
          }
          count = parsed.value;
        }
        if (typeof count !== 'number') {
          sidebar.showError('The number of workers must be a whole number, 0 or more');
          return;
        }
        const n = count;
        const result = await sidebar.whileBusy(name, () => api.scale(name, n));
        sidebar.showInfo(result.msg ?? `Scaling ${shortName(name)} to ${n} workers`, !result.ok);
        return result;
      })
  });

  commands.addCommand(CommandIDs.adapt, {
    label: 'Adapt Cluster…',
    caption: 'Scale with the load between a minimum and a maximum of workers',
    icon: fastForwardIcon,
    isEnabled: enabledFor(isLive),
    execute: args =>
      attempt(async () => {
        const name = await target(args, 'adapt', isLive);
        if (!name) {
          return;
        }
        let minimum: number | null;
        let maximum: number | null;
        if ('minimum' in args || 'maximum' in args) {
          const bound = (value: unknown) => (typeof value === 'number' ? value : null);
          minimum = bound(args.minimum);
          maximum = bound(args.maximum);
        } else {
          const answer = await showDialog({
            title: `Adapt ${shortName(name)}`,
            body: new AdaptBody(sidebar.cluster(name)?.adapt ?? null),
            buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Adapt' })]
          });
          if (!answer.button.accept || !answer.value) {
            return;
          }
          const min = parseCount(answer.value.min, 'the minimum', true);
          const max = parseCount(answer.value.max, 'the maximum', true);
          if ('error' in min || 'error' in max) {
            sidebar.showError('error' in min ? min.error : 'error' in max ? max.error : '');
            return;
          }
          minimum = min.value;
          maximum = max.value;
        }
        const result = await sidebar.whileBusy(name, () => api.adapt(name, minimum, maximum));
        sidebar.showInfo(
          result.msg ??
            `${shortName(name)} now adapts between ${minimum ?? 0} and ` +
              `${maximum ?? 'the limit'} workers`,
          !result.ok
        );
        return result;
      })
  });

  commands.addCommand(CommandIDs.stopAdapting, {
    label: 'Stop Adaptive Scaling',
    caption: 'Stop adaptive scaling; the workers stay',
    icon: pauseIcon,
    isEnabled: enabledFor(c => isLive(c) && (!c || c.adapt !== null)),
    execute: args =>
      attempt(async () => {
        const name = await target(args, 'stop adapting', c => isLive(c) && c?.adapt !== null);
        if (!name) {
          return;
        }
        const result = await sidebar.whileBusy(name, () => api.adapt(name, null, null, false));
        sidebar.showInfo(`${shortName(name)} stopped adapting; its workers stay`);
        return result;
      })
  });

  commands.addCommand(CommandIDs.shutdown, {
    label: 'Shut Down Cluster…',
    caption: 'Shut this cluster down (asks first)',
    icon: stopIcon,
    isEnabled: enabledFor(isLive),
    execute: args =>
      attempt(async () => {
        const name = await target(args, 'shut down', isLive);
        if (!name) {
          return;
        }
        if (args.confirm !== false) {
          const answer = await showDialog({
            title: 'Shut down cluster?',
            body:
              `Shut down cluster ${name}? Its scheduler and workers stop, and ` +
              'any work on it is lost.',
            buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Shut down' })]
          });
          if (!answer.button.accept) {
            return;
          }
        }
        await sidebar.whileBusy(name, async () => {
          // Close the dashboard first: it would only show connection errors from now on.
          context.closeDashboard(name);
          await api.shutdown(name);
        });
        sidebar.markStopping(name);
      })
  });

  commands.addCommand(CommandIDs.openLogs, {
    label: 'Show Cluster Logs',
    caption: 'Open the logs of the scheduler and workers in a tab that follows new lines',
    icon: textEditorIcon,
    execute: args =>
      attempt(async () => {
        const name = await target(args, 'show the logs of', () => true);
        if (name) {
          context.openLogs(name);
        }
      })
  });

  commands.addCommand(CommandIDs.dismiss, {
    label: 'Dismiss Cluster',
    caption: 'Remove this stopped or failed cluster from the list',
    icon: closeIcon,
    isEnabled: enabledFor(c => !c || isEnded(c.status)),
    execute: args =>
      attempt(async () => {
        const name = await target(
          args,
          'dismiss',
          c => c !== undefined && isEnded(c.status) && !sidebar.isDismissed(c.name)
        );
        if (name) {
          sidebar.dismiss(name);
        }
      })
  });

  commands.addCommand(CommandIDs.openDashboard, {
    label: 'Open Cluster Dashboard',
    caption: 'Open the Dask dashboard in a tab',
    icon: launchIcon,
    isEnabled: enabledFor(hasDashboard),
    execute: args =>
      attempt(async () => {
        const name = await target(args, 'open the dashboard of', c => c?.status === 'RUNNING');
        if (!name) {
          return;
        }
        const { url } = await sidebar.whileBusy(name, () => api.dashboard(name));
        context.openDashboard(name, url);
      })
  });

  commands.addCommand(CommandIDs.insertCode, {
    label: 'Insert Cluster Connect Code',
    caption: 'Insert code that connects to this cluster into the active notebook',
    icon: codeIcon,
    execute: args =>
      attempt(async () => {
        const name = await target(args, 'connect to', isLive);
        if (!name) {
          return;
        }
        const error = context.insertCode(name);
        if (error) {
          sidebar.showError(error);
        }
      })
  });
}

/** Every command in the palette; the cluster ones in a cluster row's context menu, the
 * others in the panel's. */
export function addMenuItems(contextMenu: ContextMenu, palette: ICommandPalette | null): void {
  const rows = '.dgj-Sidebar .dgj-Cluster';
  const perCluster = [
    CommandIDs.openDashboard,
    CommandIDs.openLogs,
    CommandIDs.insertCode,
    CommandIDs.scale,
    CommandIDs.adapt,
    CommandIDs.stopAdapting,
    CommandIDs.shutdown,
    CommandIDs.dismiss
  ];
  perCluster.forEach((command, rank) =>
    contextMenu.addItem({ command, selector: rows, rank, args: FROM_CONTEXT_MENU })
  );
  contextMenu.addItem({ command: CommandIDs.newCluster, selector: '.dgj-Sidebar', rank: 20 });
  contextMenu.addItem({ command: CommandIDs.refresh, selector: '.dgj-Sidebar', rank: 21 });
  if (palette) {
    for (const command of [CommandIDs.newCluster, ...perCluster, CommandIDs.refresh]) {
      palette.addItem({ command, category: PALETTE_CATEGORY });
    }
  }
}
