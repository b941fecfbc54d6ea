// The spec workspace: a spec switcher and the tabs Requirements | Design | Plan |
// Execution. Requirements are written as EARS (WHEN condition, THE SYSTEM SHALL action)
// with acceptance criteria; each phase has its approval gate; the plan is edited as the
// JSON document `PUT /specs/{id}/plan` takes (the server names the field of any mistake);
// execution shows the plan's tickets and tasks as they run. Export as markdown.

import { h, fill, label, drawerLink } from "./dom.js";
import * as api from "./api.js";
import * as live from "./live.js";
import { toast } from "./ui.js";

const TABS = ["requirements", "design", "plan", "execution"];

export function mountSpecs(container, context) {
  const [specId, tab = "requirements"] = context.rest;
  const base = `/p/${context.project.id}/specs`;
  const switcher = h("select", { "aria-label": "Spec", onchange: (e) => context.navigate(e.target.value ? `${base}/${e.target.value}/${tab}` : base) });
  const body = h("div", { class: "spec-body" });
  fill(container, h("div", { class: "toolbar" }, h("h1", {}, "Specs"), switcher, h("span", { class: "spacer" })), body);
  const stops = [];
  // The screen may be left while a read is on its way: what starts after that (a tab's
  // subscription and timers) is stopped at once instead of running on unseen.
  let left = false;
  const keep = (stop) => (left ? stop() : stops.push(stop));

  (async () => {
    const specs = await api.get(`/api/v1/specs?project_id=${context.project.id}&limit=100`);
    fill(switcher, h("option", { value: "" }, specs.items.length ? "Choose a spec…" : "No specs yet"),
      specs.items.map((s) => h("option", { value: s.id, selected: s.id === specId }, `${s.title} (${label(s.phase)})`)));
    if (!specId) return fill(body, newSpecForm());
    await showSpec();
  })().catch((problem) => fill(body, h("p", { class: "form-error" }, problem.message)));

  function newSpecForm() {
    const error = h("p", { class: "form-error", role: "alert", hidden: true });
    const form = h("form", { class: "stacked", onsubmit: async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      try {
        const created = await api.send("/api/v1/specs", { project_id: context.project.id, title: data.get("title"), description: data.get("description") });
        context.navigate(`${base}/${created.id}/requirements`);
      } catch (problem) {
        error.textContent = problem.message;
        error.hidden = false;
      }
    } },
    h("h2", {}, "New spec"),
    h("label", {}, "Title", h("input", { name: "title", required: true, maxlength: 200 })),
    h("label", {}, "Description", h("textarea", { name: "description", rows: 4 })),
    error,
    h("button", { class: "primary" }, "Create spec"));
    return form;
  }

  async function showSpec() {
    const spec = (await api.get(`/api/v1/specs/${specId}`)).state;
    const tabs = h("nav", { class: "tabs", role: "tablist" }, TABS.map((name) =>
      h("a", { href: `${base}/${specId}/${name}`, role: "tab", "aria-selected": String(name === tab) }, label(name))));
    const panel = h("section", { class: "tab-panel", role: "tabpanel" });
    fill(body,
      h("div", { class: "spec-header" },
        h("h2", {}, spec.title), h("span", { class: "badge", "data-status": spec.phase }, label(spec.phase)),
        h("span", { class: "spacer" }),
        h("button", { class: "ghost", onclick: () => exportMarkdown(spec) }, "Export markdown")),
      spec.description ? h("p", { class: "description" }, spec.description) : null,
      tabs, panel);
    const render = { requirements, design, plan, execution }[tab] || requirements;
    render(panel, spec);
  }

  async function act(path, body, method = "POST") {
    try {
      await api.request(method, path, body);
      await showSpec();
      return true;
    } catch (problem) {
      toast(problem.field ? `${problem.field}: ${problem.message}` : problem.message, "error");
      return false;
    }
  }

  function gate(spec, phase, path, text) {
    return spec.phase === phase ? h("button", { class: "primary", onclick: () => act(`/api/v1/specs/${specId}/${path}`, {}) }, text) : null;
  }

  function requirements(panel, spec) {
    // A new spec is a draft; its first requirement moves it to the requirements phase.
    const editable = spec.phase === "draft" || spec.phase === "requirements";
    // The form adds a requirement, or changes the one whose "Edit" was pressed.
    let editing = null;
    const heading = h("h3", {}, "Add a requirement");
    const submit = h("button", { class: "primary" }, "Add requirement");
    const form = h("form", { class: "stacked requirement-form", onsubmit: async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const written = {
        condition: data.get("condition"),
        action: data.get("action"),
        acceptance_criteria: String(data.get("criteria")).split("\n").map((l) => l.trim()).filter(Boolean),
      };
      const ok = editing
        ? await act(`/api/v1/specs/${specId}/requirements/${encodeURIComponent(editing)}`, written, "PUT")
        : await act(`/api/v1/specs/${specId}/requirements`, { id: data.get("id"), ...written });
      if (ok) form.reset();
    } },
    heading,
    h("label", {}, "Id", h("input", { name: "id", required: true, placeholder: "REQ-AUTH-001", pattern: "REQ(-[A-Z0-9]+)+" })),
    h("label", {}, "WHEN", h("input", { name: "condition", required: true, placeholder: "a user submits valid credentials" })),
    h("label", {}, "THE SYSTEM SHALL", h("input", { name: "action", required: true, placeholder: "issue a session token" })),
    h("label", {}, "Acceptance criteria (one per line)", h("textarea", { name: "criteria", rows: 3 })),
    submit);
    const edit = (requirement) => {
      editing = requirement.id;
      heading.textContent = `Change ${requirement.id}`;
      submit.textContent = "Save requirement";
      form.elements.id.value = requirement.id;
      form.elements.id.readOnly = true;
      form.elements.condition.value = requirement.condition;
      form.elements.action.value = requirement.action;
      form.elements.criteria.value = requirement.acceptance_criteria.join("\n");
      form.elements.condition.focus();
    };
    fill(panel,
      spec.requirements.length
        ? h("ol", { class: "requirements" }, spec.requirements.map((r) => h("li", { "data-requirement-id": r.id },
            h("strong", {}, r.id), " WHEN ", r.condition, ", THE SYSTEM SHALL ", r.action,
            r.acceptance_criteria.length ? h("ul", {}, r.acceptance_criteria.map((c) => h("li", {}, h("input", { type: "checkbox", disabled: true, "aria-label": "criterion" }), " ", c))) : null,
            editable ? h("button", { class: "ghost", onclick: () => edit(r) }, "Edit") : null,
            editable ? h("button", { class: "ghost", onclick: () => act(`/api/v1/specs/${specId}/requirements/${encodeURIComponent(r.id)}`, undefined, "DELETE") }, "Remove") : null)))
        : h("p", { class: "muted" }, "No requirements yet."),
      editable ? form : h("p", { class: "muted" }, "Requirements were approved."),
      gate(spec, "requirements", "approve-requirements", "Approve requirements"));
  }

  function design(panel, spec) {
    const editable = spec.phase === "design";
    const value = spec.design || { architecture: "", data_model: "", api_spec: "" };
    const form = h("form", { class: "stacked", onsubmit: (event) => {
      event.preventDefault();
      const data = new FormData(form);
      act(`/api/v1/specs/${specId}/design`, { architecture: data.get("architecture"), data_model: data.get("data_model"), api_spec: data.get("api_spec") }, "PUT");
    } },
    ["architecture", "data_model", "api_spec"].map((name) =>
      h("label", {}, label(name), h("textarea", { name, rows: 6, readonly: !editable }, value[name]))),
    editable ? h("button", { class: "primary" }, "Save design") : null);
    fill(panel, form, gate(spec, "design", "approve-design", "Approve design"));
  }

  function plan(panel, spec) {
    const editable = spec.phase === "tasks";
    const text = h("textarea", { class: "code", rows: 18, readonly: !editable, "aria-label": "Plan (JSON)" },
      JSON.stringify(spec.plan || { tickets: [] }, null, 2));
    fill(panel,
      spec.plan ? h("ul", { class: "plan" }, spec.plan.tickets.map((t) => h("li", {}, h("strong", {}, t.title), ` (${t.tasks.length} tasks)`))) : null,
      h("form", { class: "stacked", onsubmit: (event) => {
        event.preventDefault();
        let parsed;
        try {
          parsed = JSON.parse(text.value);
        } catch (error) {
          return toast(`The plan is not JSON: ${error.message}`, "error");
        }
        act(`/api/v1/specs/${specId}/plan`, parsed, "PUT");
      } }, text, editable ? h("button", { class: "primary" }, "Save plan") : null),
      gate(spec, "tasks", "approve-plan", "Approve plan"));
  }

  function execution(panel) {
    if (left) return;
    const list = h("div", { class: "execution" }, h("p", { class: "muted" }, "Loading…"));
    fill(panel, list);
    let pending = null;
    const load = async () => {
      const tickets = await api.get(`/api/v1/tickets?spec_id=${specId}&limit=100`);
      const tasks = await Promise.all(tickets.items.map((t) => api.get(`/api/v1/tasks?ticket_id=${t.id}&limit=100`)));
      fill(list, tickets.items.length ? tickets.items.map((ticket, i) => h("article", { class: "execution-ticket", "data-ticket-id": ticket.id },
        h("h3", {}, ticket.title, " ", h("span", { class: "badge", "data-status": ticket.status }, label(ticket.status))),
        h("ul", {}, tasks[i].items.map((task) => h("li", {},
          h("a", { href: drawerLink("task", task.id) }, task.title), " ",
          h("span", { class: "badge", "data-status": task.status }, label(task.status)))))))
        : h("p", { class: "muted" }, "The plan has not created tickets yet (approve it first)."));
    };
    // Read again (at most twice a second) when a ticket or task of the project changes,
    // and again 2 and 5 s after the last change or the first read: the lists come from a
    // read model, which may not have applied a change yet when its event arrives here
    // (under load it lags by more than half a second; the plan's creations may also have
    // come just before this tab subscribed), and no later event would ask again.
    let trailing = [];
    const reload = () => load().catch(() => {});
    const settle = () => {
      trailing.forEach(clearTimeout);
      trailing = [2000, 5000].map((delay) => setTimeout(reload, delay));
    };
    keep(() => {
      trailing.forEach(clearTimeout);
      clearTimeout(pending);
    });
    load().catch((problem) => toast(problem.message, "error"));
    settle();
    keep(live.subscribe(`spec-execution:${specId}`, { stream: "events", project_id: context.project.id, entity_types: ["ticket", "task"] }, {
      delta: () => {
        settle();
        if (pending) return;
        pending = setTimeout(() => {
          pending = null;
          reload();
        }, 500);
      },
    }));
  }

  async function exportMarkdown(spec) {
    try {
      const text = await api.get(`/api/v1/specs/${specId}/export?format=markdown`);
      const link = h("a", { href: URL.createObjectURL(new Blob([text], { type: "text/markdown" })), download: `${spec.title.replace(/[^\w.-]+/g, "-")}.md` });
      link.click();
      URL.revokeObjectURL(link.href);
    } catch (problem) {
      toast(problem.message, "error");
    }
  }

  return () => {
    left = true;
    stops.forEach((stop) => stop());
  };
}
