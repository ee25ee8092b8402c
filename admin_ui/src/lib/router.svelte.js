// Hash routing (#/collections/posts/records): the server's SPA fallback never sees these paths.

export const route = $state({ path: "/", parts: [], query: {} });
export const reload = $state({ key: 0 });

function parse() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = hash.split("?");
  route.path = path;
  route.parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  route.query = Object.fromEntries(new URLSearchParams(search));
}

export function startRouter() {
  parse();
  window.addEventListener("hashchange", parse);
}

export function go(path, query) {
  const search = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v != null)).toString() : "";
  location.hash = "#" + path + (search ? "?" + search : "");
}

export function href(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
}

/** Re-runs the current screen's loads (after "retry" in the API-down banner). */
export function refreshScreen() {
  reload.key++;
}
