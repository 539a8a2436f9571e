import { describe, expect, it } from 'vitest';

import {
  formatHours,
  isUnsupported,
  periodLabel,
  QUOTA_INTERVAL,
  quotaBar,
  quotaLevel,
  UsageSection,
  usageView
} from '../src/quota';
import type { IQuotaAnswer } from '../src/types';

/** The answer of the gateway's `GET /api/v1/quota`, as the design sheet gives it. */
function answer(overrides: Partial<IQuotaAnswer> = {}): IQuotaAnswer {
  return {
    user: 'alice',
    period: 'week',
    period_start: Date.UTC(2026, 10, 30),
    period_end: Date.UTC(2026, 11, 7),
    warn_at: 0.8,
    when_exhausted: 'keep',
    use: { core_hours: 12.5, memory_gib_hours: 50.0 },
    quotas: [
      {
        kind: 'core_hours',
        scope: 'user',
        group: null,
        limit: 100.0,
        used: 12.5,
        share: 0.125
      },
      {
        kind: 'memory_gib_hours',
        scope: 'group',
        group: 'physics',
        limit: 1000.0,
        used: 900.0,
        share: 0.9
      }
    ],
    state: 'warning',
    message:
      'The group physics has used 900 of 1000 GiB-hours this week (90 %); ' +
      'the week ends 2026-12-07 00:00 UTC',
    ...overrides
  };
}

describe('wording', () => {
  it('names the period', () => {
    expect(periodLabel('day')).toBe('Today');
    expect(periodLabel('week')).toBe('This week');
    expect(periodLabel('month')).toBe('This month');
    expect(periodLabel('quarter')).toBe('This quarter');
  });

  it('rounds hours as a person reads them', () => {
    expect(formatHours(12.5)).toBe('12.5');
    expect(formatHours(50.0)).toBe('50');
    expect(formatHours(0)).toBe('0');
    expect(formatHours(0.25)).toBe('0.25');
    expect(formatHours(3.880919)).toBe('3.88');
    expect(formatHours(85.24)).toBe('85.2');
    expect(formatHours(99.96)).toBe('100');
    expect(formatHours(999.5)).toBe('999.5');
    expect(formatHours(1234.6)).toBe('1235');
    expect(formatHours(0.003)).toBe('0.003'); // a little use is not none
    expect(formatHours(0.0052149)).toBe('0.00521');
    expect(formatHours(9.999)).toBe('10');
    expect(formatHours(1)).toBe('1');
    expect(formatHours(Number.NaN)).toBe('0');
  });
});

describe('usageView', () => {
  it('says the use this period, and a bar per quota', () => {
    const view = usageView(answer());
    expect(view.headline).toBe('This week: 12.5 core-hours, 50 GiB-hours');
    expect(view.span).toBe('2026-11-30 00:00 – 2026-12-07 00:00 UTC');
    expect(view.state).toBe('warning');
    expect(view.message).toContain('physics has used 900 of 1000 GiB-hours');
    expect(view.bars).toEqual([
      {
        kind: 'core_hours',
        label: 'Core-hours',
        text: '12.5 of 100 core-hours (12\u00a0%)',
        percent: 12.5,
        level: 'ok'
      },
      {
        kind: 'memory_gib_hours',
        label: 'GiB-hours of group physics',
        text: '900 of 1000 GiB-hours (90\u00a0%)',
        percent: 90,
        level: 'warning'
      }
    ]);
  });

  it('shows the use without bars when there is no quota', () => {
    const view = usageView(
      answer({
        period: 'month',
        quotas: [],
        state: 'ok',
        message: null,
        use: { core_hours: 1, memory_gib_hours: 0 }
      })
    );
    expect(view.headline).toBe('This month: 1 core-hour, 0 GiB-hours');
    expect(view.bars).toEqual([]);
    expect(view.state).toBe('ok');
    expect(view.message).toBeNull();
  });

  it('turns red once a quota is used up, and a bar never overflows', () => {
    const view = usageView(
      answer({
        quotas: [
          { kind: 'core_hours', scope: 'user', group: null, limit: 10, used: 12.5, share: 1.25 }
        ],
        state: 'exhausted',
        message: 'alice has used 12.5 of 10 core-hours this week (125 %)'
      })
    );
    expect(view.state).toBe('exhausted');
    expect(view.bars[0].level).toBe('exhausted');
    expect(view.bars[0].percent).toBe(100);
    expect(view.bars[0].text).toBe('12.5 of 10 core-hours (125\u00a0%)');
  });

  it('takes an unknown state as ok, and an answer missing parts without failing', () => {
    const partial = { period: 'day', state: 'novel', message: '' } as unknown as IQuotaAnswer;
    const view = usageView(partial);
    expect(view.headline).toBe('Today: 0 core-hours, 0 GiB-hours');
    expect(view.state).toBe('ok');
    expect(view.span).toBe('');
    expect(view.bars).toEqual([]);
    expect(view.message).toBeNull();
  });
});

