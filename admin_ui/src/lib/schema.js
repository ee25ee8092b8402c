// Field types and options of SPEC section 5, and conversion between the API's field JSON and the
// editor's draft (which remembers each field's original name, so a rename is sent as previous_name).

export const TYPES = ["text", "number", "boolean", "email", "url", "date", "datetime", "select", "json", "reference", "user", "file"];
export const MASKS = ["email", "phone", "ssn", "name", "full"];
export const SYSTEM_FIELDS = ["id", "account_id", "created_at", "created_by", "updated_at", "updated_by"];

// option -> kind of input; every option of every type
export const OPTIONS = {
  text: { min_length: "int", max_length: "int", pattern: "text", searchable: "bool" },
  number: { min: "number", max: "number", integer_only: "bool" },
  boolean: {},
  email: {},
  url: {},
  date: { min: "date", max: "date" },
  datetime: { min: "text", max: "text" },
  select: { values: "list", multiple: "bool" },
  json: { max_bytes: "int" },
  reference: { collection: "collection", on_delete: ["restrict", "cascade", "set_null"], max_select: "int" },
  user: { on_delete: ["restrict", "set_null"] },
  file: { max_size: "int", max_files: "int", mime_types: "list", thumbs: "list", protected: "bool" },
};

export const OPTION_LABELS = {
  min_length: "Min length", max_length: "Max length", pattern: "Pattern (regex)", min: "Min", max: "Max",
  integer_only: "Integers only", values: "Values (one per line)", multiple: "Multiple", max_bytes: "Max bytes",
  collection: "Target collection", on_delete: "On delete", max_size: "Max size (bytes)",
  mime_types: "MIME types (one per line)", protected: "Protected (needs a file token)",
  searchable: "Full-text searchable", max_select: "Max records (above 1: a list of ids)",
  max_files: "Max files (1 = one file)", thumbs: "Thumb sizes (100x100, 0x300, 200x200f)",
};

let uid = 0;

export function draftField(f) {
  const options = {};
  const known = OPTIONS[f?.type || "text"] || {};
  for (const [key, kind] of Object.entries(known)) {
    const v = f?.options?.[key];
    if (kind === "list") options[key] = Array.isArray(v) ? v.join("\n") : "";
    else if (kind === "bool") options[key] = !!v;
    else options[key] = v === undefined || v === null ? "" : String(v);
  }
  return {
    key: ++uid,
    orig: f ? f.name : null,
    origType: f ? f.type : null,
    name: f?.name || "",
    type: f?.type || "text",
    required: !!f?.required,
    unique: !!f?.unique,
    index: !!f?.options?.index,
    defaultText: f?.default === undefined || f?.default === null ? "" : typeof f.default === "string" ? f.default : JSON.stringify(f.default),
    options,
    pii: !!f?.pii,
    mask: f?.mask || "",
    drop: false,
    open: !f,
  };
}

export function retype(d) {
  const fresh = draftField({ type: d.type, options: {} });
  d.options = fresh.options;
}

function parseDefault(d) {
  const t = d.defaultText;
  if (t === "") return undefined;
  if (["text", "email", "url", "date", "datetime", "reference", "user"].includes(d.type)) return t;
  if (d.type === "select" && !d.options.multiple) return t;
  try {
    return JSON.parse(t);
  } catch {
    return t; // the API names the problem at fields.N.default
  }
}

function optionValue(kind, raw) {
  if (kind === "bool") return raw ? true : undefined;
  if (kind === "list") {
    const items = String(raw).split(/\n|,/).map((s) => s.trim()).filter(Boolean);
    return items.length ? items : undefined;
  }
  if (raw === "" || raw === null || raw === undefined) return undefined;
  if (kind === "int" || kind === "number") {
    const n = Number(raw);
    return Number.isNaN(n) ? raw : n;
  }
  return raw;
}

/** The API field JSON of a draft; `withPrevious` adds previous_name for a renamed field (PATCH only). */
export function fieldBody(d, withPrevious) {
  const options = {};
  for (const [key, kind] of Object.entries(OPTIONS[d.type] || {})) {
    const v = optionValue(Array.isArray(kind) ? "text" : kind, d.options[key]);
    if (v !== undefined) options[key] = v;
  }
  if (d.index) options.index = true;
  const body = { name: d.name.trim(), type: d.type, required: d.required, unique: d.unique, options, pii: d.pii };
  const def = parseDefault(d);
  if (def !== undefined) body.default = def;
  if (d.pii && d.mask) body.mask = d.mask;
  if (withPrevious && d.orig && d.orig !== body.name) body.previous_name = d.orig;
  return body;
}

/** Human sentences for what a schema change does to existing data (shown before saving). */
export function describeChanges(drafts, total) {
  const lines = [];
  const n = total === null || total === undefined ? "all" : total === 1 ? "the 1" : `all ${total}`;
  for (const d of drafts) {
    const name = d.name.trim();
    if (d.orig && d.drop) {
      lines.push(`Drop “${d.orig}”: the column and its values in ${n} record${total === 1 ? "" : "s"} (every account) are deleted permanently. Past values stay in the audit trail.`);
    } else if (!d.orig) {
      lines.push(`Add “${name}” (${d.type}): existing records get ${d.defaultText ? "the default " + d.defaultText : "null"}${d.required && !d.defaultText ? " — refused with 409 if records exist, since it is required without a default" : ""}.`);
    } else {
      if (d.orig !== name) lines.push(`Rename “${d.orig}” → “${name}”: values are kept; filters and rules that name “${d.orig}” must be updated.`);
    }
  }
  return lines;
}
