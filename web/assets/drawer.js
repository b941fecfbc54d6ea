// The drawer beside any screen: a ticket (its tasks) or a task — details, the live
// transcript, result or error, retries, and its history with a replay slider that shows
// the task as it was right after each of its events (`/history?as_of=`).

import { h, fill, label, ago, drawerLink } from "./dom.js";
import * as api from "./api.js";
import * as live from "./live.js";
import { toast } from "./ui.js";

let current = null;

export function closeDrawer() {
  if (!current) return;
  current.stop();
  current.element.remove();
  current = null;
}

/** Shows ticket `ticketId` or task `taskId` (one of them), replacing what was shown. */
export function openDrawer({ taskId, ticketId }, context) {
  const key = taskId ? `task:${taskId}` : `ticket:${ticketId}`;
  if (current?.key === key) return;
  closeDrawer();
  const body = h("div", { class: "drawer-body" }, h("p", { class: "muted" }, "Loading…"));
  const element = h(
    "aside",
    { class: "drawer", "aria-label": taskId ? "Task" : "Ticket", tabindex: -1, onkeydown: (e) => e.key === "Escape" && context.close() },
    h("button", { class: "ghost drawer-close", "aria-label": "Close", onclick: () => context.close() }, "×"),
    body,
  );
  document.body.append(element);
  element.focus();
  const stops = [];
  current = { key, element, stop: () => stops.forEach((stop) => stop()) };
  const shown = current;
  // Closed (or replaced) meanwhile: an answer that comes late changes nothing, and no
  // subscription is made after the drawer's have been stopped.
  const open = () => current === shown;
  const render = taskId ? renderTask(body, taskId, context, stops, open) : renderTicket(body, ticketId);
  render.catch((problem) => {
    if (current === shown) fill(body, h("p", { class: "form-error" }, problem.message));
  });
}

async function renderTicket(body, ticketId) {
  const [ticket, tasks] = await Promise.all([
    api.get(`/api/v1/tickets/${ticketId}`),
    api.get(`/api/v1/tasks?ticket_id=${ticketId}&limit=100`),
  ]);
  const state = ticket.state;
  fill(
    body,
    h("p", { class: "eyebrow" }, "Ticket"),
    h("h2", {}, state.title),
    h("dl", { class: "facts" },
      fact("Status", h("span", { class: "badge", "data-status": state.status }, label(state.status))),
      fact("Priority", label(state.priority)),
      fact("Phase", label(String(state.phase).replace(/^PHASE_/, ""))),
      state.blocked_reason ? fact("Blocked", label(state.blocked_reason)) : null),
    state.description ? h("p", { class: "description" }, state.description) : null,
    h("h3", {}, `Tasks (${tasks.items.length})`),
    tasks.items.length
      ? h("ul", { class: "task-list" }, tasks.items.map((task) =>
          h("li", {},
            h("a", { href: drawerLink("task", task.id), "data-task-id": task.id }, task.title),
            " ",
            h("span", { class: "badge", "data-status": task.status }, label(task.status)))))
      : h("p", { class: "muted" }, "No tasks yet."),
  );
}

function fact(name, value) {
  return [h("dt", {}, name), h("dd", {}, value)];
}