describe('quotaBar', () => {
  it('colours at the warning share and at the limit', () => {
    expect(quotaLevel(0.79, 0.8)).toBe('ok');
    expect(quotaLevel(0.8, 0.8)).toBe('warning');
    expect(quotaLevel(0.999, 0.8)).toBe('warning');
    expect(quotaLevel(1, 0.8)).toBe('exhausted');
    expect(quotaLevel(0.5, 0.5)).toBe('warning');
  });

  it('computes the share when the gateway sent none, and never says 100 % too early', () => {
    const noShare = {
      kind: 'core_hours',
      scope: 'user',
      group: null,
      limit: 1000,
      used: 999.5
    } as unknown as Parameters<typeof quotaBar>[0];
    const bar = quotaBar(noShare, 0.8);
    expect(bar.level).toBe('warning');
    expect(bar.text).toBe('999.5 of 1000 core-hours (99\u00a0%)');
    const zero = quotaBar({ ...noShare, limit: 0, used: 0.5 }, 0.8);
    expect(zero.level).toBe('exhausted');
  });

  it('names an unknown kind as the gateway does', () => {
    const bar = quotaBar(
      { kind: 'gpu_hours', scope: 'user', group: null, limit: 4, used: 1, share: 0.25 },
      0.8
    );
    expect(bar.label).toBe('gpu_hours');
    expect(bar.text).toBe('1 of 4 gpu_hours (25\u00a0%)');
  });
});

describe('isUnsupported', () => {
  it('is a 501 only', () => {
    expect(isUnsupported({ status: 501, message: 'no quotas' })).toBe(true);
    expect(isUnsupported({ status: 502 })).toBe(false);
    expect(isUnsupported(new Error('x'))).toBe(false);
    expect(isUnsupported(null)).toBe(false);
  });
});

/** Just enough of the DOM for the section: elements with children, text and attributes. */
class FakeElement {
  className = '';
  textContent: string | null = '';
  hidden = false;
  title = '';
  dataset: Record<string, string> = {};
  style: Record<string, string> = {};
  attributes: Record<string, string> = {};
  children: FakeElement[] = [];
  constructor(readonly tagName: string) {}
  setAttribute(name: string, value: string): void {
    this.attributes[name] = value;
  }
  append(...nodes: FakeElement[]): void {
    this.children.push(...nodes);
  }
  replaceChildren(...nodes: FakeElement[]): void {
    this.children = nodes;
  }
  find(className: string): FakeElement[] {
    const own: FakeElement[] = this.className.split(' ').includes(className) ? [this] : [];
    return own.concat(...this.children.map(c => c.find(className)));
  }
  text(className: string): string | null {
    return this.find(className)[0]?.textContent ?? null;
  }
}

function withFakeDocument(): void {
  (globalThis as unknown as { document: unknown }).document = {
    createElement: (tag: string) => new FakeElement(tag)
  };
}

/** A quota route that answers from a queue; each call waits until released. */
class FakeRoute {
  calls = 0;
  private waiting: (() => void)[] = [];
  constructor(private answers: (IQuotaAnswer | Error)[]) {}
  quota(): Promise<IQuotaAnswer> {
    this.calls++;
    const next = this.answers.shift();
    return new Promise((resolve, reject) => {
      this.waiting.push(() => (next instanceof Error ? reject(next) : resolve(next!)));
    });
  }
  release(): void {
    this.waiting.shift()?.();
  }
}

class StatusError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

describe('UsageSection', () => {
  it('shows the use, the bars and the message, and hides on a 501', async () => {
    withFakeDocument();
    const route = new FakeRoute([
      answer(),
      new StatusError('gateway down', 502),
      new StatusError('no quotas here', 501)
    ]);
    const section = new UsageSection(route);
    const node = section.node as unknown as FakeElement;
    expect(node.hidden).toBe(true); // until the gateway answers

    let loading = section.load();
    route.release();
    await loading;
    expect(node.hidden).toBe(false);
    expect(node.dataset.state).toBe('warning');
    expect(node.text('dgj-Usage-headline')).toBe('This week: 12.5 core-hours, 50 GiB-hours');
    const quotas = node.find('dgj-Quota');
    expect(quotas.map(q => q.dataset.level)).toEqual(['ok', 'warning']);
    expect(quotas[1].text('dgj-Quota-value')).toBe('900 of 1000 GiB-hours (90\u00a0%)');
    expect(quotas[1].find('dgj-Quota-fill')[0].style.width).toBe('90%');
    expect(quotas[1].find('dgj-Quota-bar')[0].attributes['aria-valuenow']).toBe('90');
    const message = node.find('dgj-Usage-message')[0];
    expect(message.hidden).toBe(false);
    expect(message.textContent).toContain('physics has used 900');

    // Another error keeps what was shown, and says why it is not fresh.
    loading = section.load();
    route.release();
    await loading;
    expect(node.hidden).toBe(false);
    expect(node.title).toContain('gateway down');

    // A gateway without quotas: hidden.
    loading = section.load();
    route.release();
    await loading;
    expect(node.hidden).toBe(true);
  });

  it('asks once at a time, again after a refresh asked meanwhile, and not too often', async () => {
    withFakeDocument();
    const ok = answer({ quotas: [], state: 'ok', message: null });
    const route = new FakeRoute([ok, ok, ok, ok]);
    const section = new UsageSection(route);
    const first = section.load();
    section.refresh(true); // while the first runs: remembered, not sent
    section.refresh(true);
    expect(route.calls).toBe(1);
    route.release();
    await first;
    expect(route.calls).toBe(2); // once more, for figures after the refresh
    route.release();
    await Promise.resolve();
    await new Promise(resolve => setTimeout(resolve, 0));
    const node = section.node as unknown as FakeElement;
    expect(node.find('dgj-Usage-quotas')[0].hidden).toBe(true); // no quota: no bars
    expect(node.find('dgj-Usage-message')[0].hidden).toBe(true);

    const now = Date.now();
    section.refresh(false, now); // the poll, just after an answer: not due
    expect(route.calls).toBe(2);
    section.refresh(false, now + QUOTA_INTERVAL + 1); // a minute later: due
    expect(route.calls).toBe(3);
    route.release();
  });
});
