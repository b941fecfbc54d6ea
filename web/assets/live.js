// One WebSocket to /api/v1/ws for the whole page, shared by every screen's subscriptions.
// Each subscription remembers the last position it applied; after a disconnect every one
// is sent again with `after` = that position, so the server replays exactly what was
// missed. A `resync` (or a stale resumption) starts the subscription over from a fresh
// snapshot. No polling: when the socket is down the indicator says so and a reconnection
// is tried with a growing delay.

import { token, tokenVerdict, refresh, forget, sessionEnded, onToken } from "./api.js";
import { comparePositions } from "./dom.js";

const subscriptions = new Map();
const stateListeners = new Set();
let socket = null;
let state = "offline";
let attempts = 0;
let reconnectTimer = null;
let wanted = false;
// Set once an upgrade was refused although the token is good: the cookie did not make it
// (cookies blocked, a `Secure` cookie over plain http, a proxy rewriting the host the
// origin check compares with), so the token goes in the address from then on.
let tokenInAddress = false;

/** "connecting" | "live" | "reconnecting" | "offline" */
export function connectionState() {
  return state;
}

export function onConnectionState(listener) {
  stateListeners.add(listener);
  listener(state);
  return () => stateListeners.delete(listener);
}

function setState(next) {
  state = next;
  for (const listener of stateListeners) listener(next);
}

// A refreshed token is handed to the open socket, which would otherwise be closed (4401)
// once the token it opened with expires, and reconnect every quarter of an hour. A socket
// still connecting gets it once open (it opened with the cookie's, the older one).
let socketToken = null;
onToken(() => {
  if (socket?.readyState === WebSocket.OPEN) authenticate();
});

function authenticate() {
  socketToken = token();
  socket.send(JSON.stringify({ type: "authenticate", token: socketToken }));
}

/** Opens the socket (once signed in), at once if a reconnection was waiting. */
export function connect() {
  wanted = true;
  clearTimeout(reconnectTimer);
  if (socket) return;
  open();
}

/** Closes the socket and forgets every subscription (signing out). */
export function disconnect() {
  wanted = false;
  subscriptions.clear();
  clearTimeout(reconnectTimer);
  if (socket) socket.close(1000);
  socket = null;
  setState("offline");
}

// The upgrade is authenticated by the access token's HttpOnly cookie, which the server
// sets beside every token it hands out (and checks the page's origin for): a token in the
// address would be written to every proxy's access log. Only where the cookie does not
// work does the address carry the token.
function open() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socketToken = token();
  const query = tokenInAddress ? `?token=${encodeURIComponent(socketToken || "")}` : "";
  const address = `${scheme}://${location.host}/api/v1/ws${query}`;
  setState(attempts === 0 ? "connecting" : "reconnecting");
  const current = new WebSocket(address);
  socket = current;
  let opened = false;
  current.onopen = () => {
    opened = true;
    attempts = 0;
    if (token() !== socketToken) authenticate();
    setState("live");
    for (const subscription of subscriptions.values()) sendSubscribe(subscription);
  };
  current.onmessage = (message) => receive(JSON.parse(message.data));
  current.onclose = async (closed) => {
    if (socket !== current) return;
    socket = null;
    if (!wanted) return;
    setState("reconnecting");
    // 4401: the token expired or was revoked. A socket refused before it opened may have
    // been refused for the same reason (an upgrade answered 401 closes as 1006: the
    // browser does not say why), or for another (too many sockets, a proxy that does not
    // upgrade): a plain read tells them apart, and only a refused token asks for a fresh
    // one. Before, every refusal rotated the refresh token, every few seconds for ever,
    // and a few such tabs spent their address's refresh quota (which signing in shares).
    // A session the server no longer knows signs out instead of retrying forever; a
    // server out of reach (the refresh fails without an answer) is tried again. A refusal
    // of a token the server accepts may be the cookie's: the next tries carry the token in
    // the address (not after a refusal nobody answered for: a server restarting).
    let verdict = "unknown";
    if (closed.code === 4401) verdict = "refused";
    else if (!opened) verdict = await tokenVerdict();
    if (!wanted) return;
    if (verdict === "refused") {
      const ended = await refresh().then(() => false, sessionEnded);
      if (ended) {
        forget();
        return;
      }
    } else if (verdict === "accepted") {
      tokenInAddress = true;
    }
    // Signed out while the refresh was under way, or signed in again and connected.
    if (!wanted || socket) return;
    attempts += 1;
    // Jittered, so that the tabs of a restarted server do not all come back at once.
    const delay = Math.min(5000, 250 * 2 ** Math.min(attempts, 5)) * (0.75 + Math.random() / 2);
    reconnectTimer = setTimeout(() => {
      if (wanted && !socket) open();
    }, delay);
  };
}

/**
 * Subscribes `id` to `params` (`stream`, `project_id`, …). `handlers.snapshot(message)`
 * receives every fresh snapshot (after a resync too), `handlers.delta(message)` each
 * change in order. Returns the function that unsubscribes.
 */
export function subscribe(id, params, handlers) {
  const subscription = { id, params, handlers, position: null };
  // Subscribing again under an id in use replaces that subscription, here and on the server.
  subscriptions.set(id, subscription);
  if (socket?.readyState === WebSocket.OPEN) sendSubscribe(subscription);
  return () => {
    if (subscriptions.get(id) !== subscription) return;
    subscriptions.delete(id);
    if (socket?.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "unsubscribe", id }));
    }
  };
}

function sendSubscribe(subscription) {
  const message = { type: "subscribe", id: subscription.id, ...subscription.params };
  if (subscription.position) message.after = subscription.position;
  socket.send(JSON.stringify(message));
}

function receive(message) {
  if (message.type === "ping") {
    socket?.send(JSON.stringify({ type: "pong" }));
    return;
  }
  if (message.type === "error" && !message.id && message.code === "unavailable") {
    // An `authenticate` the server could not verify just now: asked again in a moment.
    setTimeout(() => {
      if (socket?.readyState === WebSocket.OPEN) authenticate();
    }, 2000);
    return;
  }
  const subscription = subscriptions.get(message.id);
  if (!subscription) return;
  switch (message.type) {
    case "snapshot":
      subscription.position = message.position;
      // A resumption without data: the missed deltas follow.
      if (!message.resumed) subscription.handlers.snapshot?.(message);
      break;
    case "delta":
    case "logs":
      // A delta the snapshot already reflects (committed just before subscribing).
      if (
        message.type === "delta" &&
        subscription.position &&
        comparePositions(message.position, subscription.position) <= 0
      ) {
        return;
      }
      subscription.position = message.position;
      subscription.handlers.delta?.(message);
      break;
    case "resync":
      subscription.position = null;
      if (socket?.readyState === WebSocket.OPEN) sendSubscribe(subscription);
      break;
    case "error":
      if (message.code === "invalid_cursor" && subscription.position) {
        // A position the server's log has not reached (its database was restored, say):
        // the subscription starts over from a fresh snapshot.
        subscription.position = null;
        if (socket?.readyState === WebSocket.OPEN) sendSubscribe(subscription);
        break;
      }
      if (message.code === "unavailable") {
        // The server could not read for it just now: asked again in a moment.
        setTimeout(() => {
          if (subscriptions.get(subscription.id) === subscription && socket?.readyState === WebSocket.OPEN) {
            sendSubscribe(subscription);
          }
        }, 2000);
      }
      subscription.handlers.error?.(message);
      break;
    default:
      break;
  }
}
