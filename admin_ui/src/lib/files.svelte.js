// File URLs for the console: downloads and thumbnails go through `?token=` (a 3-minute file token,
// asked for once and renewed before it expires), since an <img> or a download link cannot send the
// Authorization header.
import { API, api } from "./api.svelte.js";

let cached = { token: "", until: 0, pending: null };

async function fileToken() {
  if (cached.token && Date.now() < cached.until) return cached.token;
  if (!cached.pending) {
    cached.pending = api("POST", "/files/token")
      .then((res) => {
        cached = { token: res.token, until: Date.now() + (res.expires_in - 30) * 1000, pending: null };
        return res.token;
      })
      .finally(() => (cached.pending = null));
  }
  return cached.pending;
}

/** The URL of a stored file, with a file token and the given query (thumb, download). */
export async function fileUrl(collection, recordId, name, query = {}) {
  const params = new URLSearchParams({ ...query, token: await fileToken() });
  return `${API}/files/${encodeURIComponent(collection)}/${encodeURIComponent(recordId)}/${encodeURIComponent(name)}?${params}`;
}

/** The URL of a file of a user's profile (an avatar), with a file token and the given query. */
export async function profileFileUrl(userId, name, query = {}) {
  const params = new URLSearchParams({ ...query, token: await fileToken() });
  return `${API}/profiles/${encodeURIComponent(userId)}/files/${encodeURIComponent(name)}?${params}`;
}
