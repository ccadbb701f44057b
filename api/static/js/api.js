// fetch() wrapper: JSON, errors with the server's message, ETag revalidation, and the API key.
//
// The key lives in sessionStorage (this tab only). Any 401 opens the key dialog once (requests
// that fail meanwhile wait for the same answer) and the request is retried with the key.

const KEY = "bnlab.apiKey";
let asking = null;

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body?.detail;
    const text = Array.isArray(detail) ? detail.join("\n") :
      typeof detail === "string" ? detail : (body?.error || `HTTP ${status}`);
    super(text);
    this.status = status;
    this.body = body;
  }
}

export function apiKey() { return sessionStorage.getItem(KEY); }

export function forgetKey() {
  sessionStorage.removeItem(KEY);
  document.getElementById("forget-key").hidden = true;
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

function askForKey(message) {
  if (asking) return asking;
  const dialog = document.getElementById("auth");
  const form = document.getElementById("auth-form");
  const input = document.getElementById("auth-key");
  const error = document.getElementById("auth-error");
  error.hidden = !message;
  error.textContent = message || "";
  input.value = "";
  asking = new Promise((resolve) => {
    form.addEventListener("submit", () => {
      sessionStorage.setItem(KEY, input.value.trim());
      document.getElementById("forget-key").hidden = false;
      asking = null;
      resolve();
    }, { once: true });
  });
  // Escape would close the dialog and leave every waiting request hanging: keep it open
  dialog.addEventListener("cancel", (e) => e.preventDefault(), { once: true });
  if (!dialog.open) dialog.showModal();
  return asking;
}

/** fetch with the key; asks for a key on 401 and retries (once per fresh key). */
export async function request(path, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(path, { ...init, headers: authHeaders(init.headers) });
    if (res.status !== 401 || attempt >= 3) return res;
    await askForKey(attempt ? "That key was refused; try another." : "");
  }
}

async function parse(res) {
  const type = res.headers.get("content-type") || "";
  if (type.includes("application/json")) return res.json();
  return res.text();
}

/** JSON in, JSON out; throws ApiError with the server's `detail` on non-2xx. */
export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await request(path, init);
  const data = res.status === 204 ? null : await parse(res);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/** GET that revalidates with If-None-Match: returns {changed, data}; data is the cached body
 *  on 304. One cache per path, kept for the page's lifetime (small JSON bodies). */
const etags = new Map();
export async function getFresh(path, { signal } = {}) {
  const cached = etags.get(path);
  const headers = { Accept: "application/json" };
  if (cached) headers["If-None-Match"] = cached.etag;
  const res = await request(path, { headers, signal });
  if (res.status === 304 && cached) return { changed: false, data: cached.data };
  const data = await parse(res);
  if (!res.ok) throw new ApiError(res.status, data);
  const etag = res.headers.get("etag");
  if (etag) etags.set(path, { etag, data });
  return { changed: true, data };
}

/** Download an authenticated file: a plain link cannot send the Authorization header. */
export async function download(url, filename) {
  const res = await request(url);
  if (!res.ok) throw new ApiError(res.status, await parse(res));
  const blob = await res.blob();
  const name = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") || "")?.[1];
  const a = Object.assign(document.createElement("a"),
    { href: URL.createObjectURL(blob), download: name || filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}
