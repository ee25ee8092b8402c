// Confirmation dialogs and toasts, shown by the hosts in App.svelte.

export const confirmState = $state({ open: false, title: "", message: "", details: [], confirmLabel: "Confirm",
  danger: true, typeToConfirm: "", askReason: false, reasonRequired: false, resolve: null });

/** await confirmAction({title, message, details: [..], confirmLabel, danger, typeToConfirm, askReason}) -> boolean,
 * or with askReason: the reason text ("" when none was given) or false. */
export function confirmAction(opts) {
  return new Promise((resolve) => {
    Object.assign(confirmState, { details: [], confirmLabel: "Confirm", danger: true, typeToConfirm: "", message: "", askReason: false, reasonRequired: false },
      opts, { open: true, resolve });
  });
}

export const toasts = $state({ items: [] });
let nextId = 1;

export function toast(message, kind = "success") {
  const id = nextId++;
  toasts.items.push({ id, message, kind });
  if (toasts.items.length > 3) toasts.items.splice(0, toasts.items.length - 3);
  setTimeout(() => {
    const i = toasts.items.findIndex((t) => t.id === id);
    if (i >= 0) toasts.items.splice(i, 1);
  }, kind === "error" ? 7000 : 3000);
}

/** Runs `action` (an API call); toasts `done` when it succeeds and the error's message when it fails.
 * Returns whether it succeeded, so the caller reloads only then. */
export async function attempt(action, done) {
  try {
    await action();
    toast(done);
    return true;
  } catch (err) {
    toast(err.message, "error");
    return false;
  }
}

export function fmtDate(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A record value as plain text for a table cell (never HTML). */
export function cellText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function fieldErr(err, name) {
  return err?.fields?.[name]?.message || "";
}

/** Field errors not shown next to an input (their names are not in `shown`). */
export function otherErrors(err, shown) {
  if (!err?.fields) return [];
  return Object.entries(err.fields).filter(([k]) => !shown.some((s) => k === s || k.startsWith(s + "."))).map(([k, v]) => `${k}: ${v.message}`);
}

export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
