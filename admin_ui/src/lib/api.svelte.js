// The one HTTP client of the console: bearer tokens, refresh before expiry, the error envelope,
// "API down" detection and session expiry. Tokens live in memory and in sessionStorage (per tab).

export const API = "/api/v1";
const STORE_KEY = "sb.session";
// Refresh a minute before expiry, or at 80% of a short lifetime (a 1-minute token: after 48 s).
const REFRESH_MARGIN_MS = 60_000;
const ACTIVITY_EVENTS = ["pointerdown", "keydown", "wheel", "touchstart"];

export class ApiError extends Error {
  constructor(status, body = {}) {
    super(body.message || `Request failed (${status}).`);
    this.status = status;
    this.code = body.code || (status === 0 ? "network_error" : "error");
    this.fields = body.fields && typeof body.fields === "object" ? body.fields : {};
    this.requestId = body.request_id || "";
  }
}

/** Session state shared by every screen (Svelte 5 rune state, mutated in place). */
export const session = $state({
  access: null,
  refresh: null,
  expiresAt: 0,
  lifetimeMs: 0,
  idleMs: 0, // sign out after this long without input (server setting session_idle_minutes; 0 = never)
  user: null,
  account: null,
  expired: false, // the server ended the session: show sign-in over the current screen
  idleSignedOut: 0, // minutes: the last session ended for inactivity (told on the sign-in page)
});

/** Connectivity state: `down` shows the banner with a retry button. */
export const net = $state({ down: false, message: "" });

let refreshTimer = null;
let refreshing = null;
let idleTimer = null;
let lastActivity = Date.now();

function noteActivity() {
  lastActivity = Date.now();
}

/** How long before expiry a refresh is due: a minute, or a fifth of a short token's lifetime. */
function margin() {
  return Math.min(REFRESH_MARGIN_MS, (session.lifetimeMs || 3_600_000) / 5);
}

function idle() {
  return session.idleMs > 0 && Date.now() - lastActivity >= session.idleMs;
}

/** Inactivity sign-out (21 CFR 11 / Annex 11 session control): checked every few seconds. */
function watchIdle() {
  clearInterval(idleTimer);
  for (const ev of ACTIVITY_EVENTS) window.removeEventListener(ev, noteActivity, true);
  if (!session.refresh || !session.idleMs) return;
  for (const ev of ACTIVITY_EVENTS) window.addEventListener(ev, noteActivity, { capture: true, passive: true });
  idleTimer = setInterval(() => {
    if (session.refresh && idle()) {
      const minutes = Math.round(session.idleMs / 60_000);
      logout().then(() => (session.idleSignedOut = minutes || 1));
    }
  }, Math.min(10_000, Math.max(1_000, session.idleMs / 10)));
}

export function isAdmin(user) {
  return !!user && (user.is_superadmin || user.role === "admin");
}

export function isSuper() {
  return !!session.user?.is_superadmin;
}

function persist() {
  try {
    if (session.access) {
      const { access, refresh, expiresAt, lifetimeMs, idleMs, user, account } = session;
      sessionStorage.setItem(STORE_KEY, JSON.stringify({ access, refresh, expiresAt, lifetimeMs, idleMs, user, account }));
    } else {
      sessionStorage.removeItem(STORE_KEY);
    }
  } catch {
    /* storage may be disabled: memory only */
  }
}

export function restoreSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
    if (saved?.refresh) {
      Object.assign(session, saved, { expired: false });
      lastActivity = Date.now();
      scheduleRefresh();
      watchIdle();
    }
  } catch {
    sessionStorage.removeItem(STORE_KEY);
  }
}

function applyTokens(body) {
  const wasSignedIn = !!session.refresh;
  session.access = body.access_token;
  session.refresh = body.refresh_token;
  session.lifetimeMs = (body.expires_in || 3600) * 1000;
  session.expiresAt = Date.now() + session.lifetimeMs;
  session.idleMs = Math.max(0, Number(body.session_idle_minutes ?? session.idleMs / 60_000) || 0) * 60_000;
  if (body.user) session.user = body.user;
  if (body.account) session.account = body.account;
  session.expired = false;
  session.idleSignedOut = 0;
  if (!wasSignedIn) lastActivity = Date.now();
  persist();
  scheduleRefresh();
  watchIdle();
}

/** Signs in with a token pair another endpoint returned (an accepted invitation). */
export function adoptSession(body) {
  applyTokens(body);
}

