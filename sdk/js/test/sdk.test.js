// The SDK against a real SnackBase server process (started here): run with `node --test test/`.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import SnackBase, {
  AuthError, ConflictError, ForbiddenError, NotFoundError, SnackBaseError, ValidationError, contains, filter, literal,
} from "../src/index.js";
import { SUPERADMIN, startServer } from "../test-support/server.js";

const PASSWORD = "Velvet-river-tablet-2026";
let server;
let su; // superadmin client
let owner; // an account admin, registered through the SDK
let accountId;

before(async () => {
  server = await startServer();
  su = new SnackBase(server.url);
  await su.auth.login(SUPERADMIN);
  await su.send("POST", "/collections", { body: {
    name: "authors",
    fields: [{ name: "name", type: "text", required: true }],
    rules: { list: "", view: "", create: "", update: "", delete: "" },
  } });
  await su.send("POST", "/collections", { body: {
    name: "books",
    fields: [
      { name: "title", type: "text", required: true, options: { max_length: 100 } },
      { name: "isbn", type: "text", unique: true },
      { name: "views", type: "number", options: { min: 0 } },
      { name: "status", type: "select", options: { values: ["draft", "published"] } },
      { name: "author", type: "reference", options: { collection: "authors" } },
      { name: "published_at", type: "datetime" },
    ],
    rules: { list: "", view: "", create: "@request.auth.id != null", update: "@request.auth.id != null",
      delete: "@has_role(\"admin\")" },
    audit: { require_reason: false },
  } });
  await su.send("POST", "/collections", { body: {
    name: "sops", fields: [{ name: "title", type: "text" }],
    rules: { list: "", view: "", create: "", update: "", delete: "" }, audit: { require_reason: true },
  } });
  owner = new SnackBase(server.url);
  const answer = await owner.auth.register({ accountName: "Readers Ltd", email: "owner@example.com", password: PASSWORD });
  accountId = answer.account.id;
});

after(async () => {
  await server?.stop();
});

describe("filters", () => {
  test("literal escapes quotes and backslashes and formats dates", () => {
    assert.equal(literal('say "hi" \\ bye'), '"say \\"hi\\" \\\\ bye"');
    assert.equal(literal(3), "3");
    assert.equal(literal(null), "null");
    assert.equal(literal(true), "true");
    assert.equal(literal(new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6))), '"2026-01-02T03:04:05.006Z"');
    assert.throws(() => literal(Number.NaN), TypeError);
    assert.throws(() => literal({}), TypeError);
  });

  test("filter fills placeholders with escaped values and IN lists", () => {
    assert.equal(filter("title = {:t} && views > {:n}", { t: 'a" || 1=1 || "', n: 5 }),
      'title = "a\\" || 1=1 || \\"" && views > 5');
    assert.equal(filter("status IN {:s}", { s: ["draft", "published"] }), 'status IN ("draft", "published")');
    assert.throws(() => filter("title = {:missing}", {}), /no value/);
  });
});

