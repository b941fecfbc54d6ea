// The command palette (Ctrl+K / Cmd+K): jump to a screen, a project, or — through
// `GET /api/v1/search` as you type — a spec, ticket or task. ↑/↓ choose, Enter goes,
// Escape closes.

import { h, fill, label } from "./dom.js";
import * as api from "./api.js";

let open = null;

export function openPalette(context) {
  if (open) return open.input.focus();
  const input = h("input", { type: "search", placeholder: "Jump to a screen, project, spec, ticket or task…", "aria-label": "Search", autocomplete: "off" });
  const list = h("ul", { class: "palette-results", role: "listbox" });
  const dialog = h("dialog", { class: "palette", "aria-label": "Command palette" }, input, list);
  let items = [];
  let selected = 0;
  let searchId = 0;

  const local = () => {
    const project = context.project;
    return [
      ...(project ? context.screens.map((s) => ({ title: `${s.title} — ${project.name}`, kind: "screen", go: `/p/${project.id}/${s.name}` })) : []),
      ...context.projects.map((p) => ({ title: p.name, kind: "project", go: `/p/${p.id}/board` })),
    ];
  };

  function draw() {
    selected = Math.min(selected, Math.max(0, items.length - 1));
    fill(list, items.length ? items.map((item, index) => h("li", {
      role: "option",
      "aria-selected": String(index === selected),
      "data-kind": item.kind,
      onclick: () => go(item),
      onmousemove: () => { if (selected !== index) { selected = index; draw(); } },
    }, h("span", { class: "kind" }, label(item.kind)), " ", item.title, item.status ? h("span", { class: "muted" }, ` · ${label(item.status)}`) : null))
      : h("li", { class: "muted" }, "Nothing matches."));
  }

  async function search() {
    const text = input.value.trim().toLowerCase();
    const mine = ++searchId;
    const matching = local().filter((item) => item.title.toLowerCase().includes(text));
    items = matching;
    draw();
    if (!text) return;
    try {
      const scope = context.project ? `&project_id=${context.project.id}` : "";
      const found = await api.get(`/api/v1/search?q=${encodeURIComponent(text)}&limit=20${scope}`);
      if (mine !== searchId) return;
      items = matching.concat(found.results.map((r) => ({ ...r, go: target(r) })));
      draw();
    } catch {
      // The screens and projects still match; a failed search only adds nothing.
    }
  }

  function target(result) {
    const project = result.project_id || context.project?.id;
    if (result.kind === "spec") return `/p/${project}/specs/${result.id}/requirements`;
    return `/p/${project}/board?${result.kind}=${result.id}`;
  }

  function go(item) {
    dialog.close();
    context.navigate(item.go);
  }

  input.addEventListener("input", search);
  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") selected = Math.min(items.length - 1, selected + 1);
    else if (event.key === "ArrowUp") selected = Math.max(0, selected - 1);
    else if (event.key === "Enter" && items[selected]) return go(items[selected]);
    else return;
    event.preventDefault();
    draw();
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    open = null;
  });
  document.body.append(dialog);
  open = { input };
  dialog.showModal();
  search();
}
