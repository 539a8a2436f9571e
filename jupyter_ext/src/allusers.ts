/**
 * The admin's all-users view: the sidebar lists every user's clusters, each with its owner
 * (`GET dask-gateway/clusters?all=1`), and every action works on them as the gateway allows
 * (it lets admins scale and stop anyone's clusters; what it refuses is said as it says it).
 *
 * Only admins are offered the toggle: the server extension asks the gateway
 * (`GET dask-gateway/admin`), never the browser. The view changes one thing, what
 * `listClusters` answers; every other call goes through unchanged, by cluster name.
 */
import { CommandRegistry } from '@lumino/commands';

import { GatewayAPI, GatewayError } from './api';
import { CommandIDs } from './commandids';
import type { IClusterList } from './types';

/** The text of the banner over an all-users list. */
export const ALL_USERS_BANNER = 'Showing every user’s clusters (admin)';

/** Whether this user is an admin, and whether the list shows every user's clusters. */
export class AllUsersView {
  private admin = false;
  private on = false;
  private listeners: (() => void)[] = [];

  constructor(private readonly base: GatewayAPI) {}

  /** Whether the gateway says this user is an admin (false until asked, and on errors). */
  get isAdmin(): boolean {
    return this.admin;
  }

  /** Whether the list shows every user's clusters. */
  get active(): boolean {
    return this.on;
  }

  set active(value: boolean) {
    const next = value && this.admin;
    if (next !== this.on) {
      this.on = next;
      this.emit();
    }
  }

  /** Call `listener` on every change of `isAdmin` or `active`. */
  connect(listener: () => void): void {
    this.listeners.push(listener);
  }

  private emit(): void {
    for (const listener of this.listeners) {
      listener();
    }
  }

  /** Ask the server extension whether this user is an admin (errors: not one). */
  async check(): Promise<boolean> {
    let admin: boolean;
    try {
      admin = (await this.base.request<{ admin?: unknown }>('admin'))?.admin === true;
    } catch {
      admin = false;
    }
    if (admin !== this.admin) {
      this.admin = admin;
      if (!admin) {
        this.on = false;
      }
      this.emit();
    }
    return admin;
  }

  /** Every user's clusters; a 403 (no longer an admin) turns the view off. */
  async listAll(): Promise<IClusterList> {
    try {
      return await this.base.request<IClusterList>('clusters?all=1');
    } catch (error) {
      if (error instanceof GatewayError && error.status === 403) {
        this.admin = false;
        this.on = false;
        this.emit();
      }
      throw error;
    }
  }

  /** The API the sidebar and the commands use: `base`, but listing every user's clusters
   * while the view is on. Built on `base` so every other method (present or added later)
   * is the base's own. */
  api(): GatewayAPI {
    const scoped = Object.create(this.base) as GatewayAPI;
    scoped.listClusters = () => (this.on ? this.listAll() : this.base.listClusters());
    return scoped;
  }
}

/** The toggle command, shown only to admins; `{all: true|false}` sets the view, no
 * argument flips it. */
export function addAllUsersCommand(
  commands: CommandRegistry,
  view: AllUsersView,
  context: { refresh(): void; showError(error: unknown): void }
): void {
  commands.addCommand(CommandIDs.toggleAllUsers, {
    label: 'Show Every User’s Clusters',
    caption: 'Admins: list the clusters of every user, with their owners',
    isVisible: () => view.isAdmin,
    isToggleable: true,
    isToggled: () => view.active,
    execute: async args => {
      if (!view.isAdmin && !(await view.check())) {
        context.showError('Only admins of the Dask Gateway can list every user’s clusters.');
        return;
      }
      view.active = typeof args.all === 'boolean' ? args.all : !view.active;
      context.refresh();
    }
  });
  view.connect(() => commands.notifyCommandChanged(CommandIDs.toggleAllUsers));
}

/** A banner over the list while it shows every user's clusters. */
export function showBanner(host: HTMLElement, view: AllUsersView): void {
  const banner = document.createElement('div');
  banner.className = 'dgj-AllUsersBanner';
  banner.textContent = ALL_USERS_BANNER;
  banner.hidden = true;
  const header = host.querySelector('.dgj-Header');
  if (header) {
    header.after(banner);
  } else {
    host.prepend(banner);
  }
  const update = () => {
    banner.hidden = !view.active;
    host.classList.toggle('dgj-mod-allUsers', view.active);
  };
  view.connect(update);
  update();
}
