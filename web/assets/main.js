// The app: sign-in, the shell (organization and project switchers, screens, connection
// indicator) and the router. Every screen has an address that survives a reload and can
// be shared: /p/{project}/board, /p/{project}/graph, …, with ?task={id} for the drawer.

import * as api from "./api.js";
import * as live from "./live.js";
import { h, fill } from "./dom.js";
import { mountBoard } from "./board.js";
import { mountGraph } from "./graph.js";
import { mountTimeline } from "./timeline.js";
import { mountAgents } from "./agents.js";
import { mountSpecs } from "./specs.js";
import { openDrawer, closeDrawer } from "./drawer.js";
import { openPalette } from "./palette.js";

const SCREENS = {
  board: { title: "Board", mount: mountBoard },
  graph: { title: "Graph", mount: mountGraph },
  timeline: { title: "Timeline", mount: mountTimeline },
  agents: { title: "Agents", mount: mountAgents },
  specs: { title: "Specs", mount: mountSpecs },
};

const root = document.getElementById("app");
const session = { me: null, organizations: [], projects: new Map() };
let unmountScreen = null;

/** Goes to `path` (in the app) and renders it. */
export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

window.addEventListener("popstate", () => render());
api.onSignedOut(() => {
  live.disconnect();
  session.me = null;
  navigate("/signin", { replace: true });
});

document.addEventListener("keydown", (event) => {
  if ((event.metaKey || event.ctrlKey) && event.key.toLowerCase() === "k" && session.me) {
    event.preventDefault();
    openPalette(paletteContext());
  }
});

// Links inside the app change the address without reloading the page.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/']");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || link.target) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});

async function start() {
  if (await api.resume()) await loadSession();
  render();
}

async function loadSession() {
  session.me = await api.get("/api/v1/auth/me");
  const organizations = await api.get("/api/v1/organizations?limit=100");
  session.organizations = organizations.items;
  session.projects.clear();
  for (const organization of session.organizations) {
    const projects = await api.get(`/api/v1/projects?organization_id=${organization.id}&limit=100`);
    session.projects.set(organization.id, projects.items);
  }
  live.connect();
}

function allProjects() {
  return [...session.projects.values()].flat();
}

function roleIn(organizationId) {
  return session.me?.memberships.find((m) => m.organization_id === organizationId)?.role;
}

function route() {
  const parts = location.pathname.split("/").filter(Boolean);
  if (parts[0] === "signin") return { name: "signin" };
  if (parts[0] === "p" && parts[1]) {
    return { name: "project", project: parts[1], screen: parts[2] || "board", rest: parts.slice(3) };
  }
  return { name: "home" };
}

/** Whether `path` is a path of this origin: `/x`, not `//host` nor `/\\host` (which the
 * address parser reads as `//host`) nor anything that resolves elsewhere. */
function sameOrigin(path) {
  if (!path || !path.startsWith("/")) return false;
  try {
    return new URL(path, location.origin).origin === location.origin;
  } catch {
    return false;
  }
}

function render() {
  const where = route();
  if (!session.me) {
    if (where.name !== "signin") {
      const next = location.pathname + location.search;
      history.replaceState(null, "", `/signin?next=${encodeURIComponent(next)}`);
    }
    return renderSignIn();
  }
  if (where.name === "signin") {
    const next = new URLSearchParams(location.search).get("next");
    return navigate(sameOrigin(next) ? next : "/", { replace: true });
  }
  if (where.name === "home") {
    const first = allProjects()[0];
    if (first) return navigate(`/p/${first.id}/board`, { replace: true });
    return renderNoProject();
  }
  renderProject(where);
}

