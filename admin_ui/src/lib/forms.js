// Client-side checks and focus handling shared by forms: a typed value that cannot be parsed is an
// error next to its field (never silently null), and after a failed save focus goes to the problem.
import { tick } from "svelte";

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

/** A number input's text → {value} or {error}; "" is null (no value). */
export function parseNumber(text, options = {}) {
  const t = String(text ?? "").trim();
  if (t === "") return { value: null };
  if (/^[-+]?\d+,\d+$/.test(t)) return { error: `Not a number: “${t}”. Use a dot for decimals (e.g. ${t.replace(",", ".")}).` };
  if (!NUMBER.test(t)) return { error: `Not a number: “${t}”.` };
  const value = Number(t);
  if (!Number.isFinite(value)) return { error: `Not a number: “${t}”.` };
  if (options.integer_only && !Number.isInteger(value)) return { error: "Must be a whole number." };
  return { value };
}

/** Focuses (and scrolls to) the first invalid control inside `root`, else its error box. */
export async function focusProblem(root) {
  await tick();
  if (!root) return;
  const target = root.querySelector('[aria-invalid="true"]') || root.querySelector('[role="alert"]');
  if (!target) return;
  target.scrollIntoView?.({ block: "center" });
  if (target.matches("input, select, textarea, button")) target.focus();
  else {
    if (!target.hasAttribute("tabindex")) target.setAttribute("tabindex", "-1");
    target.focus();
  }
}

/** A masked value as the API renders PII the caller may not see ("******", "j***@x.com", "***-**-1234"). */
export function looksMasked(value) {
  return typeof value === "string" && /\*{3,}/.test(value);
}
