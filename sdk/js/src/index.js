// SnackBase client: auth (automatic, single-flight refresh), records, a filter builder that escapes
// values, typed errors from the error envelope, audit reasons and electronic signatures.
// Zero dependencies: it needs only `fetch` (browsers, Node >= 18, Deno, Bun). Types: index.d.ts.

/** The error every failed call throws: the server's envelope, as fields. */
export class SnackBaseError extends Error {
  constructor(envelope, response) {
    super(envelope.message || `HTTP ${envelope.status}`);
    this.name = this.constructor.name;
    this.status = envelope.status;
    this.code = envelope.code;
    this.fields = envelope.fields || {};
    this.requestId = envelope.request_id || response?.headers?.get("x-request-id") || "";
  }
}
/** 400 validation_failed and other 400s (bad_request, invalid_filter, reason_required, …). */
export class ValidationError extends SnackBaseError {}
/** 401: missing, expired or revoked token; invalid credentials. */
export class AuthError extends SnackBaseError {}
/** 403: not allowed (rules, roles, field access). */
export class ForbiddenError extends SnackBaseError {}
/** 404: no such route, collection or record (or not visible to the caller). */
export class NotFoundError extends SnackBaseError {}
/** 409: conflicts with stored state (unique values, references in use, …). */
export class ConflictError extends SnackBaseError {}
/** 429: throttled; `retryAfter` is in seconds. */
export class RateLimitError extends SnackBaseError {
  constructor(envelope, response) {
    super(envelope, response);
    this.retryAfter = Number(response?.headers?.get("retry-after") || 0);
  }
}
/** The request never got an answer (network down, server gone). */
export class NetworkError extends SnackBaseError {}

const ERROR_CLASSES = { 400: ValidationError, 401: AuthError, 403: ForbiddenError, 404: NotFoundError,
  409: ConflictError, 429: RateLimitError };

function errorFrom(envelope, response) {
  const Kind = ERROR_CLASSES[envelope.status] || SnackBaseError;
  return new Kind(envelope, response);
}

// --- filters ----------------------------------------------------------------------------------

