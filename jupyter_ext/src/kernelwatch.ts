/**
 * The notebook's cluster: when the active notebook's kernel creates or connects to a gateway
 * cluster, the sidebar selects it; switching notebooks switches the selection.
 *
 * Pushed by the kernel: the dask-gateway client, inside a kernel, opens a comm on target
 * `dask-gateway` with `{cluster, address}` once the gateway has confirmed the cluster
 * (dask_gateway/jupyter_comm.py). This module registers that target on every notebook
 * kernel, remembers each kernel's latest cluster, and selects the current notebook's. Nothing
 * runs per cell and nothing is polled.
 *
 * Only type imports from JupyterLab: the logic runs in the plain-Node unit tests with fakes.
 */
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { Kernel, KernelMessage } from '@jupyterlab/services';

/** The comm target the client opens (COMM_TARGET in dask_gateway/jupyter_comm.py). */
export const COMM_TARGET = 'dask-gateway';

/** Longest cluster name or address taken from a kernel (anything longer is not ours). */
const MAX_LENGTH = 1024;

/** What a kernel says: the cluster it made or connected to, on which gateway. */
export interface IKernelCluster {
  cluster: string;
  address: string | null;
}

/** The comm's open data, checked (a kernel runs user code: trust nothing of its shape). */
export function parseAnnouncement(data: unknown): IKernelCluster | null {
  if (typeof data !== 'object' || data === null) {
    return null;
  }
  const { cluster, address } = data as Record<string, unknown>;
  if (typeof cluster !== 'string' || cluster === '' || cluster.length > MAX_LENGTH) {
    return null;
  }
  const addr = typeof address === 'string' && address.length <= MAX_LENGTH ? address : null;
  return { cluster, address: addr };
}

/** What the watch needs of the sidebar (GatewaySidebar has it). */
export interface IClusterSelection {
  select(name: string | null): void;
  cluster(name: string): unknown;
  refresh(): void;
}

/** Selects, in the sidebar, the cluster of the active notebook's kernel. */
export class KernelWatch {
  /** Each kernel's latest cluster, by kernel id (a notebook's kernel can change). */
  private latest = new Map<string, string>();
  private registered = new WeakSet<Kernel.IKernelConnection>();

  constructor(
    private notebooks: INotebookTracker,
    private sidebar: IClusterSelection
  ) {
    notebooks.forEach(panel => this.watch(panel));
    notebooks.widgetAdded.connect((_, panel) => this.watch(panel));
    notebooks.currentChanged.connect((_, panel) => this.follow(panel));
  }

  /** The latest cluster of kernel `id`, if it announced one. */
  clusterOf(id: string): string | undefined {
    return this.latest.get(id);
  }

  private watch(panel: NotebookPanel): void {
    const context = panel.sessionContext;
    const onKernel = (): void => {
      const kernel = context.session?.kernel;
      if (kernel) {
        this.register(kernel);
      }
    };
    context.kernelChanged.connect(onKernel);
    panel.disposed.connect(() => context.kernelChanged.disconnect(onKernel));
    onKernel();
  }

  private register(kernel: Kernel.IKernelConnection): void {
    if (this.registered.has(kernel)) {
      return;
    }
    this.registered.add(kernel);
    kernel.registerCommTarget(COMM_TARGET, (comm, msg) => this.received(kernel, comm, msg));
    kernel.statusChanged.connect((_, status) => {
      if (status === 'restarting' || status === 'autorestarting') {
        this.latest.delete(kernel.id); // a new process: its clusters are its own
      }
    });
  }

  private received(
    kernel: Kernel.IKernelConnection,
    comm: Kernel.IComm,
    msg: KernelMessage.ICommOpenMsg
  ): void {
    // One message per comm: closing it frees the kernel's side at once.
    try {
      comm.close();
    } catch {
      // the kernel is gone: nothing to free
    }
    const said = parseAnnouncement(msg.content.data);
    if (!said) {
      return;
    }
    this.latest.set(kernel.id, said.cluster);
    const current = this.notebooks.currentWidget?.sessionContext.session?.kernel;
    if (current && current.id === kernel.id) {
      this.show(said.cluster);
    }
  }

  /** The active notebook changed: select its kernel's cluster, if it has one. */
  private follow(panel: NotebookPanel | null): void {
    const kernel = panel?.sessionContext.session?.kernel;
    const name = kernel ? this.latest.get(kernel.id) : undefined;
    if (name !== undefined) {
      this.show(name);
    }
  }

  private show(name: string): void {
    this.sidebar.select(name);
    if (this.sidebar.cluster(name) === undefined) {
      this.sidebar.refresh(); // just made: list it now rather than at the next poll
    }
  }
}
