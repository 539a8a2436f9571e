/**
 * The sidebar's "Usage" section: the user's use this quota period ("This month: 12.5
 * core-hours, 50 GiB-hours") and, for each quota, a bar of used against limit, amber from the
 * warning share on, red once used up, with the gateway's message.
 *
 * The wording and the bars' figures are pure functions (unit-tested without JupyterLab); the
 * section only puts them in the page, with textContent. A gateway that counts no use (the
 * public dask-gateway-server) answers 501: the section stays hidden.
 */
import type { IQuotaAnswer, IQuotaEntry } from './types';

/** How often the section asks again while the sidebar polls (use changes slowly, and each
 * answer costs the gateway a query); a refresh (the Refresh command, after creating or
 * scaling a cluster) asks at once. */
export const QUOTA_INTERVAL = 60 * 1000;

/** A bar's colour: "ok", "warning" (amber) or "exhausted" (red). */
export type QuotaLevel = 'ok' | 'warning' | 'exhausted';

/** One quota as the section shows it. */
export interface IQuotaBar {
  kind: string;
  /** What is counted and whose: "Core-hours", "GiB-hours of group physics". */
  label: string;
  /** "85.2 of 100 core-hours (85 %)" (the percent sign stays with its number). */
  text: string;
  /** The bar's filled part, 0..100 (a quota used past its limit fills it). */
  percent: number;
  level: QuotaLevel;
}

/** What the section shows for an answer of the quota route. */
export interface IUsageView {
  /** "This month: 12.5 core-hours, 50 GiB-hours". */
  headline: string;
  /** The period, for the headline's tooltip: "2026-12-01 00:00 – 2027-01-01 00:00 UTC". */
  span: string;
  bars: IQuotaBar[];
  /** The overall state: "ok", "warning" or "exhausted". */
  state: QuotaLevel;
  message: string | null;
}

function finite(value: unknown, fallback = 0): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}

/** How the headline names the period: "Today", "This week", "This month". */
export function periodLabel(period: string): string {
  switch (period) {
    case 'day':
      return 'Today';
    case 'week':
      return 'This week';
    case 'month':
      return 'This month';
    default:
      return `This ${period}`;
  }
}

/** Hours as a person reads them: 1235, 85.2, 12.5, 50, 3.88, 0.25, 0.00521 (at least three
 * significant digits below 10: a little use is not none, and is not rounded to its limit). */
export function formatHours(hours: number): string {
  const h = finite(hours);
  if (h === 0) {
    return '0';
  }
  const abs = Math.abs(h);
  let text: string;
  if (abs >= 1000) {
    text = Math.round(h).toString();
  } else if (abs >= 10) {
    text = h.toFixed(1);
  } else {
    text = h.toPrecision(3);
  }
  return text.includes('.') && !text.includes('e') ? text.replace(/\.?0+$/, '') : text;
}

/** "1 core-hour", "12.5 core-hours": `unit` is [singular, plural]. */
function amount(hours: number, unit: [string, string]): string {
  const text = formatHours(hours);
  return `${text} ${text === '1' ? unit[0] : unit[1]}`;
}

const CORE_HOURS: [string, string] = ['core-hour', 'core-hours'];
const GIB_HOURS: [string, string] = ['GiB-hour', 'GiB-hours'];
const UNITS: Record<string, { unit: [string, string]; label: string }> = {
  core_hours: { unit: CORE_HOURS, label: 'Core-hours' },
  memory_gib_hours: { unit: GIB_HOURS, label: 'GiB-hours' }
};

/** The level of one quota's share: red from 1 on, amber from `warnAt` on. */
export function quotaLevel(share: number, warnAt: number): QuotaLevel {
  if (share >= 1) {
    return 'exhausted';
  }
  return share >= warnAt ? 'warning' : 'ok';
}

/** One quota's bar. `share` is the gateway's, or used/limit if it sent none. */
export function quotaBar(quota: IQuotaEntry, warnAt: number): IQuotaBar {
  const units = UNITS[quota.kind] ?? { unit: [quota.kind, quota.kind], label: quota.kind };
  const used = finite(quota.used);
  const limit = finite(quota.limit);
  const share = finite(quota.share, limit > 0 ? used / limit : used > 0 ? 1 : 0);
  const label =
    quota.scope === 'group' && quota.group ? `${units.label} of group ${quota.group}` : units.label;
  const shown = Math.floor(Math.max(0, share) * 100);
  return {
    kind: quota.kind,
    label,
    text: `${formatHours(used)} of ${amount(limit, units.unit)} (${shown}\u00a0%)`,
    percent: Math.min(100, Math.max(0, share * 100)),
    level: quotaLevel(share, warnAt)
  };
}