async function renderTask(body, taskId, context, stops, open) {
  const details = h("div", { class: "task-details" });
  const transcript = h("pre", { class: "transcript", "aria-label": "Transcript" });
  const historyList = h("ol", { class: "history" });
  const slider = h("input", { type: "range", min: 1, max: 1, value: 1, id: "replay", "aria-label": "Replay the task's events" });
  const replayLabel = h("span", { class: "muted replay-label" });
  fill(
    body,
    h("p", { class: "eyebrow" }, "Task"),
    details,
    h("h3", {}, "History"),
    h("div", { class: "replay" }, slider, replayLabel),
    historyList,
    h("h3", {}, "Transcript"),
    transcript,
  );

  let history = await api.get(`/api/v1/tasks/${taskId}/history`);
  if (!open()) return;
  let replaying = false;
  drawHistory(history, history.as_of);

  slider.addEventListener("input", () => {
    const sequence = Number(slider.value);
    replaying = sequence < history.version;
    replayAt(sequence);
  });

  async function replayAt(sequence) {
    try {
      const past = await api.get(`/api/v1/tasks/${taskId}/history?as_of=${sequence}`);
      if (!open() || Number(slider.value) !== sequence) return;
      drawHistory(past, sequence);
    } catch (problem) {
      toast(problem.message, "error");
    }
  }

  function drawHistory(shown, asOf) {
    // The list holds the history's first page (1,000 events); the slider spans all of it.
    const events = shown.events;
    const last = shown.version;
    slider.max = String(last);
    slider.value = String(asOf);
    replayLabel.textContent = asOf === last ? `now (event ${asOf} of ${last})` : `as of event ${asOf} of ${last}`;
    drawDetails(shown.state, asOf < last);
    fill(historyList, events.map((event) =>
      h("li", { class: event.sequence === asOf ? "current" : event.sequence > asOf ? "future" : "", "data-sequence": event.sequence },
        h("span", { class: "event-type" }, event.event_type),
        " ",
        h("span", { class: "muted" }, event.metadata?.actor || ""),
        " ",
        h("time", { datetime: event.metadata?.occurred_at || "" }, event.metadata?.occurred_at ? ago(event.metadata.occurred_at) : ""))));
  }

  function drawDetails(task, past) {
    fill(
      details,
      h("h2", {}, task.title),
      past ? h("p", { class: "notice" }, "Replaying: this is the task as it was then.") : null,
      h("dl", { class: "facts" },
        fact("Status", h("span", { class: "badge", id: "task-status", "data-status": task.status }, label(task.status))),
        fact("Type", task.task_type),
        fact("Priority", label(task.priority)),
        fact("Agent", task.assigned_agent_id || "—"),
        fact("Retries", `${task.retry_count} of ${task.max_retries}`),
        task.progress ? fact("Progress", task.progress) : null,
        task.not_before ? fact("Retry not before", new Date(task.not_before).toLocaleString()) : null),
      task.last_error ? [h("h3", {}, "Error"), h("pre", { class: "error" }, task.last_error)] : null,
      task.result ? [h("h3", {}, "Result"), h("pre", { class: "result" }, JSON.stringify(task.result, null, 2))] : null,
    );
  }

  // The transcript of the task's current attempt (its retry count + 1). A fresh snapshot
  // (the first, or after a `resync`) starts it over, since the lines come again from the
  // first; a new attempt — seen in the task's events, or in the lines a resumption brings
  // — is followed from its first line, not from where the last one was.
  let attempt = history.state.retry_count + 1;
  const followLogs = () => live.subscribe(`drawer-logs:${taskId}`, { stream: "logs", task_id: taskId, attempt }, {
    snapshot: () => {
      transcript.textContent = "";
    },
    delta: (message) => {
      if (message.attempt > attempt) {
        showAttempt(message.attempt);
        return;
      }
      if (message.attempt !== attempt) return;
      transcript.append(message.lines.map((line) => `${line.text}\n`).join(""));
      transcript.scrollTop = transcript.scrollHeight;
    },
  });
  let stopLogs = followLogs();
  stops.push(() => stopLogs());
  function showAttempt(next) {
    if (next === attempt || !open()) return;
    attempt = next;
    stopLogs();
    stopLogs = followLogs();
  }

  // The task's own events, live: the drawer follows it unless a past state is shown. The
  // stream is the task's own project's (an organization-wide agent's task, opened from
  // the agents screen, may be another project's). Every snapshot reads the history again
  // too: the first covers what committed between the read above and the subscription, a
  // later one (a resync, a resumption too old) what the stream skipped.
  // Answers may come back out of order: only the newest request's is drawn.
  // A read that fails says so (it was an unhandled rejection, and the drawer went on
  // showing the task as it was); the next event reads again.
  let asked = 0;
  const reread = async () => {
    const mine = ++asked;
    let fresh;
    try {
      fresh = await api.get(`/api/v1/tasks/${taskId}/history`);
    } catch (problem) {
      if (mine === asked && open()) toast(`The task could not be read again: ${problem.message}`, "error");
      return;
    }
    if (mine !== asked || !open()) return;
    history = fresh;
    if (!replaying) drawHistory(history, history.as_of);
    else slider.max = String(history.version);
    showAttempt(history.state.retry_count + 1);
  };
  stops.push(live.subscribe(`drawer-task:${taskId}`, {
    stream: "events",
    project_id: history.state.project_id || context.project.id,
    entity_ids: [taskId],
  }, { snapshot: reread, delta: reread }));
}
