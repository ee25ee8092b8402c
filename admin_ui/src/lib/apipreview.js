// The API preview of one collection (pages/ApiPreview.svelte): example values built from the real
// field types and options, each operation in curl and SDK (sdk/js) form, its response shape, and
// what the collection's rules and field access mean for a caller. Pure functions, no requests.

export const SAMPLE_ID = "0193f3a2-7c4b-7a10-9d2e-5b6c7d8e9f00";
const DATE = "2026-12-01";
const DATETIME = "2026-12-01T09:30:00.000Z";

/** Every operation the preview shows: its rules and the field access list that applies. */
export const OPERATIONS = [
  { key: "list", label: "List / search", method: "GET", rules: ["list"], access: ["list"] },
  { key: "view", label: "View", method: "GET", rules: ["view"], access: ["view"] },
  { key: "create", label: "Create", method: "POST", rules: ["create"], access: ["create"] },
  { key: "update", label: "Update", method: "PATCH", rules: ["update"], access: ["update"] },
  { key: "delete", label: "Delete", method: "DELETE", rules: ["delete"], access: [] },
  { key: "batch", label: "Batch", method: "POST", rules: ["create", "update", "delete"], access: ["create", "update"] },
  { key: "realtime", label: "Realtime", method: "WS", rules: ["view"], access: ["view"] },
];

const between = (v, o) => (o.min != null && v < o.min ? o.min : o.max != null && v > o.max ? o.max : v);

/** An example value a field accepts, from its type and options (the JSON form of a create body). */
export function exampleValue(f) {
  const o = f.options || {};
  switch (f.type) {
    case "text": {
      let s = `Example ${f.name}`;
      if (o.min_length && s.length < o.min_length) s = s.padEnd(o.min_length, ".");
      return o.max_length ? s.slice(0, o.max_length) : s;
    }
    case "number":
      return between(o.integer_only ? 42 : 4.5, o);
    case "boolean":
      return true;
    case "email":
      return "ada@example.com";
    case "url":
      return "https://example.com/page";
    case "date":
      return between(DATE, o);
    case "datetime":
      return o.min && String(o.min) > DATETIME ? o.min : DATETIME;
    case "select": {
      const v = (o.values || [])[0] ?? "value";
      return o.multiple ? [v] : v;
    }
    case "json":
      return { key: "value", list: [1, 2] };
    case "reference":
      return (o.max_select || 1) > 1 ? [SAMPLE_ID] : SAMPLE_ID;
    case "user":
      return SAMPLE_ID;
    case "file": {
      const meta = { name: `${f.name}_k3j9x0q2ab.pdf`, original: `${f.name}.pdf`, size: 18231, type: "application/pdf", sha256: "9f86d081…", uploaded_at: DATETIME };
      return (o.max_files || 1) > 1 || o.multiple ? [meta] : meta;
    }
    default:
      return null;
  }
}

/** A short note on what a field's value must be, beyond its type. */
export function fieldNote(f) {
  const o = f.options || {};
  const notes = [];
  if (f.required) notes.push("required");
  if (f.type === "text" && o.pattern) notes.push(`must match ${o.pattern}`);
  if (f.type === "select") notes.push(`one${o.multiple ? " or more" : ""} of ${(o.values || []).join(", ")}`);
  if (f.type === "reference") notes.push(`id${(o.max_select || 1) > 1 ? "s" : ""} of a ${o.collection} record`);
  if (f.type === "user") notes.push("a user id of the account");
  if (f.type === "file") notes.push("multipart upload");
  if (f.pii) notes.push(`PII, masked (${f.mask || "full"}) for callers outside pii_access`);
  return notes.join("; ");
}