function utc(ms: number): string {
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
}

/** The whole section's view of an answer of the quota route. */
export function usageView(answer: IQuotaAnswer): IUsageView {
  const use = answer.use ?? { core_hours: 0, memory_gib_hours: 0 };
  const headline =
    `${periodLabel(answer.period)}: ${amount(use.core_hours, CORE_HOURS)}, ` +
    amount(use.memory_gib_hours, GIB_HOURS);
  const warnAt = finite(answer.warn_at, 0.8);
  const bars = (answer.quotas ?? []).map(q => quotaBar(q, warnAt));
  const known: QuotaLevel[] = ['ok', 'warning', 'exhausted'];
  const state = known.includes(answer.state as QuotaLevel) ? (answer.state as QuotaLevel) : 'ok';
  const start = finite(answer.period_start, NaN);
  const end = finite(answer.period_end, NaN);
  const span =
    Number.isFinite(start) && Number.isFinite(end) ? `${utc(start)} – ${utc(end)} UTC` : '';
  return { headline, span, bars, state, message: answer.message || null };
}

/** Whether an error of the quota route means "this gateway counts no use": 501. */
export function isUnsupported(error: unknown): boolean {
  return (
    typeof error === 'object' && error !== null && (error as { status?: unknown }).status === 501
  );
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text) {
    node.textContent = text;
  }
  return node;
}

/** The section in the sidebar; `load()` asks the server extension and shows the answer. */
export class UsageSection {
  readonly node: HTMLElement;
  private headline: HTMLElement;
  private bars: HTMLUListElement;
  private message: HTMLElement;
  private loading: Promise<void> | null = null;
  private again = false;
  private last = -Infinity;

  constructor(private readonly api: { quota(): Promise<IQuotaAnswer> }) {
    const node = el('section', 'dgj-Usage');
    node.setAttribute('aria-label', 'Usage');
    node.hidden = true; // until the gateway says it counts use
    this.headline = el('div', 'dgj-Usage-headline');
    this.bars = el('ul', 'dgj-Usage-quotas');
    this.message = el('div', 'dgj-Usage-message');
    this.message.setAttribute('role', 'status');
    node.append(el('h3', 'dgj-Usage-title', 'Usage'), this.headline, this.bars, this.message);
    this.node = node;
  }

  /** Ask again if `force`, or if the last answer is older than `QUOTA_INTERVAL`. */
  refresh(force: boolean, now = Date.now()): void {
    if (force || now - this.last >= QUOTA_INTERVAL) {
      void this.load();
    }
  }

  /** Ask the server extension and show its answer. Never throws: a 501 hides the section;
   * another error leaves what it showed (the cluster list reports the gateway's errors). */
  load(): Promise<void> {
    if (this.loading) {
      this.again = true; // asked while a request runs: once more after it, for fresh figures
      return this.loading;
    }
    this.last = Date.now();
    this.loading = this.api
      .quota()
      .then(
        answer => this.show(usageView(answer)),
        error => {
          if (isUnsupported(error)) {
            this.node.hidden = true;
          } else {
            const text = error instanceof Error ? error.message : String(error);
            this.node.title = `Could not refresh the usage: ${text}`;
          }
        }
      )
      .finally(() => {
        this.loading = null;
        if (this.again) {
          this.again = false;
          void this.load();
        }
      });
    return this.loading;
  }

  /** Put `view` in the page, replacing what was there. */
  show(view: IUsageView): void {
    this.node.hidden = false;
    this.node.title = '';
    this.node.dataset.state = view.state;
    this.headline.textContent = view.headline;
    this.headline.title = view.span;
    this.bars.replaceChildren(
      ...view.bars.map(bar => {
        const li = el('li', 'dgj-Quota');
        li.dataset.level = bar.level;
        li.dataset.kind = bar.kind;
        const label = el('div', 'dgj-Quota-label');
        label.append(
          el('span', 'dgj-Quota-name', bar.label),
          el('span', 'dgj-Quota-value', bar.text)
        );
        const track = el('div', 'dgj-Quota-bar');
        track.setAttribute('role', 'progressbar');
        track.setAttribute('aria-label', bar.label);
        track.setAttribute('aria-valuemin', '0');
        track.setAttribute('aria-valuemax', '100');
        track.setAttribute('aria-valuenow', String(Math.round(bar.percent)));
        track.setAttribute('aria-valuetext', bar.text);
        const fill = el('div', 'dgj-Quota-fill');
        fill.style.width = `${bar.percent}%`;
        track.append(fill);
        li.append(label, track);
        return li;
      })
    );
    this.bars.hidden = view.bars.length === 0;
    this.message.textContent = view.message ?? '';
    this.message.hidden = !view.message;
  }
}
