// The dependency graph: tasks laid out as a DAG from left (no dependencies) to right
// (each task one layer past its deepest dependency), edges drawn from a dependency to
// the task waiting on it, tickets listed beside it. Nodes change colour live as tasks
// run; a task whose dependencies are unfinished is marked blocked. Click a node to open
// it. The layout is computed here (longest-path layers, one barycentre pass to untangle
// the order): no library needed for the graphs a project has.

import { h, svg, fill, label, drawerLink } from "./dom.js";
import * as api from "./api.js";
import * as live from "./live.js";
import { asOfControl, toast } from "./ui.js";

const NODE_WIDTH = 190;
const NODE_HEIGHT = 46;
const LAYER_GAP = 70;
const ROW_GAP = 16;

export function mountGraph(container, context) {
  const graph = { nodes: new Map(), edges: [], position: 0 };
  const canvas = h("div", { class: "graph-canvas" });
  const tickets = h("ul", { class: "graph-tickets", "aria-label": "Tickets" });
  const summary = h("span", { class: "muted" });
  let pastRequest = 0;
  const asOf = asOfControl(async (position) => {
    const request = ++pastRequest;
    if (position === null) return draw(graph.nodes, graph.edges, false);
    try {
      const view = await api.get(`/api/v1/graph/dependency-graph/project/${context.project.id}?as_of=${position}`);
      if (request !== pastRequest) return;
      draw(new Map(view.nodes.map((n) => [n.id, n])), view.edges, true);
    } catch (problem) {
      toast(problem.message, "error");
    }
  });
  fill(
    container,
    h("div", { class: "toolbar" }, h("h1", {}, "Dependency graph"), summary, h("span", { class: "spacer" }), asOf.element),
    h("div", { class: "graph" }, tickets, canvas),
  );

  const stop = live.subscribe(`graph:${context.project.id}`, { stream: "graph", project_id: context.project.id }, {
    snapshot: (message) => {
      graph.nodes = new Map(message.data.nodes.map((n) => [n.id, n]));
      graph.edges = message.data.edges;
      advance(message.data.position);
    },
    delta: (message) => {
      const change = message.change || {};
      let newest = 0;
      for (const node of change.nodes || []) {
        graph.nodes.set(node.id, node);
        newest = Math.max(newest, node.last_position || 0);
      }
      if (change.edges_of) {
        const task = change.edges_of.task_id;
        graph.edges = graph.edges.filter((e) => e.from !== task)
          .concat(change.edges_of.depends_on.map((to) => ({ from: task, to })));
      }
      advance(newest);
    },
    error: (message) => toast(message.detail, "error"),
  });

  function advance(position) {
    graph.position = Math.max(graph.position, position || 0);
    asOf.setLatest(graph.position);
    if (!asOf.isActive()) draw(graph.nodes, graph.edges, false);
  }

  function open(node) {
    context.navigate(drawerLink(node.kind, node.id));
  }

  function draw(nodes, edges, past) {
    const tasks = [...nodes.values()].filter((n) => n.kind === "task");
    const ticketNodes = [...nodes.values()].filter((n) => n.kind === "ticket");
    summary.textContent = `${tasks.length} tasks, ${edges.length} dependencies${past ? " (past)" : ""}`;
    fill(tickets, ticketNodes.sort((a, b) => a.title.localeCompare(b.title)).map((ticket) =>
      h("li", {},
        h("button", { class: "ghost ticket-node", "data-node-id": ticket.id, "data-status": ticket.status, onclick: () => open(ticket) },
          h("span", { class: "dot", "data-status": ticket.status }), ticket.title, " ",
          h("span", { class: "muted" }, label(ticket.status))))));
    const titles = new Map(ticketNodes.map((t) => [t.id, t.title]));
    const { positions, width, height } = layout(tasks, edges);
    const drawnEdges = edges.filter((e) => positions.has(e.from) && positions.has(e.to)).map((edge) => {
      const from = positions.get(edge.to);
      const to = positions.get(edge.from);
      const x1 = from.x + NODE_WIDTH;
      const y1 = from.y + NODE_HEIGHT / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_HEIGHT / 2;
      const bend = (x2 - x1) / 2;
      return svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" });
    });
    const drawnNodes = tasks.map((task) => {
      const at = positions.get(task.id);
      const blocked = (task.unfinished_dependencies || 0) > 0 && !["completed", "cancelled", "failed"].includes(task.status);
      return svg("g", {
        class: `node${blocked ? " blocked" : ""}`,
        transform: `translate(${at.x},${at.y})`,
        tabindex: 0,
        role: "button",
        "aria-label": `${task.title}: ${label(task.status)}${blocked ? ", waiting on dependencies" : ""}`,
        "data-node-id": task.id,
        "data-status": task.status,
        onclick: () => open(task),
        onkeydown: (event) => event.key === "Enter" && open(task),
      },
      svg("rect", { width: NODE_WIDTH, height: NODE_HEIGHT, rx: 6 }),
      svg("text", { x: 10, y: 19, class: "node-title" }, clip(task.title, 24)),
      svg("text", { x: 10, y: 36, class: "node-meta" }, `${blocked ? "⏸ " : ""}${label(task.status)} · ${clip(titles.get(task.ticket_id) || "", 14)}`));
    });
    fill(canvas, tasks.length
      ? svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Task dependency graph" },
          svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
            svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))),
          drawnEdges, drawnNodes)
      : h("p", { class: "muted empty" }, "No tasks yet."));
  }

  return stop;
}

function clip(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

/** Longest-path layering (a task sits one layer right of its deepest dependency), then
 *  each layer ordered by the mean row of its dependencies. Cycles cannot occur (the
 *  server refuses them); a dependency outside the graph counts as none. */
export function layout(tasks, edges) {
  const ids = new Set(tasks.map((t) => t.id));
  const dependencies = new Map(tasks.map((t) => [t.id, []]));
  for (const edge of edges) {
    if (ids.has(edge.from) && ids.has(edge.to)) dependencies.get(edge.from).push(edge.to);
  }
  const layerOf = new Map();
  const visiting = new Set();
  const depth = (id) => {
    if (layerOf.has(id)) return layerOf.get(id);
    if (visiting.has(id)) return 0;
    visiting.add(id);
    const layer = dependencies.get(id).reduce((deepest, dep) => Math.max(deepest, depth(dep) + 1), 0);
    visiting.delete(id);
    layerOf.set(id, layer);
    return layer;
  };
  const layers = [];
  for (const task of [...tasks].sort((a, b) => a.title.localeCompare(b.title))) {
    const layer = depth(task.id);
    (layers[layer] ||= []).push(task.id);
  }
  const row = new Map();
  layers.forEach((ids, layer) => {
    if (layer > 0) {
      const weight = (id) => {
        const deps = dependencies.get(id);
        return deps.length ? deps.reduce((sum, dep) => sum + row.get(dep), 0) / deps.length : 0;
      };
      ids.sort((a, b) => weight(a) - weight(b));
    }
    ids.forEach((id, index) => row.set(id, index));
  });
  const positions = new Map();
  for (const [id, layer] of layerOf) {
    positions.set(id, { x: 10 + layer * (NODE_WIDTH + LAYER_GAP), y: 10 + row.get(id) * (NODE_HEIGHT + ROW_GAP) });
  }
  const tallest = Math.max(1, ...layers.map((l) => l?.length || 0));
  return {
    positions,
    width: 20 + layers.length * (NODE_WIDTH + LAYER_GAP),
    height: 20 + tallest * (NODE_HEIGHT + ROW_GAP),
  };
}
