// The activity timeline: newest first, live (the `timeline` stream), filtered by event
// type, entity and actor (kept in the address, so a filtered view can be shared), and
// older entries loaded as the list is scrolled to its end.

import { h, fill, ago, comparePositions, drawerLink } from "./dom.js";
import * as api from "./api.js";
import * as live from "./live.js";
import { toast } from "./ui.js";

const ENTITY_TYPES = ["ticket", "task", "spec", "agent", "project", "organization"];

export function mountTimeline(container, context) {
  const query = new URLSearchParams(location.search);
  const filters = {
    event_type: query.get("event_type") || "",
    entity_type: query.get("entity_type") || "",
    actor: query.get("actor") || "",
  };
  const seenTypes = new Set();
  const list = h("ol", { class: "timeline", "aria-label": "Timeline" });
  const sentinel = h("div", { class: "sentinel muted" });
  const typeOptions = h("datalist", { id: "event-types" });
  const typeInput = h("input", { name: "event_type", list: "event-types", placeholder: "Event type", value: filters.event_type, "aria-label": "Event type" });
  const entityInput = h("select", { name: "entity_type", "aria-label": "Entity" },
    h("option", { value: "" }, "Any entity"),
    ENTITY_TYPES.map((t) => h("option", { value: t, selected: t === filters.entity_type }, t)));
  const actorInput = h("input", { name: "actor", placeholder: "Actor (user:…, system:worker)", value: filters.actor, "aria-label": "Actor" });
  const form = h("form", { class: "filters", onsubmit: apply, onchange: apply },
    typeInput, typeOptions, entityInput, actorInput,
    h("button", { type: "button", class: "ghost", onclick: clear }, "Clear"));
  fill(container, h("div", { class: "toolbar" }, h("h1", {}, "Timeline"), form), list, sentinel);

  let entries = [];
  let nextBefore = null;
  // The generation whose page is being loaded: a reload starts its own load even while
  // an older one is in flight (whose answer it then drops), instead of waiting on it.
  let loading = null;
  let generation = 0;

  function apply(event) {
    event?.preventDefault();
    filters.event_type = typeInput.value.trim();
    filters.entity_type = entityInput.value;
    filters.actor = actorInput.value.trim();
    const params = new URLSearchParams(location.search);
    for (const [name, value] of Object.entries(filters)) {
      if (value) params.set(name, value);
      else params.delete(name);
    }
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
    reload();
  }

  function clear() {
    typeInput.value = "";
    entityInput.value = "";
    actorInput.value = "";
    apply();
  }

  function matches(entry) {
    return (!filters.event_type || entry.event_type === filters.event_type)
      && (!filters.entity_type || entry.entity_type === filters.entity_type)
      && (!filters.actor || entry.actor === filters.actor);
  }

  function pagePath(before) {
    const params = new URLSearchParams({ project_id: context.project.id, limit: "50" });
    for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
    if (before) params.set("before", before);
    return `/api/v1/timeline?${params}`;
  }

  /** The first page again; with a snapshot's `newest` entries merged in, which the page
   * (read from the read model, a moment behind the stream) may not hold yet — the deltas
   * that follow come after them, so they would be missing until a reload. */
  async function reload(newest = []) {
    generation += 1;
    const mine = generation;
    entries = [];
    nextBefore = null;
    fill(list);
    await loadOlder(true);
    if (mine !== generation) return;
    const missing = newest.filter((entry) => matches(entry) && !entries.some((e) => e.cursor === entry.cursor));
    if (!missing.length) return;
    entries = [...entries, ...missing].sort((a, b) => comparePositions(b.cursor, a.cursor));
    fill(list, ...entries.map(entryElement));
    if (sentinel.textContent === "Nothing yet.") sentinel.textContent = "";
  }

  async function loadOlder(first = false) {
    if (loading === generation || (!first && !nextBefore)) return;
    const mine = generation;
    loading = mine;
    sentinel.textContent = "Loading…";
    try {
      const page = await api.get(pagePath(first ? null : nextBefore));
      if (mine !== generation) return;
      nextBefore = page.next_before || null;
      for (const entry of page.entries) {
        if (entries.some((e) => e.cursor === entry.cursor)) continue;
        entries.push(entry);
        list.append(entryElement(entry));
      }
      sentinel.textContent = nextBefore ? "" : entries.length ? "The beginning." : "Nothing yet.";
    } catch (problem) {
      toast(problem.message, "error");
    } finally {
      if (loading === mine) loading = null;
    }
  }

  function entryElement(entry) {
    if (!seenTypes.has(entry.event_type)) {
      seenTypes.add(entry.event_type);
      typeOptions.append(h("option", { value: entry.event_type }));
    }
    const link = entry.entity_type === "task"
      ? h("a", { href: drawerLink("task", entry.entity_id) }, entry.summary)
      : entry.entity_type === "ticket"
        ? h("a", { href: drawerLink("ticket", entry.entity_id) }, entry.summary)
        : h("span", {}, entry.summary);
    return h("li", { class: "entry", "data-position": entry.cursor, "data-event-type": entry.event_type },
      h("span", { class: "event-type" }, entry.event_type),
      link,
      h("span", { class: "muted actor" }, entry.actor || ""),
      h("time", { datetime: entry.occurred_at, title: new Date(entry.occurred_at).toLocaleString() }, ago(entry.occurred_at)));
  }

  const observer = new IntersectionObserver((seen) => {
    if (seen.some((s) => s.isIntersecting)) loadOlder();
  });
  observer.observe(sentinel);

  const stop = live.subscribe(`timeline:${context.project.id}`, { stream: "timeline", project_id: context.project.id }, {
    // The first page comes over HTTP with the filters, the snapshot's newest entries
    // merged in; the stream brings what is new.
    snapshot: (message) => reload(message.data?.entries || []),
    delta: (message) => {
      const entry = message.change?.entry;
      if (!entry || !matches(entry) || entries.some((e) => e.cursor === entry.cursor)) return;
      entries.unshift(entry);
      list.prepend(entryElement(entry));
    },
  });

  return () => {
    stop();
    observer.disconnect();
  };
}
