// The Kanban board: the `board` stream's snapshot, then one card per delta. Cards are
// dragged with pointer events (mouse, pen and touch alike) or moved from the keyboard
// (Alt+←/→); a move the WIP limit refuses is shown with the server's reason and can be
// sent again with `force`.

import { h, fill, label, drawerLink } from "./dom.js";
import * as api from "./api.js";
import * as live from "./live.js";
import { asOfControl, confirmDialog, toast } from "./ui.js";

const PRIORITY_ORDER = { CRITICAL: 0, HIGH: 1, MEDIUM: 2, LOW: 3 };

export function mountBoard(container, context) {
  const board = { columns: [], cards: new Map(), position: 0 };
  const columnsElement = h("div", { class: "board", "aria-label": "Board" });
  const summary = h("span", { class: "muted" });
  let pastRequest = 0;
  const asOf = asOfControl(async (position) => {
    const request = ++pastRequest;
    if (position === null) return draw();
    try {
      const view = await api.get(`/api/v1/board/view?project_id=${context.project.id}&as_of=${position}`);
      if (request !== pastRequest) return;
      drawColumns(columnsOf(view), view.columns.flatMap((c) => c.cards), true);
    } catch (problem) {
      toast(problem.message, "error");
    }
  });
  fill(
    container,
    h("div", { class: "toolbar" }, h("h1", {}, "Board"), summary, h("span", { class: "spacer" }), asOf.element),
    columnsElement,
  );

  const stop = live.subscribe(`board:${context.project.id}`, { stream: "board", project_id: context.project.id }, {
    snapshot: (message) => {
      board.columns = columnsOf(message.data);
      board.cards = new Map(message.data.columns.flatMap((c) => c.cards).map((card) => [card.ticket_id, card]));
      advance(message.data.position);
      // For the benchmark (omoi-bench bench-dashboard): when the board first became live.
      if (!performance.getEntriesByName("omoi:board-live").length) performance.mark("omoi:board-live");
    },
    delta: (message) => {
      const card = message.change?.card;
      if (!card) return;
      board.cards.set(card.ticket_id, card);
      advance(card.last_position);
    },
    error: (message) => toast(message.detail, "error"),
  });

  function advance(position) {
    board.position = Math.max(board.position, position || 0);
    asOf.setLatest(board.position);
    if (!asOf.isActive()) draw();
  }

  function columnsOf(view) {
    return view.columns.map((c) => ({ name: c.name, wip_limit: c.wip_limit }));
  }

  function draw() {
    drawColumns(board.columns, [...board.cards.values()], false);
  }

  function drawColumns(columns, cards, past) {
    const byColumn = new Map(columns.map((c) => [c.name, []]));
    for (const card of cards) byColumn.get(card.status)?.push(card);
    const total = cards.length;
    summary.textContent = `${total} ticket${total === 1 ? "" : "s"}${past ? " (past)" : ""}`;
    fill(
      columnsElement,
      columns.map((column) => {
        const inColumn = byColumn.get(column.name).sort(
          (a, b) => (PRIORITY_ORDER[a.priority] ?? 9) - (PRIORITY_ORDER[b.priority] ?? 9) || a.title.localeCompare(b.title),
        );
        const over = column.wip_limit !== null && column.wip_limit !== undefined && inColumn.length > column.wip_limit;
        const limit = column.wip_limit ?? "∞";
        return h(
          "section",
          { class: `column${over ? " over-limit" : ""}`, "data-column": column.name, "aria-label": label(column.name) },
          h("header", {}, h("h2", {}, label(column.name)), h("span", { class: "count", title: "cards / WIP limit" }, `${inColumn.length} / ${limit}`)),
          h("div", { class: "cards" }, inColumn.map((card) => cardElement(card, columns, past))),
        );
      }),
    );
  }

  function cardElement(card, columns, past) {
    const done = card.tasks?.completed ?? 0;
    const all = card.tasks?.total ?? 0;
    const element = h(
      "article",
      {
        class: `card${card.blocked ? " blocked" : ""}`,
        tabindex: 0,
        "data-ticket-id": card.ticket_id,
        "data-status": card.status,
        "aria-label": `${card.title}, ${label(card.priority)} priority${card.blocked ? ", blocked" : ""}`,
      },
      h("div", { class: "card-title" }, card.title),
      h(
        "div",
        { class: "card-meta" },
        h("span", { class: `priority priority-${String(card.priority).toLowerCase()}` }, label(card.priority)),
        h("span", { class: "phase" }, label(String(card.phase).replace(/^PHASE_/, ""))),
        card.regressions ? h("span", { class: "regressions", title: "regressions" }, `↺ ${card.regressions}`) : null,
      ),
      all
        ? h("div", { class: "progress", title: `${done} of ${all} tasks completed` },
            h("progress", { value: done, max: all }),
            h("span", {}, `${done}/${all} tasks`))
        : null,
      card.blocked
        ? h("div", { class: "blocked-overlay", title: card.blocked.note || "" }, `Blocked: ${label(card.blocked.reason)}`)
        : null,
    );
    if (past) return element;
    element.addEventListener("pointerdown", (event) => drag(event, card));
    element.addEventListener("keydown", (event) => {
      if (event.key === "Enter") openTicket(card);
      const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
      if (step && event.altKey) {
        event.preventDefault();
        const index = columns.findIndex((c) => c.name === card.status) + step;
        if (columns[index]) move(card, columns[index].name);
      }
    });
    return element;
  }

  function openTicket(card) {
    context.navigate(drawerLink("ticket", card.ticket_id));
  }

  function drag(event, card) {
    if (event.button !== 0) return;
    const element = event.currentTarget;
    const rect = element.getBoundingClientRect();
    const offset = { x: event.clientX - rect.left, y: event.clientY - rect.top };
    const origin = { x: event.clientX, y: event.clientY };
    let ghost = null;
    let target = null;
    const onMove = (moved) => {
      if (!ghost) {
        if (Math.hypot(moved.clientX - origin.x, moved.clientY - origin.y) < 5) return;
        ghost = element.cloneNode(true);
        ghost.classList.add("drag-ghost");
        ghost.style.width = `${rect.width}px`;
        document.body.append(ghost);
        element.classList.add("dragging");
      }
      ghost.style.transform = `translate(${moved.clientX - offset.x}px, ${moved.clientY - offset.y}px)`;
      const column = columnAt(moved.clientX, moved.clientY);
      if (column !== target) {
        target?.classList.remove("drop-target");
        target = column;
        target?.classList.add("drop-target");
      }
    };
    // The drag ends with the pointer released, or cancelled by the browser (a touch taken
    // for a scroll, a lost capture): a cancelled drag moves nothing and opens nothing.
    const end = () => {
      document.removeEventListener("pointermove", onMove);
      document.removeEventListener("pointerup", onUp);
      document.removeEventListener("pointercancel", end);
      target?.classList.remove("drop-target");
      ghost?.remove();
      element.classList.remove("dragging");
    };
    const onUp = (released) => {
      const dragged = ghost !== null;
      end();
      if (!dragged) return openTicket(card);
      const column = columnAt(released.clientX, released.clientY);
      if (column && column.dataset.column !== card.status) move(card, column.dataset.column);
    };
    document.addEventListener("pointermove", onMove);
    document.addEventListener("pointerup", onUp);
    document.addEventListener("pointercancel", end);
  }

  function columnAt(x, y) {
    return document.elementsFromPoint(x, y).find((e) => e.dataset?.column && columnsElement.contains(e)) || null;
  }

  async function move(card, to, force = false) {
    // Shown in its new column at once; the server's delta confirms it, a refusal puts it
    // back — unless a delta replaced the card meanwhile, which is newer than both.
    const before = board.cards.get(card.ticket_id);
    const shown = { ...before, status: to };
    board.cards.set(card.ticket_id, shown);
    draw();
    try {
      await api.send("/api/v1/board/move", { ticket_id: card.ticket_id, to, force });
    } catch (problem) {
      if (board.cards.get(card.ticket_id) === shown) board.cards.set(card.ticket_id, before);
      draw();
      if (problem.code === "wip_limit_exceeded" && !force) {
        const again = await confirmDialog({
          title: `${label(to)} is at its WIP limit`,
          message: problem.message,
          confirm: "Move anyway",
        });
        if (again) move(card, to, true);
      } else {
        toast(problem.message, "error");
      }
    }
  }

  return stop;
}