/** The field names an operation's field access allows (all when it is missing or ["*"]). */
export function allowedFields(collection, ops) {
  const names = collection.fields.map((f) => f.name);
  if (!ops.length) return null;
  const fa = collection.field_access || {};
  const ok = new Set();
  for (const op of ops) {
    const list = fa[op];
    for (const n of !list || list.includes("*") ? names : list) ok.add(n);
  }
  return names.filter((n) => ok.has(n));
}

/** What a rule value means for one operation, for callers in general and for the admin looking. */
export function ruleMeaning(rule, op, superadmin) {
  if (rule === null || rule === undefined) {
    return {
      kind: "superadmins only",
      text: "null: only superadmins; every other caller gets 403.",
      you: superadmin ? "You: allowed (superadmins bypass rules)." : "You: refused (403).",
    };
  }
  if (rule === "") {
    return {
      kind: "anyone",
      text: "\"\": anyone, also anonymous callers that name the account with X-Account-ID.",
      you: "You: allowed.",
    };
  }
  const fail = {
    list: "rows failing it are left out of the list and its count",
    view: "a record failing it answers 404",
    create: "a new record failing it is refused with 403",
    update: "a stored record failing it answers 404; a changed one failing it 403",
    delete: "a record failing it answers 404",
  }[op];
  return {
    kind: "expression",
    text: `${rule} — evaluated per caller and record; ${fail}.`,
    you: superadmin ? "You: allowed (superadmins bypass rules)." : "You: evaluated for you like for any user of your account.",
  };
}

// --- the example calls -----------------------------------------------------------------------------

const sq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
const ident = (name) => (/^[A-Za-z_$][\w$]*$/.test(name) ? name : "records");

/** The JSON body of a create (or, with `few`, of an update): the fields the operation may write. */
export function exampleBody(collection, op, few = false) {
  const allowed = new Set(allowedFields(collection, [op]));
  const fields = collection.fields.filter((f) => f.type !== "file" && allowed.has(f.name));
  const chosen = few ? fields.slice(0, 2) : fields;
  return Object.fromEntries(chosen.map((f) => [f.name, exampleValue(f)]));
}

/** A record as a caller reads it after `op` (list or view access), with expand for references. */
export function exampleRecord(collection, op) {
  const allowed = new Set(allowedFields(collection, [op]));
  const rec = { id: SAMPLE_ID, account_id: "AB1234" };
  for (const f of collection.fields) if (allowed.has(f.name)) rec[f.name] = exampleValue(f);
  Object.assign(rec, { created_at: DATETIME, created_by: SAMPLE_ID, updated_at: DATETIME, updated_by: SAMPLE_ID });
  return rec;
}

/** An example filter over the first field a list may filter on, by its type. */
export function exampleFilter(collection) {
  const allowed = new Set(allowedFields(collection, ["list"]));
  for (const f of collection.fields) {
    if (!allowed.has(f.name) || f.pii) continue;
    const v = exampleValue(f);
    if (f.type === "text") return { expr: `${f.name} ~ {:q}`, params: { q: "Example" }, text: `${f.name} ~ "Example"` };
    if (f.type === "number") return { expr: `${f.name} >= {:min}`, params: { min: v }, text: `${f.name} >= ${v}` };
    if (f.type === "boolean") return { expr: `${f.name} = {:on}`, params: { on: true }, text: `${f.name} = true` };
    if (f.type === "select" && !f.options?.multiple) return { expr: `${f.name} = {:v}`, params: { v }, text: `${f.name} = ${JSON.stringify(v)}` };
    if (f.type === "date" || f.type === "datetime") return { expr: `${f.name} >= {:since}`, params: { since: v }, text: `${f.name} >= ${JSON.stringify(v)}` };
  }
  return { expr: "created_at >= {:since}", params: { since: DATE }, text: `created_at >= "${DATE}"` };
}

