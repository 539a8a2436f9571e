/**
 * The sidebar's command ids, in a module of their own so that the panel (which executes
 * them) and `commands.ts` (which registers them) both import it, not each other.
 *
 * Commands that act on a cluster take `{name}`; without it they act on the context menu's or
 * the selected row, or ask.
 */
export namespace CommandIDs {
  export const newCluster = 'dask-gateway:new-cluster';
  export const scale = 'dask-gateway:scale';
  export const adapt = 'dask-gateway:adapt';
  export const stopAdapting = 'dask-gateway:stop-adapting';
  export const shutdown = 'dask-gateway:shutdown';
  export const openDashboard = 'dask-gateway:open-dashboard';
  export const insertCode = 'dask-gateway:insert-code';
  export const refresh = 'dask-gateway:refresh';
  export const openLogs = 'dask-gateway:open-logs';
  export const dismiss = 'dask-gateway:dismiss';
  export const toggleSidebar = 'dask-gateway:toggle-sidebar';
  export const toggleAllUsers = 'dask-gateway:toggle-all-users';
  export const toggleShowStopped = 'dask-gateway:toggle-show-stopped';
  export const setPollInterval = 'dask-gateway:set-poll-interval';
}

/** The command palette's category for these commands. */
export const PALETTE_CATEGORY = 'Dask Gateway';
