// Dialogs and notices shared by the screens.

import { h } from "./dom.js";

/** A modal question; resolves true when confirmed. */
export function confirmDialog({ title, message, confirm, cancel = "Cancel" }) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-label": title },
      h("h2", {}, title),
      h("p", { class: "dialog-message" }, message),
      h(
        "form",
        { method: "dialog", class: "dialog-actions" },
        h("button", { value: "cancel", class: "ghost" }, cancel),
        h("button", { value: "confirm", class: "primary" }, confirm),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// The notices' live region, in the page from the start: a region added together with its
// first notice is not announced by every screen reader.
const toasts = h("div", { class: "toasts", role: "status", "aria-live": "polite" });
document.body.append(toasts);

/** A short notice in the corner; errors stay until dismissed. */
export function toast(message, kind = "info") {
  const item = h("div", { class: `toast toast-${kind}` }, h("span", {}, message), h("button", { class: "ghost", "aria-label": "Dismiss", onclick: () => item.remove() }, "×"));
  toasts.append(item);
  if (kind !== "error") setTimeout(() => item.remove(), 4000);
}

/**
 * The "as of" control of the board and the graph: a toggle and a slider over the log's
 * positions. `onChange(position)` when a past position is picked, `onChange(null)` when
 * the control is turned off (back to live).
 */
export function asOfControl(onChange) {
  let latest = 0;
  let active = false;
  const slider = h("input", { type: "range", min: 1, max: 1, value: 1, "aria-label": "As of event", hidden: true });
  const caption = h("span", { class: "muted as-of-label" });
  const toggle = h("button", { class: "ghost", "aria-pressed": "false", onclick: flip }, "As of…");
  slider.addEventListener("change", () => pick(Number(slider.value)));

  function flip() {
    active = !active;
    toggle.setAttribute("aria-pressed", String(active));
    slider.hidden = !active;
    if (!active) {
      caption.textContent = "";
      onChange(null);
      return;
    }
    slider.max = String(Math.max(1, latest));
    slider.value = slider.max;
    pick(Number(slider.value));
  }

  function pick(position) {
    caption.textContent = `as of event ${position}`;
    onChange(position);
  }

  return {
    element: h("span", { class: "as-of" }, caption, slider, toggle),
    /** The newest position the live view has reached. */
    setLatest(position) {
      latest = Math.max(latest, position || 0);
      if (!active) slider.max = String(Math.max(1, latest));
    },
    isActive: () => active,
  };
}