describe("auth", () => {
  test("register signs in; me and sessions describe the caller", async () => {
    const me = await owner.auth.me();
    assert.equal(me.user.email, "owner@example.com");
    assert.equal(me.user.role, "admin");
    const sessions = await owner.auth.sessions();
    assert.equal(sessions.filter((s) => s.current).length, 1);
  });

  test("a wrong password is an AuthError carrying the envelope", async () => {
    const client = new SnackBase(server.url);
    await assert.rejects(client.auth.login({ email: "owner@example.com", password: "wrong password!!", account: accountId }),
      (error) => error instanceof AuthError && error instanceof SnackBaseError && error.status === 401
        && error.code === "invalid_credentials" && error.requestId.length > 0);
  });

  test("refresh is single-flight: concurrent callers share one request and the session survives", async () => {
    const client = new SnackBase(server.url);
    await client.auth.login({ email: "owner@example.com", password: PASSWORD, account: accountId });
    const before = client.refreshCount;
    const answers = await Promise.all([1, 2, 3, 4, 5].map(() => client.auth.refresh()));
    assert.equal(client.refreshCount, before + 1);
    assert.ok(answers.every((a) => a === answers[0]));
    assert.equal((await client.auth.me()).user.email, "owner@example.com"); // a reused token would end it
  });

  test("an access token the server refuses is refreshed automatically, once, and the call retried", async () => {
    const client = new SnackBase(server.url);
    await client.auth.login({ email: "owner@example.com", password: PASSWORD, account: accountId });
    const [head, payload] = client.authStore.accessToken.split(".");
    client.authStore.accessToken = `${head}.${payload}.forged-signature`; // unexpired, but not valid
    const before = client.refreshCount;
    const [a, b] = await Promise.all([client.auth.me(), client.collection("books").list()]);
    assert.equal(a.user.email, "owner@example.com");
    assert.ok(Array.isArray(b.items));
    assert.equal(client.refreshCount, before + 1);
  });

  test("a missing access token is refreshed before the call", async () => {
    const client = new SnackBase(server.url);
    await client.auth.login({ email: "owner@example.com", password: PASSWORD, account: accountId });
    client.authStore.accessToken = "";
    const before = client.refreshCount;
    assert.equal((await client.auth.me()).user.email, "owner@example.com");
    assert.equal(client.refreshCount, before + 1);
  });

  test("logout ends the session: the old refresh token no longer works", async () => {
    const client = new SnackBase(server.url);
    await client.auth.login({ email: "owner@example.com", password: PASSWORD, account: accountId });
    const refreshToken = client.authStore.refreshToken;
    await client.auth.logout();
    assert.equal(client.authStore.accessToken, "");
    const other = new SnackBase(server.url);
    other.authStore.save({ access_token: "", refresh_token: refreshToken });
    await assert.rejects(other.auth.refresh(), AuthError);
    await assert.rejects(client.auth.me(), (error) => error instanceof AuthError && error.code === "unauthorized");
  });
});