/** The next refresh: shortly before expiry; while the user is active, at least every third of the
 * idle period too, since the server refuses a refresh token whose session sat unused that long. */
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!session.refresh) return;
  let wait = session.expiresAt - Date.now() - margin();
  if (session.idleMs) wait = Math.min(wait, session.idleMs / 3);
  refreshTimer = setTimeout(() => {
    if (idle()) return; // no keep-alive for an idle tab: the idle watch signs it out
    refreshTokens().catch(() => {});
  }, Math.max(1_000, wait));
}

function clearTokens() {
  clearTimeout(refreshTimer);
  clearInterval(idleTimer);
  session.access = null;
  session.refresh = null;
  session.expiresAt = 0;
  persist();
}

/** Rotates the refresh token once, even when several requests need it at the same time. */
export function refreshTokens() {
  if (!refreshing) {
    const token = session.refresh;
    refreshing = (async () => {
      if (!token) throw new ApiError(401, { message: "Not signed in." });
      const res = await send("POST", "/auth/refresh", { body: { refresh_token: token }, auth: false });
      if (session.refresh !== token) {
        // Signed out (e.g. for inactivity) while this refresh was on its way: end the session it renewed.
        send("POST", "/auth/logout", { body: { refresh_token: res.refresh_token }, headers: { authorization: `Bearer ${res.access_token}` }, auth: false }).catch(() => {});
        return;
      }
      applyTokens(res);
    })()
      .catch((err) => {
        if (err.status === 401) expireSession();
        throw err;
      })
      .finally(() => (refreshing = null));
  }
  return refreshing;
}

function expireSession() {
  clearTokens();
  if (session.user) session.expired = true;
}

export async function login(email, password, accountIdentifier) {
  const body = await send("POST", "/auth/login", {
    body: { email, password, account_identifier: accountIdentifier },
    auth: false,
  });
  const previous = session.user?.id;
  applyTokens(body);
  return { body, sameUser: previous === body.user?.id };
}

export async function logout() {
  const token = session.refresh;
  try {
    if (token && session.access) await send("POST", "/auth/logout", { body: { refresh_token: token }, retry: false });
  } catch {
    /* the session ends locally either way */
  }
  clearTokens();
  session.user = null;
  session.account = null;
  session.expired = false;
  persist();
}

function buildUrl(path, query) {
  const url = new URL((/^\/(health|ready|live)$/.test(path) ? "" : API) + path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  return url.pathname + url.search;
}

async function send(method, path, opts = {}) {
  const { body, form, query, headers = {}, auth = true, raw = false } = opts;
  const h = { accept: "application/json", ...headers };
  if (body !== undefined && !form) h["content-type"] = "application/json"; // a FormData sets its own
  if (auth && session.access) h.authorization = `Bearer ${session.access}`;
  let res;
  try {
    res = await fetch(buildUrl(path, query), {
      method,
      headers: h,
      body: form ?? (body === undefined ? undefined : JSON.stringify(body)),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    net.down = true;
    net.message = "The SnackBase API cannot be reached.";
    throw new ApiError(0, { message: "The server cannot be reached. Check that it is running, then retry." });
  }
  if (res.status === 502 || res.status === 503 || res.status === 504) {
    net.down = true;
    net.message = `The SnackBase API answered ${res.status} (unavailable).`;
  } else {
    net.down = false;
  }
  if (raw && res.ok) return res;
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text.slice(0, 200) };
  }
  if (!res.ok) throw new ApiError(res.status, data || {});
  return data;
}

/**
 * api("GET", "/collections", {query, body, headers, raw}) -> parsed JSON (null for 204).
 * Refreshes the access token first when it is about to expire, and once more after a 401.
 */
export async function api(method, path, opts = {}) {
  if (opts.auth !== false && session.refresh && session.expiresAt - Date.now() < margin() / 2) {
    await refreshTokens();
  }
  try {
    return await send(method, path, opts);
  } catch (err) {
    // 401 invalid_credentials answers a password in the body (e.g. signing), not the token.
    const tokenProblem = err.status === 401 && opts.auth !== false && err.code !== "invalid_credentials";
    if (tokenProblem && opts.retry !== false && session.refresh) {
      await refreshTokens();
      return await send(method, path, opts);
    }
    if (tokenProblem && session.user) expireSession();
    throw err;
  }
}

/** A list endpoint that may not exist on this server yet: null instead of an error for 404/405. */
export async function optional(method, path, opts) {
  try {
    return await api(method, path, opts);
  } catch (err) {
    if (err.status === 404 || err.status === 405) return null;
    throw err;
  }
}

/** The position in a rule/filter error message such as "… (at position 12)", or -1. */
export function errorPosition(message) {
  const m = /at position (\d+)/.exec(message || "");
  return m ? Number(m[1]) : -1;
}