function curl(method, url, { json, form, reason } = {}) {
  const lines = [`curl -X ${method} ${sq(url)}`, `-H "Authorization: Bearer $TOKEN"`];
  if (reason) lines.push(`-H "X-Audit-Reason: ${reason}"`);
  if (json !== undefined) lines.push(`-H "Content-Type: application/json"`, `-d ${sq(JSON.stringify(json))}`);
  for (const [k, v] of form || []) lines.push(`-F ${sq(`${k}=${v}`)}`);
  return lines.join(" \\\n  ");
}

const js = (v) => JSON.stringify(v, null, 2).replace(/\n/g, "\n  ");

/**
 * Every piece of one operation's preview: `curl`, `sdk` (sdk/js calls), `response` (its shape) and
 * `path`. `origin` is the server's address; `reason` is set when the collection requires one.
 */
export function buildExample(collection, key, origin) {
  const name = collection.name;
  const v = ident(name);
  const base = `${origin}/api/v1/records/${encodeURIComponent(name)}`;
  const one = `${base}/${SAMPLE_ID}`;
  const reason = collection.audit?.require_reason ? "why this change" : "";
  const ropt = reason ? `, { reason: ${JSON.stringify(reason)} }` : "";
  const refs = collection.fields.filter((f) => f.type === "reference").map((f) => f.name);
  const files = collection.fields.filter((f) => f.type === "file" && new Set(allowedFields(collection, [key === "update" ? "update" : "create"])).has(f.name));
  const head = `import SnackBase${key === "list" ? ", { filter }" : ""} from "snackbase"; // sdk/js\n\nconst sb = new SnackBase(${JSON.stringify(origin)});\nawait sb.auth.login({ email, password, account });\nconst ${v} = sb.collection(${JSON.stringify(name)});\n\n`;
  const record = exampleRecord(collection, key === "list" ? "list" : "view");
  if (refs.length && key !== "realtime") record.expand = Object.fromEntries(refs.map((r) => [r, { id: SAMPLE_ID, "…": "…" }]));
  const recordJson = JSON.stringify(record, null, 2);

  if (key === "list") {
    const f = exampleFilter(collection);
    const q = [["filter", f.text], ["sort", "-created_at"], ["page", "1"], ["per_page", "30"], ...(refs.length ? [["expand", refs.join(",")]] : [])];
    const c = [`curl -G ${sq(base)}`, `-H "Authorization: Bearer $TOKEN"`, ...q.map(([k, val]) => `--data-urlencode ${sq(`${k}=${val}`)}`)].join(" \\\n  ");
    const opts = [`filter: filter(${JSON.stringify(f.expr)}, ${JSON.stringify(f.params)})`, `sort: "-created_at"`, "page: 1", "perPage: 30", ...(refs.length ? [`expand: ${JSON.stringify(refs)}`] : [])];
    const sdk = `${head}const page = await ${v}.list({\n  ${opts.join(",\n  ")},\n});\n\n// every record, cursor-paged (consistent while records are inserted)\nfor await (const r of ${v}.iterate({ sort: "-created_at" })) console.log(r.id);`;
    const response = JSON.stringify({ items: [record], page: 1, per_page: 30, total_items: 1, total_pages: 1 }, null, 2);
    return { path: `GET /api/v1/records/${name}`, curl: c, sdk, response: "200 " + response };
  }
  if (key === "view") {
    const c = refs.length ? curl("GET", `${one}?expand=${refs.join(",")}`) : curl("GET", one);
    const sdk = `${head}const record = await ${v}.get(${JSON.stringify(SAMPLE_ID)}${refs.length ? `, { expand: ${JSON.stringify(refs)} }` : ""});`;
    return { path: `GET /api/v1/records/${name}/{id}`, curl: c, sdk, response: "200 " + recordJson };
  }
  if (key === "create" || key === "update") {
    const update = key === "update";
    const body = exampleBody(collection, key, update);
    const url = update ? one : base;
    const method = update ? "PATCH" : "POST";
    let c = curl(method, url, { json: body, reason });
    let sdk = `${head}const record = await ${v}.${key}(${update ? JSON.stringify(SAMPLE_ID) + ", " : ""}${js(body)}${ropt});`;
    if (files.length) {
      const form = [...Object.entries(body).map(([k, val]) => [k, typeof val === "string" ? val : JSON.stringify(val)]), ...files.map((f) => [f.name, `@./${f.name}.pdf`])];
      c = `# with files: multipart/form-data (files and fields in one request)\n${curl(method, url, { form, reason })}\n\n# without files: JSON\n${c}`;
      const appends = form.map(([k, val]) => `form.append(${JSON.stringify(k)}, ${val.startsWith("@") ? `fileInput.files[0]` : JSON.stringify(val)});`).join("\n");
      sdk += `\n\n// The SDK sends JSON; upload files with fetch and FormData (multipart):\nconst form = new FormData();\n${appends}\nconst res = await fetch(${JSON.stringify(url)}, {\n  method: "${method}",\n  headers: { Authorization: \`Bearer \${sb.authStore.accessToken}\`${reason ? `, "X-Audit-Reason": ${JSON.stringify(reason)}` : ""} },\n  body: form,\n});`;
    }
    return { path: `${method} /api/v1/records/${name}${update ? "/{id}" : ""}`, curl: c, sdk, response: `${update ? 200 : 201} ${recordJson}` };
  }
  if (key === "delete") {
    return { path: `DELETE /api/v1/records/${name}/{id}`, curl: curl("DELETE", one, { reason }), sdk: `${head}await ${v}.delete(${JSON.stringify(SAMPLE_ID)}${ropt});`, response: "204 No Content" };
  }
  if (key === "batch") {
    const ops = { create: [exampleBody(collection, "create")], update: [{ id: SAMPLE_ID, ...exampleBody(collection, "update", true) }], delete: [SAMPLE_ID] };
    const response = JSON.stringify({ create: [record], update: [record], delete: [SAMPLE_ID] }, null, 2);
    return {
      path: `POST /api/v1/records/${name}/batch`,
      curl: `# 1-100 operations, one transaction: all or nothing (JSON only, no file uploads)\n${curl("POST", `${base}/batch`, { json: ops, reason })}`,
      sdk: `${head}const done = await ${v}.batch(${js(ops)}${ropt});`,
      response: "200 " + response,
    };
  }
  // realtime: the SDK has no realtime client yet, so the browser's own WebSocket and EventSource
  const ws = origin.replace(/^http/, "ws");
  const event = JSON.stringify({ type: "create", collection: name, record: exampleRecord(collection, "view"), id: 1234 }, null, 2);
  const c = `# Server-Sent Events: the first event "connect" carries the client_id\ncurl -N ${sq(`${origin}/api/v1/realtime/sse`)} -H "Authorization: Bearer $TOKEN"\n\n# then choose its topics (same caller as the stream)\n${curl("POST", `${origin}/api/v1/realtime/subscriptions`, { json: { client_id: "$CLIENT_ID", topics: [name, `${name}/${SAMPLE_ID}`] } })}`;
  const sdk = `// The SDK has no realtime client yet: the browser's WebSocket\nconst ws = new WebSocket(${JSON.stringify(`${ws}/api/v1/realtime`)});\nws.onopen = () => {\n  ws.send(JSON.stringify({ type: "auth", token }));\n  ws.send(JSON.stringify({ type: "subscribe", topics: [${JSON.stringify(name)}] }));\n};\nws.onmessage = (m) => {\n  const msg = JSON.parse(m.data); // {type: "create" | "update" | "delete", collection, record, id}\n  if (["create", "update", "delete"].includes(msg.type)) console.log(msg.type, msg.record);\n  if (msg.type === "reload") location.reload(); // missed events are out of the resume window\n};`;
  return { path: "GET /api/v1/realtime (WebSocket), GET /api/v1/realtime/sse", curl: c, sdk, response: "event " + event };
}
