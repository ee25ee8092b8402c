// Types of the SnackBase client (src/index.js). Record types are generic: pass your own interface, or
// generate them from GET /api/v1/openapi.json (components `<collection>.record`, `.create`, `.update`).

export interface FieldError {
  code: string;
  message: string;
}

/** The one error envelope every failed call answers. */
export interface ErrorEnvelope {
  status: number;
  code: string;
  message: string;
  fields: Record<string, FieldError>;
  request_id: string;
}

export class SnackBaseError extends Error {
  readonly status: number;
  /** Stable machine code, e.g. "validation_failed", "not_found", "invalid_filter" (see docs/errors.md). */
  readonly code: string;
  /** Per-field errors, e.g. { title: { code: "too_long", message: "…" } }. */
  readonly fields: Record<string, FieldError>;
  readonly requestId: string;
  constructor(envelope: ErrorEnvelope, response?: Response);
}
export class ValidationError extends SnackBaseError {}
export class AuthError extends SnackBaseError {}
export class ForbiddenError extends SnackBaseError {}
export class NotFoundError extends SnackBaseError {}
export class ConflictError extends SnackBaseError {}
export class RateLimitError extends SnackBaseError {
  /** Seconds to wait before retrying (the Retry-After header). */
  readonly retryAfter: number;
}
export class NetworkError extends SnackBaseError {}

export type FilterValue = string | number | bigint | boolean | null | undefined | Date;

/** A value as a filter literal (strings quoted and escaped; Dates in the stored UTC format). */
export function literal(value: FilterValue): string;
/** A string matched literally by `~` (its `%` and `_` escaped); use as a `filter()` parameter. */
export function contains(text: string): unknown;
/** A filter from a template with `{:name}` placeholders; every value is escaped; arrays become IN lists. */
export function filter(template: string, params?: Record<string, FilterValue | FilterValue[] | ReturnType<typeof contains>>): string;

export interface Account {
  id: string;
  slug: string;
  name: string;
  [key: string]: unknown;
}
export interface User {
  id: string;
  account_id: string;
  email: string;
  role: string;
  [key: string]: unknown;
}
export interface Tokens {
  access_token: string;
  refresh_token: string;
  token_type: "Bearer";
  expires_in: number;
}
export interface LoginAnswer extends Tokens {
  account: Account;
  user: User;
}
export interface Session {
  id: string;
  current: boolean;
  [key: string]: unknown;
}

export class MemoryAuthStore {
  accessToken: string;
  refreshToken: string;
  user: User | null;
  account: Account | null;
  constructor(onChange?: (store: MemoryAuthStore) => void);
  save(tokens: Partial<LoginAnswer>): void;
  clear(): void;
  /** An access token that has not expired. */
  readonly isValid: boolean;
}

export interface ClientOptions {
  /** Default "/api/v1" (SNACKBASE_API_PREFIX). */
  apiPrefix?: string;
  /** Sent as X-Account-ID: the account anonymous callers and superadmins act in. */
  accountId?: string | null;
  authStore?: MemoryAuthStore;
  fetch?: typeof globalThis.fetch;
}

export interface SendOptions {
  query?: Record<string, string | number | boolean | null | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  /** The audit reason, sent as X-Audit-Reason (percent-encoded). */
  reason?: string;
  /** Send the access token (default true). */
  auth?: boolean;
}

export interface WriteOptions {
  /** The audit reason for this change (required by collections with audit.require_reason). */
  reason?: string;
}

export interface ListOptions {
  filter?: string;
  sort?: string;
  fields?: string | string[];
  expand?: string | string[];
  page?: number;
  /** 1-500, default 30. */
  perPage?: number;
  skipTotal?: boolean;
  /** Cursor paging: "" for the first page, then the previous page's next_cursor. */
  after?: string;
}

export interface SystemFields {
  id: string;
  account_id: string;
  created_at: string;
  created_by: string | null;
  updated_at: string;
  updated_by: string | null;
  expand?: Record<string, unknown>;
  /** In lists and batch answers: the record's version (its ETag), for an If-Match or `@if_match`. */
  "@etag"?: string;
}

export interface Page<T> {
  items: T[];
  page?: number;
  per_page?: number;
  total_items?: number;
  total_pages?: number;
  next_cursor?: string | null;
}

export interface Signature {
  id: string;
  meaning: string;
  signed_at: string;
  record_hash: string;
  changed_since_signing?: boolean;
  [key: string]: unknown;
}

export interface History {
  items: Array<Record<string, unknown>>;
  signatures: Signature[];
}

export interface BatchAnswer<T> {
  create: T[];
  update: T[];
  delete: unknown[];
}

export class RecordService<T = Record<string, unknown>> {
  readonly name: string;
  list(options?: ListOptions): Promise<Page<T & SystemFields>>;
  iterate(options?: Omit<ListOptions, "page" | "after">): AsyncGenerator<T & SystemFields>;
  getAll(options?: Omit<ListOptions, "page" | "after">): Promise<Array<T & SystemFields>>;
  get(id: string, options?: Pick<ListOptions, "fields" | "expand">): Promise<T & SystemFields>;
  create(data: Partial<T> & { _reason?: string }, options?: WriteOptions): Promise<T & SystemFields>;
  update(id: string, data: Partial<T> & { _reason?: string }, options?: WriteOptions): Promise<T & SystemFields>;
  replace(id: string, data: Partial<T> & { _reason?: string }, options?: WriteOptions): Promise<T & SystemFields>;
  delete(id: string, options?: WriteOptions): Promise<null>;
  batch(
    ops: {
      create?: Array<Partial<T>>;
      update?: Array<Partial<T> & { id: string; "@if_match"?: string }>;
      delete?: Array<string | { id: string; "@if_match"?: string; _reason?: string }>;
    },
    options?: WriteOptions,
  ): Promise<BatchAnswer<T & SystemFields>>;
  sign(id: string, body: { password: string; meaning: string }, options?: WriteOptions): Promise<Signature>;
  signatures(id: string): Promise<Signature[]>;
  history(id: string): Promise<History>;
}

export class AuthService {
  readonly store: MemoryAuthStore;
  register(body: { accountName: string; email: string; password: string; accountSlug?: string }): Promise<LoginAnswer>;
  login(body: { email: string; password: string; account: string }): Promise<LoginAnswer>;
  /** Single-flight: concurrent calls share one request. Usually automatic. */
  refresh(): Promise<Tokens>;
  logout(): Promise<void>;
  logoutAll(): Promise<void>;
  me(): Promise<{ user: User; account: Account }>;
  sessions(): Promise<Session[]>;
  revokeSession(id: string): Promise<null>;
  changePassword(body: { currentPassword: string; newPassword: string }): Promise<null>;
  requestPasswordReset(body: { email: string; account: string }): Promise<{ message: string }>;
  resetPassword(body: { token: string; newPassword: string }): Promise<null>;
}

export class SnackBase {
  readonly baseUrl: string;
  readonly apiPrefix: string;
  accountId: string | null;
  authStore: MemoryAuthStore;
  readonly auth: AuthService;
  /** How many refresh requests this client sent. */
  readonly refreshCount: number;
  constructor(baseUrl: string, options?: ClientOptions);
  collection<T = Record<string, unknown>>(name: string): RecordService<T>;
  /** The same client (same tokens) acting in another account. */
  withAccount(accountId: string): SnackBase;
  /** Any API call (path relative to the API prefix); throws a SnackBaseError subclass on failure. */
  send<T = unknown>(method: string, path: string, options?: SendOptions): Promise<T>;
}

export default SnackBase;
