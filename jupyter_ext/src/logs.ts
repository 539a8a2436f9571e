/**
 * The logs tab's bookkeeping (pure: unit-tested without JupyterLab): which components there
 * are and how they are named, how each answer of the long-poll extends the text shown, and
 * when to ask again.
 */

/** `?a=1&b=2` of the values that are set ('' when none). */
export function queryString(values: Record<string, string | number | undefined>): string {
  const parts = Object.entries(values)
    .filter((entry): entry is [string, string | number] => entry[1] !== undefined)
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(String(value))}`);
  return parts.length ? `?${parts.join('&')}` : '';
}

/** How a component is named in the picker: `Scheduler`, `Worker NAME`. */
export function componentLabel(component: string): string {
  if (component === 'scheduler') {
    return 'Scheduler';
  }
  if (component.startsWith('worker:')) {
    return `Worker ${component.slice('worker:'.length)}`;
  }
  return component;
}

/** The picker's components: the scheduler first, then the others in the gateway's order
 * (workers by start time); `keep` (the one shown) stays listed even if the gateway no longer
 * names it. */
export function orderComponents(components: string[], keep: string | null = null): string[] {
  const out: string[] = [];
  const add = (c: string) => {
    if (!out.includes(c)) {
      out.push(c);
    }
  };
  if (components.includes('scheduler') || keep === 'scheduler') {
    add('scheduler');
  }
  components.forEach(add);
  if (keep !== null) {
    add(keep);
  }
  return out;
}

/** The text a tab shows of one component, and where in the log it ends. */
export interface ILogText {
  text: string;
  /** Byte position after the text (the next request's `offset`); null before the first. */
  offset: number | null;
}

/** Said where bytes are missing: the gateway no longer keeps them (or the tab dropped them). */
export const GAP_MARK = '… (older lines are no longer kept) …\n';

/** The newest part of `text` of at most `maxChars` characters, cut at a line start. */
export function keepNewest(text: string, maxChars: number): string {
  if (text.length <= maxChars) {
    return text;
  }
  const cut = text.length - maxChars;
  const nextLine = text.indexOf('\n', cut - 1);
  const tail =
    nextLine < 0 || nextLine + 1 >= text.length ? text.slice(cut) : text.slice(nextLine + 1);
  return GAP_MARK + tail;
}

/** The shown text after an answer: `chunk` holds the bytes from `start` to `offset`. A
 * chunk that starts after the previous end means bytes were dropped in between (the log
 * outgrew what the gateway keeps): a mark says so. The text is capped at `maxChars`. */
export function appendChunk(
  previous: ILogText,
  chunk: string,
  start: number | undefined,
  offset: number | undefined,
  maxChars: number
): ILogText {
  let text = previous.text;
  if (previous.offset === null) {
    text = start ? GAP_MARK + chunk : chunk; // older bytes exist, or existed
  } else if (start !== undefined && start > previous.offset) {
    text = `${text}${text && !text.endsWith('\n') ? '\n' : ''}${GAP_MARK}${chunk}`;
  } else {
    text = text + chunk;
  }
  const end = offset ?? (previous.offset ?? 0) + chunk.length;
  return { text: keepNewest(text, maxChars), offset: end };
}

/** How long to wait before asking again after a failed request (ms), or null to stop:
 * refusals (400, 403) will not change; a missing log (404: not written yet, or no such
 * component) is asked for a while; anything else (the gateway or the network) retries with
 * a growing delay. */
export function retryDelay(status: number, attempt: number): number | null {
  if (status === 400 || status === 403) {
    return null;
  }
  if (status === 404) {
    return attempt < 12 ? 5000 : null;
  }
  return Math.min(30000, 1000 * 2 ** Math.min(attempt, 5));
}
