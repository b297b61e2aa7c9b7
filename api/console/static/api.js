// The console's only way to the service: the /v1 API with the key from sessionStorage (never a URL), so
// every scope is enforced by the API itself. Errors come back as ApiError with the API's code.

const KEY = "unlearnd.apiKey";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key.trim()),
  signOut: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(`${code}: ${message}`);
    Object.assign(this, { status, code, details, text: message });
  }
}

async function send(method, path, { query, accept } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  const headers = { Accept: accept || "application/json" };
  const key = session.key();
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(url, { method, headers, cache: "no-store", credentials: "omit" });
  } catch (e) {
    throw new ApiError(0, "unreachable", `cannot reach the service: ${e.message}`);
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    const err = body && body.error;
    throw err ? new ApiError(response.status, err.code, err.message, err.details)
              : new ApiError(response.status, "http_error", response.statusText);
  }
  return response;
}

export const api = {
  json: async (path, query) => (await send("GET", path, { query })).json(),
  text: async (path) => (await send("GET", path, { accept: "text/html" })).text(),
  raw: async (path) => (await send("GET", path)).text(),
  post: async (path) => (await send("POST", path)).json(),
};
