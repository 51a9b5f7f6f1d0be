// The /v1 API with the key typed into the page: kept in sessionStorage (this tab, this session), sent as Bearer.
const KEY = "logmem.inspector";

export function session() {
  try { return JSON.parse(sessionStorage.getItem(KEY)); } catch { return null; }
}

export function signIn(key, tenant) {
  sessionStorage.setItem(KEY, JSON.stringify({key, tenant: tenant || null}));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function call(method, path, {query, body} = {}) {
  const who = session();
  const headers = {Accept: "application/json"};
  if (who) headers.Authorization = `Bearer ${who.key}`;
  if (who && who.tenant) headers["X-Logmem-Tenant"] = who.tenant;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null && v !== "") params.set(k, v);
  const url = params.size ? `${path}?${params}` : path;
  const response = await fetch(url, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await response.json().catch(() => null);
  if (response.status === 401) {
    signOut();
    window.dispatchEvent(new CustomEvent("logmem:signed-out"));
  }
  if (!response.ok) throw new ApiError(response.status, (data && data.error && data.error.message) || response.statusText);
  return data;
}

export const get = (path, query) => call("GET", path, {query});
export const post = (path, body, query) => call("POST", path, {body, query});
export const del = (path) => call("DELETE", path);
