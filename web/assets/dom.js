// Building the page from data without HTML strings: text is always text, never markup.

/** `h("div", {class: "card", onclick: f}, child, …)` → an element. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

/** An SVG element, as `h` builds HTML ones. */
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      for (const [key, data] of Object.entries(value)) element.dataset[key] = data;
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside `element` with `children`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** "3 s ago", "5 min ago", … for a past instant. */
export function ago(instant, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - new Date(instant).getTime()) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** `building_done` → "Building done". */
export function label(wireName) {
  const text = String(wireName).replaceAll("_", " ").replaceAll("-", " ").toLowerCase();
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Compares two stream positions `"<transaction>-<global>"` as pairs of integers. */
export function comparePositions(a, b) {
  const [ta, ga] = String(a).split("-").map(BigInt);
  const [tb, gb] = String(b).split("-").map(BigInt);
  if (ta !== tb) return ta < tb ? -1 : 1;
  if (ga !== gb) return ga < gb ? -1 : 1;
  return 0;
}

/** The address of this screen, its query kept (filters, say), with the drawer open on
 * `kind` (`task` or `ticket`) `id`. */
export function drawerLink(kind, id) {
  const query = new URLSearchParams(location.search);
  query.delete("task");
  query.delete("ticket");
  query.set(kind, id);
  return `${location.pathname}?${query}`;
}
