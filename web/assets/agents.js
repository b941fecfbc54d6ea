// The agents serving the project (its own and its organization's): status, current task,
// heartbeat age and missed heartbeats, the Guardian's anomaly score and the agent's open
// alerts, and the project's supervision findings — open alerts, stalled
// tasks and the Conductor's coherence. Live from the `agents` stream; an agent's health
// is read again whenever the stream reports a change of it.

import { h, fill, label, ago, drawerLink } from "./dom.js";
import * as api from "./api.js";
import * as live from "./live.js";
import { toast } from "./ui.js";

export function mountAgents(container, context) {
  const agents = new Map();
  const health = new Map();
  const table = h("tbody");
  const findings = h("section", { class: "findings", "aria-label": "Supervision" });
  fill(
    container,
    h("div", { class: "toolbar" }, h("h1", {}, "Agents"), h("span", { class: "spacer" }),
      h("button", { class: "ghost", onclick: () => refreshAll() }, "Refresh health")),
    h("table", { class: "agents" },
      h("thead", {}, h("tr", {}, ["Agent", "Type", "Status", "Current task", "Heartbeat", "Anomaly", "Alerts", "Capabilities"].map((c) => h("th", { scope: "col" }, c)))),
      table),
    findings,
  );

  async function readHealth(agentId) {
    try {
      health.set(agentId, await api.get(`/api/v1/agents/${agentId}/health`));
    } catch (problem) {
      if (problem.status !== 404) toast(problem.message, "error");
    }
  }

  async function readFindings() {
    try {
      const overview = await api.get(`/api/v1/monitoring/overview?project_id=${context.project.id}`);
      fill(findings,
        h("h2", {}, "Supervision"),
        h("p", {}, `Coherence ${Math.round((overview.coherence?.score ?? 1) * 100)}% (${label(overview.coherence?.status ?? "unknown")})`),
        overview.alerts.length
          ? h("ul", { class: "alerts" }, overview.alerts.map((alert) => h("li", { class: "alert" },
              h("strong", {}, label(alert.kind)), " ", alert.reason, " ",
              h("span", { class: "muted" }, ago(alert.raised_at)))))
          : h("p", { class: "muted" }, "No open alerts."),
        overview.stalled_tasks.length
          ? [h("h3", {}, "Stalled tasks"), h("ul", {}, overview.stalled_tasks.map((row) =>
              h("li", {}, h("a", { href: drawerLink("task", row.task_id) }, `Task ${row.task_id.slice(0, 8)}`), ` idle since ${ago(row.idle_since)}`)))]
          : null);
    } catch (problem) {
      fill(findings, h("p", { class: "muted" }, `Supervision findings unavailable: ${problem.message}`));
    }
  }

  async function refreshAll() {
    await Promise.all([...agents.keys()].map(readHealth));
    draw();
    readFindings();
  }

  function statusOf(agent) {
    const known = health.get(agent.agent_id);
    if (known?.stalled_tasks?.length) return "stuck";
    return agent.status;
  }

  function draw() {
    const rows = [...agents.values()].sort((a, b) => a.name.localeCompare(b.name));
    fill(table, rows.length ? rows.map((agent) => {
      const known = health.get(agent.agent_id);
      const status = statusOf(agent);
      return h("tr", { "data-agent-id": agent.agent_id, "data-status": status },
        h("td", {}, agent.name),
        h("td", {}, agent.agent_type),
        h("td", {}, h("span", { class: "badge", "data-status": status, title: known?.status_reason || "" }, label(status))),
        h("td", {}, agent.current_task_id ? h("a", { href: drawerLink("task", agent.current_task_id) }, "open task") : "—"),
        h("td", { class: known?.warning ? "warning" : "" },
          known?.last_heartbeat_at
            ? h("time", { datetime: known.last_heartbeat_at, "data-heartbeat": known.last_heartbeat_at }, ago(known.last_heartbeat_at))
            : "—",
          known?.missed_heartbeats ? ` (${known.missed_heartbeats} missed)` : ""),
        h("td", { class: (known?.anomaly?.score ?? 0) >= 0.8 ? "warning" : "", title: "The Guardian's latest anomaly score (0 healthy, ≥ 0.8 three times in a row: quarantine)" },
          known?.anomaly ? known.anomaly.score.toFixed(2) : "—"),
        h("td", {}, known?.alerts?.length
          ? h("span", { class: "badge", "data-status": "failed", title: known.alerts.map((a) => a.reason).join("\n") }, String(known.alerts.length))
          : "—"),
        h("td", { class: "muted" }, agent.capabilities.join(", ")));
    }) : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No agents serve this project yet.")));
  }

  // Heartbeat ages grow between changes without asking the server.
  const ticker = setInterval(() => {
    for (const time of table.querySelectorAll("time[data-heartbeat]")) time.textContent = ago(time.dataset.heartbeat);
  }, 1000);

  const stop = live.subscribe(`agents:${context.project.id}`, { stream: "agents", project_id: context.project.id }, {
    snapshot: (message) => {
      agents.clear();
      for (const agent of message.data.agents) agents.set(agent.agent_id, agent);
      refreshAll();
    },
    delta: async (message) => {
      const changed = message.change?.agents || [];
      for (const agent of changed) agents.set(agent.agent_id, agent);
      draw();
      await Promise.all(changed.map((agent) => readHealth(agent.agent_id)));
      draw();
      readFindings();
    },
    error: (message) => toast(message.detail, "error"),
  });

  return () => {
    stop();
    clearInterval(ticker);
  };
}