/** A value as a filter literal: strings quoted and escaped, Dates in the stored UTC format. */
export function literal(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError("filter numbers must be finite");
    return String(value);
  }
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Date) return literal(value.toISOString());
  if (typeof value === "string") return `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
  throw new TypeError(`cannot use a ${typeof value} in a filter`);
}

/** A string searched literally by `~`: its `%` and `_` are escaped (combine with `filter`). */
export function contains(text) {
  return new LikeText(String(text).replace(/[%_]/g, (ch) => `\\${ch}`));
}

class LikeText {
  constructor(text) { this.text = text; }
}

/**
 * Builds a filter from a template with named placeholders, escaping every value:
 * `filter("title = {:title} && views > {:min}", { title: 'say "hi"', min: 10 })`.
 * An array becomes an IN list: `filter("status IN {:states}", { states: ["a", "b"] })`.
 */
export function filter(template, params = {}) {
  return template.replace(/\{:([A-Za-z0-9_]+)\}/g, (_, name) => {
    if (!(name in params)) throw new Error(`filter: no value for {:${name}}`);
    const value = params[name];
    if (Array.isArray(value)) {
      if (value.length === 0) throw new Error(`filter: {:${name}} is an empty list`);
      return `(${value.map(literal).join(", ")})`;
    }
    if (value instanceof LikeText) return literal(value.text);
    return literal(value);
  });
}

// --- tokens -----------------------------------------------------------------------------------

function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(globalThis.atob(payload + "=".repeat((4 - (payload.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

/** Holds the tokens; replace it (or pass `onChange`) to persist them. */
export class MemoryAuthStore {
  constructor(onChange) {
    this.accessToken = "";
    this.refreshToken = "";
    this.user = null;
    this.account = null;
    this.onChange = onChange;
  }
  save({ access_token, refresh_token, user, account }) {
    this.accessToken = access_token || "";
    this.refreshToken = refresh_token || "";
    if (user !== undefined) this.user = user;
    if (account !== undefined) this.account = account;
    this.onChange?.(this);
  }
  clear() {
    this.save({ access_token: "", refresh_token: "", user: null, account: null });
  }
  get isValid() {
    return Boolean(this.accessToken) && tokenExpiry(this.accessToken) > Date.now();
  }
}

// --- the client -------------------------------------------------------------------------------

const REFRESH_MARGIN_MS = 30_000;

export class SnackBase {
  /**
   * @param {string} baseUrl the server, e.g. "http://127.0.0.1:8000"
   * @param {object} [options] { apiPrefix = "/api/v1", accountId, authStore, fetch }
   */
  constructor(baseUrl, options = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.apiPrefix = options.apiPrefix ?? "/api/v1";
    this.accountId = options.accountId ?? null;
    this.authStore = options.authStore ?? new MemoryAuthStore();
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.auth = new AuthService(this);
    this._refreshing = null;
    this.refreshCount = 0; // how many refresh requests were sent (single-flight is observable)
  }

  /** The records of one collection. */
  collection(name) {
    return new RecordService(this, name);
  }

  /** The same client acting in another account (superadmins; anonymous callers of public rules). */
  withAccount(accountId) {
    const copy = Object.create(this);
    copy.accountId = accountId;
    return copy;
  }

  /**
   * One API call. Refreshes the access token first when it expires within 30 s, and once more
   * when the server answers 401, then retries once. Throws a SnackBaseError subclass on failure.
   */
  async send(method, path, { query, body, headers = {}, reason, auth = true } = {}) {
    if (auth && this.authStore.refreshToken && this._expiresSoon()) {
      await this.auth.refresh().catch(() => {});
    }
    const used = this.authStore.accessToken;
    let response = await this._send(method, path, query, body, headers, reason, auth);
    if (response.status === 401 && auth && used && this.authStore.refreshToken) {
      // Another call may have refreshed while this one was in flight: then just retry with the new token.
      const fresh = this.authStore.accessToken !== used
        || await this.auth.refresh().then(() => true, () => false);
      if (fresh) response = await this._send(method, path, query, body, headers, reason, auth);
    }
    return this._answer(response);
  }

  _expiresSoon() {
    const token = this.authStore.accessToken;
    return !token || tokenExpiry(token) - REFRESH_MARGIN_MS < Date.now();
  }

  async _send(method, path, query, body, headers, reason, auth) {
    const url = new URL(this.baseUrl + this.apiPrefix + path);
    for (const [key, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    const all = { accept: "application/json", ...headers };
    if (body !== undefined) all["content-type"] = "application/json";
    if (auth && this.authStore.accessToken) all.authorization = `Bearer ${this.authStore.accessToken}`;
    if (this.accountId) all["x-account-id"] = this.accountId;
    if (reason) all["x-audit-reason"] = encodeURIComponent(reason);
    try {
      return await this.fetch(url, {
        method, headers: all, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new NetworkError({ status: 0, code: "network_error", message: error.message, fields: {} });
    }
  }

  async _answer(response) {
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!response.ok) {
      const envelope = data && typeof data === "object" && "code" in data ? data
        : { status: response.status, code: "http_error", message: String(data || response.statusText), fields: {} };
      throw errorFrom(envelope, response);
    }
    return data;
  }
}

class AuthService {
  constructor(client) {
    this.client = client;
  }

  get store() {
    return this.client.authStore;
  }

  /** Creates an account and its first admin, and signs in as them. */
  async register({ accountName, email, password, accountSlug }) {
    const body = { account_name: accountName, email, password };
    if (accountSlug) body.account_slug = accountSlug;
    const answer = await this.client.send("POST", "/auth/register", { body, auth: false });
    this.store.save(answer);
    return answer;
  }

  /** Signs in; `account` is the account's slug or id ("system" for superadmins). */
  async login({ email, password, account }) {
    const body = { email, password, account_identifier: account };
    const answer = await this.client.send("POST", "/auth/login", { body, auth: false });
    this.store.save(answer);
    return answer;
  }

  /**
   * Swaps the refresh token for new tokens. Concurrent callers share one request: refresh tokens
   * are single-use, and the server ends the session when one is spent twice.
   */
  refresh() {
    if (!this.client._refreshing) {
      this.client._refreshing = this._refresh().finally(() => {
        this.client._refreshing = null;
      });
    }
    return this.client._refreshing;
  }

  async _refresh() {
    const token = this.store.refreshToken;
    if (!token) throw new AuthError({ status: 401, code: "unauthorized", message: "Not signed in.", fields: {} });
    this.client.refreshCount += 1;
    try {
      const answer = await this.client.send("POST", "/auth/refresh", { body: { refresh_token: token }, auth: false });
      this.store.save(answer);
      return answer;
    } catch (error) {
      if (error.status === 401) this.store.clear();
      throw error;
    }
  }

  /** Ends this session (server-side) and forgets the tokens. */
  async logout() {
    const token = this.store.refreshToken;
    try {
      if (token) await this.client.send("POST", "/auth/logout", { body: { refresh_token: token } });
    } finally {
      this.store.clear();
    }
  }

  /** Ends every session of the caller, everywhere. */
  async logoutAll() {
    try {
      await this.client.send("POST", "/auth/logout-all");
    } finally {
      this.store.clear();
    }
  }

  me() {
    return this.client.send("GET", "/auth/me");
  }

  /** The caller's active sessions; `current` marks this one. */
  async sessions() {
    return (await this.client.send("GET", "/auth/sessions")).items;
  }

  revokeSession(id) {
    return this.client.send("DELETE", `/auth/sessions/${encodeURIComponent(id)}`);
  }

  changePassword({ currentPassword, newPassword }) {
    return this.client.send("POST", "/auth/change-password", {
      body: { current_password: currentPassword, new_password: newPassword },
    });
  }

  requestPasswordReset({ email, account }) {
    return this.client.send("POST", "/auth/forgot-password", {
      body: { email, account_identifier: account }, auth: false,
    });
  }

  resetPassword({ token, newPassword }) {
    return this.client.send("POST", "/auth/reset-password", {
      body: { token, new_password: newPassword }, auth: false,
    });
  }
}

function listQuery(options = {}) {
  const query = {};
  for (const key of ["filter", "sort", "page", "after"]) {
    if (options[key] !== undefined) query[key] = options[key];
  }
  if (options.perPage !== undefined) query.per_page = options.perPage;
  if (options.skipTotal) query.skip_total = "true";
  for (const key of ["fields", "expand"]) {
    if (options[key] !== undefined) query[key] = Array.isArray(options[key]) ? options[key].join(",") : options[key];
  }
  return query;
}

class RecordService {
  constructor(client, name) {
    this.client = client;
    this.name = name;
    this.path = `/records/${encodeURIComponent(name)}`;
  }

  _one(id) {
    return `${this.path}/${encodeURIComponent(id)}`;
  }

  /** One page: { items, page, per_page, total_items, total_pages } (or { items, next_cursor } with `after`). */
  list(options = {}) {
    return this.client.send("GET", this.path, { query: listQuery(options) });
  }

  /** Every matching record, page by page with a cursor (consistent while records are inserted). */
  async *iterate(options = {}) {
    let after = "";
    while (after !== null) {
      const page = await this.list({ ...options, page: undefined, after });
      yield* page.items;
      after = page.next_cursor ?? null;
    }
  }

  /** Every matching record as one array (cursor paging underneath). */
  async getAll(options = {}) {
    const all = [];
    for await (const record of this.iterate({ perPage: 500, ...options })) all.push(record);
    return all;
  }

  get(id, options = {}) {
    return this.client.send("GET", this._one(id), { query: listQuery({ fields: options.fields, expand: options.expand }) });
  }

  create(data, { reason } = {}) {
    return this.client.send("POST", this.path, { body: data, reason });
  }

  update(id, data, { reason } = {}) {
    return this.client.send("PATCH", this._one(id), { body: data, reason });
  }

  replace(id, data, { reason } = {}) {
    return this.client.send("PUT", this._one(id), { body: data, reason });
  }

  delete(id, { reason } = {}) {
    return this.client.send("DELETE", this._one(id), { reason });
  }

  /** Creates, updates ({id, ...fields}) and deletes (ids) in one transaction: all or nothing. */
  batch({ create = [], update = [], delete: remove = [] }, { reason } = {}) {
    return this.client.send("POST", `${this.path}/batch`, { body: { create, update, delete: remove }, reason });
  }

  /** Signs the record as stored now; the signer re-enters their password (21 CFR 11.200). */
  sign(id, { password, meaning }, { reason } = {}) {
    return this.client.send("POST", `${this._one(id)}/sign`, { body: { password, meaning }, reason });
  }

  async signatures(id) {
    return (await this.client.send("GET", `${this._one(id)}/signatures`)).items;
  }

  /** Every audit entry about the record, oldest first, and its signatures. */
  history(id) {
    return this.client.send("GET", `${this._one(id)}/history`);
  }
}

export default SnackBase;
