// The interactive API docs: reads /openapi.json (as the pasted token sees the API), lists every
// operation, and sends "try it" requests to this server only. No framework, no other host, and only
// textContent (never innerHTML), so names from collection definitions cannot inject markup.
const prefix = document.body.dataset.apiPrefix || "/api/v1";
const state = { token: sessionStorage.getItem("sb-docs-token") || "", account: "", doc: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function headers(extra = {}) {
  const out = { ...extra };
  if (state.token) out.authorization = `Bearer ${state.token}`;
  if (state.account) out["x-account-id"] = state.account;
  return out;
}

function resolve(schema) {
  let seen = 0;
  while (schema && schema.$ref && seen++ < 20) {
    schema = state.doc.components.schemas[schema.$ref.split("/").pop()];
  }
  return schema || {};
}

// An example value for a schema: enough to start editing a request body.
function example(schema, depth = 0) {
  schema = resolve(schema);
  if (depth > 4) return null;
  if (schema.default !== undefined) return schema.default;
  if (schema.enum) return schema.enum[0];
  if (schema.anyOf) return example(schema.anyOf[0], depth + 1);
  if (schema.allOf) return Object.assign({}, ...schema.allOf.map((s) => example(s, depth + 1)));
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  if (type === "object") {
    const out = {};
    const required = new Set(schema.required || []);
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      if (required.has(name) || depth === 0) out[name] = example(prop, depth + 1);
    }
    delete out._reason;
    return out;
  }
  if (type === "array") return [example(schema.items || {}, depth + 1)].filter((v) => v !== null);
  if (type === "integer" || type === "number") return schema.minimum ?? 0;
  if (type === "boolean") return false;
  if (type === "string") {
    const formats = { email: "someone@example.com", uri: "https://example.com", date: "2026-01-31",
      "date-time": "2026-01-31T12:00:00.000Z" };
    return formats[schema.format] || "";
  }
  return null;
}

function schemaText(schema) {
  return JSON.stringify(resolve(schema), null, 2);
}

function paramRow(param) {
  const input = el("input", { name: param.name, "data-in": param.in, placeholder: param.schema?.type || "" });
  return el("tr", {}, el("td", {}, el("code", {}, param.name)), el("td", {}, param.in),
    el("td", {}, param.description || (param.required ? "required" : "")), el("td", {}, input));
}

function operationView(path, method, op) {
  const params = op.parameters || [];
  const body = op.requestBody?.content?.["application/json"]?.schema;
  const textarea = body ? el("textarea", { name: "body", spellcheck: "false" },
    JSON.stringify(example(body), null, 2)) : null;
  const output = el("pre", { class: "result", hidden: "" });
  const statusLine = el("p", { class: "status", hidden: "" });
  const form = el("form", { class: "try", onsubmit: (event) => {
    event.preventDefault();
    send(path, method, form, textarea, statusLine, output);
  } },
  params.length ? el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"),
    el("th", {}, "about"), el("th", {}, "value")), params.map(paramRow)) : null,
  textarea ? [el("p", {}, "Request body (JSON)"), textarea] : null,
  el("button", { type: "submit" }, "Send"));
  const responses = Object.entries(op.responses || {}).map(([code, response]) => {
    const schema = response.content?.["application/json"]?.schema;
    return el("tr", {}, el("td", {}, code), el("td", {}, response.description || ""),
      el("td", {}, schema ? el("details", {}, el("summary", {}, "schema"), el("pre", {}, schemaText(schema))) : ""));
  });
  const id = `op-${op.operationId}`;
  return el("details", { class: "op", id },
    el("summary", {}, el("span", { class: `method m-${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), el("span", {}, op.summary || "")),
    el("div", { class: "body" },
      el("p", {}, op.description || ""),
      body ? el("details", {}, el("summary", {}, "Request body schema"), el("pre", {}, schemaText(body))) : null,
      el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "meaning"), el("th", {}, "")), responses),
      el("h3", {}, "Try it"), form, statusLine, output));
}

async function send(path, method, form, textarea, statusLine, output) {
  let url = path;
  const query = new URLSearchParams();
  const extra = {};
  for (const input of form.querySelectorAll("input[data-in]")) {
    if (input.value === "") continue;
    if (input.dataset.in === "path") url = url.replace(`{${input.name}}`, encodeURIComponent(input.value));
    else if (input.dataset.in === "query") query.set(input.name, input.value);
    else if (input.dataset.in === "header") extra[input.name] = input.value;
  }
  const init = { method: method.toUpperCase(), headers: headers(extra) };
  if (textarea) {
    init.body = textarea.value;
    init.headers["content-type"] = "application/json";
  }
  const qs = query.toString();
  statusLine.hidden = false;
  output.hidden = false;
  try {
    const response = await fetch(qs ? `${url}?${qs}` : url, init);
    const text = await response.text();
    statusLine.className = `status ${response.ok ? "status-ok" : "status-err"}`;
    statusLine.textContent = `${response.status} ${response.statusText} · request id ${response.headers.get("x-request-id") || "-"}`;
    try { output.textContent = JSON.stringify(JSON.parse(text), null, 2); } catch { output.textContent = text; }
  } catch (error) {
    statusLine.className = "status status-err";
    statusLine.textContent = `The request failed: ${error.message}`;
    output.textContent = "";
  }
}

function render(doc) {
  const nav = document.getElementById("nav");
  const ops = document.getElementById("ops");
  nav.replaceChildren();
  ops.replaceChildren();
  const byTag = new Map();
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([path, method, op]);
    }
  }
  for (const [tag, list] of byTag) {
    nav.append(el("h2", {}, tag));
    ops.append(el("h2", {}, tag));
    for (const [path, method, op] of list) {
      nav.append(el("a", { href: `#op-${op.operationId}` }, `${method.toUpperCase()} ${path}`));
      ops.append(operationView(path, method, op));
    }
  }
}

async function load() {
  const who = document.getElementById("who");
  try {
    const response = await fetch(`${prefix}/openapi.json`, { headers: headers() });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      who.textContent = `${response.status}: ${error.message || "could not load the document"}`;
      if (response.status !== 401) return;
      state.token = "";
      return load();
    }
    state.doc = await response.json();
    who.textContent = state.token ? "token in use" : "anonymous";
    render(state.doc);
  } catch (error) {
    who.textContent = `The document could not be loaded: ${error.message}`;
  }
}

document.getElementById("token").value = state.token;
document.getElementById("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = document.getElementById("token").value.trim();
  state.account = document.getElementById("account").value.trim();
  sessionStorage.setItem("sb-docs-token", state.token);
  load();
});
load();
