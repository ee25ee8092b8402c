// Data the sidebar and several screens share: the collection list (every admin may read the
// definitions; only superadmins change them) and the accounts.
import { api, isSuper } from "./api.svelte.js";

export const shared = $state({ collections: [], collectionsLoaded: false, accounts: [], roles: [] });

export async function loadCollections() {
  const res = await api("GET", "/collections");
  shared.collections = res.items || [];
  shared.collectionsLoaded = true;
}

export async function loadAccounts() {
  if (!isSuper()) return [];
  const res = await api("GET", "/accounts", { query: { per_page: 500 } });
  shared.accounts = res?.items || [];
  return shared.accounts;
}

export async function loadRoles() {
  try {
    const res = await api("GET", "/roles");
    shared.roles = res?.items || [];
  } catch {
    shared.roles = [{ name: "admin" }, { name: "user" }];
  }
  if (!shared.roles.length) shared.roles = [{ name: "admin" }, { name: "user" }];
  return shared.roles;
}

export function collectionByName(name) {
  return shared.collections.find((c) => c.name === name) || null;
}
