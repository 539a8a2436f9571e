/**
 * Building the console's elements. Text goes in as text nodes only (never as markup): cluster
 * names, options, events and logs come from users and are treated as hostile.
 */

export type Child = Node | string | null | undefined | false;

/** A new element with attributes (set with setAttribute, so never parsed as markup) and
 * children (strings become text nodes). */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  append(node, ...children);
  return node;
}

/** Append children, strings as text nodes. */
export function append(node: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
}

/** Replace a node's children. */
export function replace(node: Node, ...children: Child[]): void {
  while (node.firstChild) {
    node.removeChild(node.firstChild);
  }
  append(node, ...children);
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** A new SVG element with attributes. */
export function svg(
  tag: string,
  attrs: Record<string, string | number> = {},
  ...children: Child[]
): SVGElement {
  const node: SVGElement = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, String(value));
  }
  append(node, ...children);
  return node;
}