describe("records", () => {
  test("create, get, update with a reason, replace, delete; history keeps the reason", async () => {
    const books = owner.collection("books");
    const created = await books.create({ title: "Dune", views: 1, status: "draft" }, { reason: "first draft – ok" });
    assert.equal(created.title, "Dune");
    assert.equal(created.account_id, accountId);
    const updated = await books.update(created.id, { views: 2 }, { reason: "fixing a typo: 100%" });
    assert.equal(updated.views, 2);
    const replaced = await books.replace(created.id, { title: "Dune Messiah" });
    assert.equal(replaced.views, null);
    assert.equal((await books.get(created.id, { fields: ["id", "title"] })).title, "Dune Messiah");
    const history = await books.history(created.id);
    assert.deepEqual(history.items.map((e) => e.reason), ["first draft – ok", "fixing a typo: 100%", null]);
    assert.equal(await books.delete(created.id), null);
    await assert.rejects(books.get(created.id), (error) => error instanceof NotFoundError && error.code === "not_found");
  });

  test("validation errors name each field; unique conflicts are ConflictErrors", async () => {
    const books = owner.collection("books");
    await assert.rejects(books.create({ title: "x".repeat(101), views: -1, status: "gone" }), (error) => {
      assert.ok(error instanceof ValidationError);
      assert.equal(error.code, "validation_failed");
      assert.deepEqual(Object.keys(error.fields).sort(), ["status", "title", "views"]);
      assert.equal(error.fields.title.code, "too_long");
      return true;
    });
    await books.create({ title: "One", isbn: "978-0" });
    await assert.rejects(books.create({ title: "Two", isbn: "978-0" }),
      (error) => error instanceof ValidationError && error.fields.isbn.code === "not_unique");
    const author = await owner.collection("authors").create({ name: "Referenced" });
    await books.create({ title: "Three", author: author.id });
    await assert.rejects(owner.collection("authors").delete(author.id),
      (error) => error instanceof ConflictError && error.status === 409);
  });

  test("rules: anonymous callers naming the account may list but not create", async () => {
    const anonymous = new SnackBase(server.url, { accountId });
    const page = await anonymous.collection("books").list({ perPage: 1 });
    assert.ok(page.total_items >= 1);
    await assert.rejects(anonymous.collection("books").create({ title: "nope" }), ForbiddenError);
  });

  test("a collection requiring reasons refuses writes without one", async () => {
    await assert.rejects(owner.collection("sops").create({ title: "SOP-1" }),
      (error) => error instanceof ValidationError && error.code === "reason_required");
    const sop = await owner.collection("sops").create({ title: "SOP-1" }, { reason: "initial release" });
    assert.equal(sop.title, "SOP-1");
  });

  test("list: a built filter (with quotes and %), sort, paging, cursor and expand", async () => {
    const author = await owner.collection("authors").create({ name: "Le Guin" });
    const books = owner.collection("books");
    const titles = ['The "Left" Hand', "100% Earthsea", "Earthsea_2", "Lathe"];
    for (const [i, title] of titles.entries()) {
      await books.create({ title, views: i * 10, author: author.id, status: "published",
        published_at: new Date(Date.UTC(2026, 0, i + 1)).toISOString() });
    }
    const quoted = await books.list({ filter: filter("title = {:t}", { t: 'The "Left" Hand' }) });
    assert.deepEqual(quoted.items.map((r) => r.title), ['The "Left" Hand']);
    const percent = await books.list({ filter: filter("title ~ {:q}", { q: contains("100%") }) });
    assert.deepEqual(percent.items.map((r) => r.title), ["100% Earthsea"]);
    const underscore = await books.list({ filter: filter("title ~ {:q}", { q: contains("a_") }) });
    assert.deepEqual(underscore.items.map((r) => r.title), ["Earthsea_2"]);
    const since = await books.list({ filter: filter("published_at >= {:d} && status = {:s}",
      { d: new Date(Date.UTC(2026, 0, 3)), s: "published" }), sort: "-views" });
    assert.deepEqual(since.items.map((r) => r.title), ["Lathe", "Earthsea_2"]);
    const page2 = await books.list({ filter: "status = \"published\"", sort: "views", page: 2, perPage: 3 });
    assert.equal(page2.total_items, 4);
    assert.equal(page2.total_pages, 2);
    assert.deepEqual(page2.items.map((r) => r.title), ["Lathe"]);
    const all = await books.getAll({ filter: "status = \"published\"", sort: "-views", perPage: 1 });
    assert.deepEqual(all.map((r) => r.title), ["Lathe", "Earthsea_2", "100% Earthsea", 'The "Left" Hand']);
    const expanded = await books.list({ filter: filter("author = {:a}", { a: author.id }), expand: ["author"], perPage: 1 });
    assert.equal(expanded.items[0].expand.author.name, "Le Guin");
    await assert.rejects(books.list({ filter: "views >" }),
      (error) => error instanceof ValidationError && error.code === "invalid_filter" && "filter" in error.fields);
  });

  test("batch: all operations in one transaction; a failure names the op and writes nothing", async () => {
    const books = owner.collection("books");
    const first = await books.create({ title: "Batch target" });
    const result = await books.batch({
      create: [{ title: "B1" }, { title: "B2" }],
      update: [{ id: first.id, views: 7 }],
    }, { reason: "bulk import" });
    assert.deepEqual(result.create.map((r) => r.title), ["B1", "B2"]);
    assert.equal(result.update[0].views, 7);
    const before = (await books.list({ skipTotal: false })).total_items;
    await assert.rejects(books.batch({ create: [{ title: "ok" }, { title: "" }] }), (error) => {
      assert.ok(error instanceof ValidationError);
      assert.ok(Object.keys(error.fields).some((k) => k.startsWith("create.1.")), JSON.stringify(error.fields));
      return true;
    });
    assert.equal((await books.list()).total_items, before);
  });

  test("signatures: sign with the password, list them, a wrong password is refused", async () => {
    const books = owner.collection("books");
    const book = await books.create({ title: "To be approved" });
    const signature = await books.sign(book.id, { password: PASSWORD, meaning: "approved" }, { reason: "release" });
    assert.equal(signature.meaning, "approved");
    assert.equal(signature.signer_name, "owner@example.com");
    await assert.rejects(books.sign(book.id, { password: "not my password", meaning: "approved" }),
      (error) => error instanceof AuthError && error.code === "invalid_credentials");
    let signatures = await books.signatures(book.id);
    assert.deepEqual(signatures.map((s) => [s.meaning, s.changed_since_signing]), [["approved", false]]);
    await books.update(book.id, { views: 1 });
    signatures = await books.signatures(book.id);
    assert.equal(signatures[0].changed_since_signing, true);
  });

  test("superadmins act in an account with withAccount", async () => {
    await assert.rejects(su.collection("authors").create({ name: "nobody" }),
      (error) => error instanceof ValidationError && error.code === "account_required");
    const record = await su.withAccount(accountId).collection("authors").create({ name: "Tolkien" });
    assert.equal(record.account_id, accountId);
  });
});