function renderSignIn() {
  unmount();
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const form = h(
    "form",
    { class: "signin", onsubmit: submit },
    h("h1", {}, "omoi"),
    h("p", { class: "muted" }, "Sign in to watch and steer your agents."),
    h("label", {}, "Email", h("input", { name: "email", type: "email", autocomplete: "username", required: true, autofocus: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  async function submit(event) {
    event.preventDefault();
    const data = new FormData(form);
    const button = form.querySelector("button");
    button.disabled = true;
    error.hidden = true;
    try {
      await api.signIn(String(data.get("email")), String(data.get("password")));
      await loadSession();
      render();
    } catch (problem) {
      error.textContent = problem.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }
  fill(root, h("main", { class: "centered" }, form));
}

function renderNoProject() {
  unmount();
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const form = h(
    "form",
    { class: "signin", onsubmit: create },
    h("h1", {}, "Your first project"),
    h("p", { class: "muted" }, "You belong to no project yet: create an organization and a project."),
    h("label", {}, "Organization", h("input", { name: "organization", required: true, maxlength: 200 })),
    h("label", {}, "Project", h("input", { name: "project", required: true, maxlength: 200 })),
    error,
    h("button", { type: "submit", class: "primary" }, "Create"),
  );
  const button = form.querySelector("button");
  // The organization made by an attempt whose project then failed: a second attempt (or
  // a second click) makes the project in it instead of another organization.
  let organization = null;
  async function create(event) {
    event.preventDefault();
    if (button.disabled) return;
    button.disabled = true;
    const data = new FormData(form);
    try {
      organization ??= await api.send("/api/v1/organizations", { name: data.get("organization") });
      const project = await api.send("/api/v1/projects", {
        organization_id: organization.id,
        name: data.get("project"),
      });
      await loadSession();
      navigate(`/p/${project.id}/board`);
    } catch (problem) {
      error.textContent = problem.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }
  fill(root, h("main", { class: "centered" }, form));
}

function unmount() {
  if (unmountScreen) unmountScreen();
  unmountScreen = null;
  shown = null;
  closeDrawer();
}

let shown = null;

function renderProject(where) {
  const project = allProjects().find((p) => p.id === where.project);
  if (!project) {
    unmount();
    fill(root, h("main", { class: "centered" }, h("div", { class: "empty" },
      h("h1", {}, "Project not found"),
      h("p", {}, "It does not exist, or you are not a member of its organization."),
      h("a", { href: "/" }, "Go to your projects"))));
    return;
  }
  const screen = SCREENS[where.screen] ? where.screen : "board";
  const context = {
    project,
    organization: session.organizations.find((o) => o.id === project.organization_id),
    role: roleIn(project.organization_id),
    rest: where.rest,
    navigate,
    openTask: (taskId) => setQuery("task", taskId),
  };
  const key = `${project.id}/${screen}/${where.rest.join("/")}`;
  if (shown !== key) {
    unmount();
    shown = key;
    const main = h("main", { class: `screen screen-${screen}`, id: "screen" });
    const header = shell(context, screen);
    fill(root, header.element, main);
    const stopScreen = SCREENS[screen].mount(main, context);
    unmountScreen = () => {
      stopScreen?.();
      header.stop();
    };
  }
  const query = new URLSearchParams(location.search);
  const taskId = query.get("task");
  const ticketId = query.get("ticket");
  if (taskId || ticketId) {
    openDrawer({ taskId, ticketId }, { ...context, close: () => setQuery(taskId ? "task" : "ticket", null) });
  } else {
    closeDrawer();
  }
}

function setQuery(name, value) {
  const query = new URLSearchParams(location.search);
  if (value) query.set(name, value);
  else query.delete(name);
  const search = query.toString();
  navigate(location.pathname + (search ? `?${search}` : ""));
}

function shell(context, screen) {
  const projectSelect = h(
    "select",
    {
      "aria-label": "Project",
      id: "project-switcher",
      onchange: (event) => navigate(`/p/${event.target.value}/${screen}`),
    },
    session.organizations.map((organization) =>
      h(
        "optgroup",
        { label: organization.name },
        (session.projects.get(organization.id) || []).map((p) =>
          h("option", { value: p.id, selected: p.id === context.project.id }, p.name),
        ),
      ),
    ),
  );
  const indicator = h("span", { class: "connection", id: "connection", role: "status" });
  const stop = live.onConnectionState((state) => {
    indicator.dataset.state = state;
    indicator.textContent = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Offline" }[state];
    indicator.title = state === "live" ? "Receiving changes as they happen" : "Changes are not arriving; reconnecting";
  });
  const element = h(
    "header",
    { class: "topbar" },
    h("a", { href: "/", class: "brand" }, "omoi"),
    h("span", { class: "organization", title: "Organization" }, context.organization?.name || ""),
    projectSelect,
    h(
      "nav",
      { "aria-label": "Screens" },
      Object.entries(SCREENS).map(([name, { title }]) =>
        h("a", { href: `/p/${context.project.id}/${name}`, "aria-current": name === screen ? "page" : false }, title),
      ),
    ),
    h("span", { class: "spacer" }),
    h("button", { class: "ghost", onclick: () => openPalette(paletteContext()), title: "Command palette (Ctrl+K)" }, "Search… ", h("kbd", {}, "Ctrl K")),
    indicator,
    h("span", { class: "muted user" }, session.me.user?.email || ""),
    h("button", { class: "ghost", onclick: () => api.signOut() }, "Sign out"),
  );
  return { element, stop };
}

function paletteContext() {
  const where = route();
  return {
    projects: allProjects(),
    organizations: session.organizations,
    project: where.name === "project" ? allProjects().find((p) => p.id === where.project) : null,
    screens: Object.entries(SCREENS).map(([name, { title }]) => ({ name, title })),
    navigate,
  };
}

start().catch((error) => {
  fill(root, h("main", { class: "centered" }, h("p", { class: "form-error" }, `omoi could not start: ${error.message}`)));
});
