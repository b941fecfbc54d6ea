// The HTTP API: the access token lives in memory only; the refresh token is the server's
// HttpOnly cookie, exchanged for a new pair when the access token expires or the page is
// reloaded.

let accessToken = null;
let refreshing = null;
let refreshTimer = null;
const signedOutListeners = new Set();
const tokenListeners = new Set();

/** A problem document the server answered with (RFC 9457). */
export class Problem extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || "http_" + status;
    this.field = body?.field;
    this.body = body;
  }
}

export function token() {
  return accessToken;
}

export function onSignedOut(listener) {
  signedOutListeners.add(listener);
}

/** `listener(token)` after every new access token (signing in, each refresh). */
export function onToken(listener) {
  tokenListeners.add(listener);
}

function adopt(pair) {
  accessToken = pair.access_token;
  clearTimeout(refreshTimer);
  // A minute before it expires (and never sooner than in 10 s).
  const seconds = Math.max(10, (pair.expires_in || 900) - 60);
  refreshTimer = setTimeout(() => refresh().catch(() => {}), seconds * 1000);
  for (const listener of tokenListeners) listener(accessToken);
}

/** Ends the session here: the token is dropped and the page signs out (the socket, say,
 * found that the refresh cookie no longer works). */
export function forget() {
  accessToken = null;
  clearTimeout(refreshTimer);
  for (const listener of signedOutListeners) listener();
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Problem(response.status, parsed);
  return parsed;
}

export async function signIn(email, password) {
  adopt(await post("/api/v1/auth/login", { email, password }));
}

/**
 * A new pair from the refresh cookie. A refresh token works once, and presenting it twice
 * revokes every session of the user: one refresh at a time, in this tab (one promise) and
 * across tabs (a Web Lock).
 */
export function refresh() {
  if (!refreshing) {
    const exchange = () => post("/api/v1/auth/refresh", {}).then(adopt);
    const locked = navigator.locks
      ? navigator.locks.request("omoi-refresh", exchange)
      : exchange();
    refreshing = locked.finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/** Whether a failed refresh means the session is over (the cookie was refused), rather
 * than that the server could not answer now (a quota, an outage, the network). */
export function sessionEnded(error) {
  return error instanceof Problem && error.status === 401;
}

/** What the server says of the access token now, asked with a plain read: "refused"
 * (401), "accepted" (answered), or "unknown" (another refusal, or no answer at all: the
 * server restarting, say). */
export async function tokenVerdict() {
  try {
    const response = await fetch("/api/v1/auth/me", {
      headers: accessToken ? { authorization: `Bearer ${accessToken}` } : {},
      credentials: "same-origin",
    });
    if (response.status === 401) return "refused";
    return response.ok ? "accepted" : "unknown";
  } catch {
    return "unknown";
  }
}

/** A failed refresh that did not end the session, as the problem to show. */
function unanswered(error) {
  if (error instanceof Problem) return error;
  return new Problem(0, { detail: "the server could not be reached; try again", code: "unreachable" });
}

/** Signed in again from the cookie after a reload; false when there is no session. A
 * refresh the server could not answer is tried again a few times before giving up. */
export async function resume() {
  for (let attempt = 0; ; attempt++) {
    try {
      await refresh();
      return true;
    } catch (error) {
      if (sessionEnded(error) || attempt >= 3) return false;
      await new Promise((done) => setTimeout(done, 1000 * (attempt + 1)));
    }
  }
}

export async function signOut() {
  try {
    await request("POST", "/api/v1/auth/logout", {});
  } finally {
    forget();
  }
}

/**
 * `method path` with the access token; JSON in and out. A 401 refreshes once and tries
 * again; errors are thrown as `Problem`.
 */
export async function request(method, path, body, retried = false) {
  const headers = {};
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 401 && !retried && !path.startsWith("/api/v1/auth/")) {
    try {
      await refresh();
    } catch (error) {
      // Only a refused refresh cookie ends the session; a refresh the server could not
      // answer (429, 5xx, the network) leaves it, and this request fails with its reason.
      if (!sessionEnded(error)) throw unanswered(error);
      forget();
      throw new Problem(401, { detail: "your session ended; sign in again", code: "unauthorized" });
    }
    return request(method, path, body, true);
  }
  const text = await response.text();
  const json = (response.headers.get("content-type") || "").includes("json");
  const parsed = text && json ? JSON.parse(text) : text || null;
  if (!response.ok) throw new Problem(response.status, json ? parsed : { detail: text });
  return parsed;
}

export const get = (path) => request("GET", path);
export const send = (path, body) => request("POST", path, body);
