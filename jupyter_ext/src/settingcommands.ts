/**
 * The commands beyond a cluster's actions: show/hide the sidebar (a keyboard shortcut, in
 * schema/plugin.json), the admin's all-users view, and the settings a user changes often
 * (list stopped clusters, polling interval) — written to JupyterLab's settings, so the
 * settings editor shows them and they apply everywhere at once.
 */
import { ICommandPalette, InputDialog } from '@jupyterlab/apputils';
import { CommandRegistry } from '@lumino/commands';
import { ContextMenu } from '@lumino/widgets';

import { CommandIDs, PALETTE_CATEGORY } from './commandids';
import { GatewaySettings, IGatewaySettings, POLL_MAX, POLL_MIN } from './settings';

export interface ISettingCommandsContext {
  settings: GatewaySettings;
  /** Store one setting (JupyterLab's setting registry); null: no registry (not saved). */
  save: ((key: keyof IGatewaySettings, value: boolean | number) => Promise<void>) | null;
  /** Whether the sidebar is shown now. */
  sidebarShown(): boolean;
  showSidebar(): void;
  hideSidebar(): void;
  showError(error: unknown): void;
}

export function addSettingCommands(
  commands: CommandRegistry,
  context: ISettingCommandsContext
): void {
  const { settings } = context;

  /** Store a setting; without a registry, apply it for this page only. */
  const store = async (key: keyof IGatewaySettings, value: boolean | number): Promise<void> => {
    try {
      if (context.save) {
        await context.save(key, value); // the registry's change applies it
      } else {
        settings.update({ ...settings.current, [key]: value });
      }
    } catch (error) {
      context.showError(error);
    }
  };

  commands.addCommand(CommandIDs.toggleSidebar, {
    label: 'Show/Hide Dask Gateway Sidebar',
    caption: 'Show the Dask Gateway clusters, or hide them if shown',
    execute: () => (context.sidebarShown() ? context.hideSidebar() : context.showSidebar())
  });

  commands.addCommand(CommandIDs.toggleShowStopped, {
    label: 'Show Stopped Clusters',
    caption: 'List stopped and failed clusters (until dismissed)',
    isToggleable: true,
    isToggled: () => settings.current.showStopped,
    execute: args =>
      store(
        'showStopped',
        typeof args.show === 'boolean' ? args.show : !settings.current.showStopped
      )
  });

  commands.addCommand(CommandIDs.setPollInterval, {
    label: 'Set Cluster List Polling Interval…',
    caption: 'How often the cluster list refreshes when nothing is pushed (seconds)',
    execute: async args => {
      let seconds = args.seconds;
      if (seconds === undefined) {
        const answer = await InputDialog.getNumber({
          title: 'Polling interval',
          label: `Seconds between two refreshes (${POLL_MIN}–${POLL_MAX})`,
          value: settings.current.pollInterval,
          okLabel: 'Set'
        });
        if (!answer.button.accept || answer.value === null) {
          return;
        }
        seconds = answer.value;
      }
      if (typeof seconds !== 'number' || !(seconds >= POLL_MIN && seconds <= POLL_MAX)) {
        context.showError(
          `The polling interval must be a number of seconds from ${POLL_MIN} to ${POLL_MAX}`
        );
        return;
      }
      await store('pollInterval', seconds);
    }
  });
  settings.connect(() => commands.notifyCommandChanged(CommandIDs.toggleShowStopped));
}

/** These commands in the palette; the list's toggles in the panel's context menu too. */
export function addSettingMenuItems(contextMenu: ContextMenu, palette: ICommandPalette | null) {
  contextMenu.addItem({ command: CommandIDs.toggleAllUsers, selector: '.dgj-Sidebar', rank: 22 });
  contextMenu.addItem({
    command: CommandIDs.toggleShowStopped,
    selector: '.dgj-Sidebar',
    rank: 23
  });
  if (palette) {
    for (const command of [
      CommandIDs.toggleSidebar,
      CommandIDs.toggleAllUsers,
      CommandIDs.toggleShowStopped,
      CommandIDs.setPollInterval
    ]) {
      palette.addItem({ command, category: PALETTE_CATEGORY });
    }
  }
}
