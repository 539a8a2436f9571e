import { describe, expect, it } from 'vitest';

import type { INotebookTracker } from '@jupyterlab/notebook';

import { COMM_TARGET, KernelWatch, parseAnnouncement } from '../src/kernelwatch';

type Slot<A> = (sender: unknown, args: A) => void;

class FakeSignal<A> {
  slots: Slot<A>[] = [];
  connect(slot: Slot<A>): boolean {
    this.slots.push(slot);
    return true;
  }
  disconnect(slot: Slot<A>): boolean {
    this.slots = this.slots.filter(s => s !== slot);
    return true;
  }
  emit(args: A): void {
    for (const slot of [...this.slots]) {
      slot(this, args);
    }
  }
}

type Target = (comm: { close(): void }, msg: { content: { data: unknown } }) => void;

class FakeKernel {
  targets = new Map<string, Target>();
  statusChanged = new FakeSignal<string>();
  closed = 0;
  constructor(public id: string) {}
  registerCommTarget(name: string, target: Target): void {
    this.targets.set(name, target);
  }
  /** The kernel opens a comm on our target, as the client does. */
  announce(data: unknown): void {
    const target = this.targets.get(COMM_TARGET);
    if (!target) {
      throw new Error('no target registered');
    }
    target({ close: () => (this.closed += 1) }, { content: { data } });
  }
}

class FakePanel {
  disposed = new FakeSignal<void>();
  sessionContext: {
    session: { kernel: FakeKernel | null } | null;
    kernelChanged: FakeSignal<unknown>;
  };
  constructor(kernel: FakeKernel | null) {
    this.sessionContext = { session: { kernel }, kernelChanged: new FakeSignal() };
  }
  changeKernel(kernel: FakeKernel): void {
    this.sessionContext.session = { kernel };
    this.sessionContext.kernelChanged.emit({});
  }
}

class FakeTracker {
  panels: FakePanel[] = [];
  currentWidget: FakePanel | null = null;
  widgetAdded = new FakeSignal<FakePanel>();
  currentChanged = new FakeSignal<FakePanel | null>();
  forEach(fn: (panel: FakePanel) => void): void {
    this.panels.forEach(fn);
  }
  add(panel: FakePanel): void {
    this.panels.push(panel);
    this.widgetAdded.emit(panel);
  }
  activate(panel: FakePanel | null): void {
    this.currentWidget = panel;
    this.currentChanged.emit(panel);
  }
}

class FakeSidebar {
  selected: string | null = null;
  listed = new Set<string>();
  refreshes = 0;
  select(name: string | null): void {
    this.selected = name;
  }
  cluster(name: string): unknown {
    return this.listed.has(name) ? { name } : undefined;
  }
  refresh(): void {
    this.refreshes += 1;
  }
}

function setup(): { tracker: FakeTracker; sidebar: FakeSidebar; watch: KernelWatch } {
  const tracker = new FakeTracker();
  const sidebar = new FakeSidebar();
  const watch = new KernelWatch(tracker as unknown as INotebookTracker, sidebar);
  return { tracker, sidebar, watch };
}

describe('parseAnnouncement', () => {
  it('takes a cluster name and an address', () => {
    expect(parseAnnouncement({ cluster: 'abc', address: 'http://gw' })).toEqual({
      cluster: 'abc',
      address: 'http://gw'
    });
    expect(parseAnnouncement({ cluster: 'abc' })).toEqual({ cluster: 'abc', address: null });
  });

  it('refuses anything else', () => {
    for (const bad of [
      null,
      'abc',
      3,
      {},
      { cluster: '' },
      { cluster: 7 },
      { cluster: 'x'.repeat(2000) }
    ]) {
      expect(parseAnnouncement(bad)).toBeNull();
    }
    expect(parseAnnouncement({ cluster: 'a', address: 'x'.repeat(2000) })).toEqual({
      cluster: 'a',
      address: null
    });
  });
});

describe('KernelWatch', () => {
  it('selects the cluster the active notebook announces, and closes the comm', () => {
    const { tracker, sidebar } = setup();
    const k1 = new FakeKernel('k1');
    const nb1 = new FakePanel(k1);
    tracker.add(nb1);
    tracker.activate(nb1);
    k1.announce({ cluster: 'one', address: 'http://gw' });
    expect(sidebar.selected).toBe('one');
    expect(k1.closed).toBe(1);
    expect(sidebar.refreshes).toBe(1); // not listed yet: listed at once
    sidebar.listed.add('two');
    k1.announce({ cluster: 'two', address: 'http://gw' });
    expect(sidebar.selected).toBe('two');
    expect(sidebar.refreshes).toBe(1); // already listed: no extra request
  });

  it('remembers a background notebook and selects its cluster when it becomes active', () => {
    const { tracker, sidebar, watch } = setup();
    const k1 = new FakeKernel('k1');
    const k2 = new FakeKernel('k2');
    const nb1 = new FakePanel(k1);
    const nb2 = new FakePanel(k2);
    tracker.add(nb1);
    tracker.add(nb2);
    tracker.activate(nb1);
    k1.announce({ cluster: 'one' });
    k2.announce({ cluster: 'two' }); // nb2 is in the background
    expect(sidebar.selected).toBe('one');
    expect(watch.clusterOf('k2')).toBe('two');
    tracker.activate(nb2);
    expect(sidebar.selected).toBe('two');
    tracker.activate(nb1);
    expect(sidebar.selected).toBe('one');
    // A notebook without a cluster leaves the selection alone.
    const nb3 = new FakePanel(new FakeKernel('k3'));
    tracker.add(nb3);
    tracker.activate(nb3);
    expect(sidebar.selected).toBe('one');
    tracker.activate(null);
    expect(sidebar.selected).toBe('one');
  });

  it('watches panels opened before it and kernels that change or restart', () => {
    const tracker = new FakeTracker();
    const sidebar = new FakeSidebar();
    const early = new FakePanel(new FakeKernel('k0'));
    tracker.panels.push(early);
    tracker.currentWidget = early;
    const watch = new KernelWatch(tracker as unknown as INotebookTracker, sidebar);
    (early.sessionContext.session!.kernel as FakeKernel).announce({ cluster: 'zero' });
    expect(sidebar.selected).toBe('zero');

    const k1 = new FakeKernel('k1');
    early.changeKernel(k1);
    k1.announce({ cluster: 'one' });
    expect(sidebar.selected).toBe('one');
    k1.statusChanged.emit('restarting');
    expect(watch.clusterOf('k1')).toBeUndefined();
  });

  it('ignores malformed announcements but still closes their comm', () => {
    const { tracker, sidebar } = setup();
    const k1 = new FakeKernel('k1');
    const nb1 = new FakePanel(k1);
    tracker.add(nb1);
    tracker.activate(nb1);
    k1.announce({ name: 'not-ours' });
    expect(sidebar.selected).toBeNull();
    expect(k1.closed).toBe(1);
  });
});
