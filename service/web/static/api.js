// Talking to the service: the API key, JSON calls, the upload with progress, fetched media.
//
// Every URL here is relative ("jobs", not "/jobs"), so the page keeps working behind a proxy that
// serves the service under a prefix. The key, when the service wants one, travels as the X-API-Key
// header (service/api/auth.py); <img> and <video> cannot send headers, so media is fetched with the
// header and shown from a blob: URL.

const KEY_STORAGE = "dfs-api-key"; // sessionStorage: gone when the tab closes, never sent elsewhere

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage refused (private mode, policy): the page still works without a key
  }
}

export function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    /* nothing to keep it in: the key is used for this page's life only */
  }
}

function authHeaders() {
  const key = storedKey();
  return key ? { "X-API-Key": key } : {};
}

/** An error the service answered with ({"error", "detail", "request_id"}) or a network failure. */
export class ApiError extends Error {
  constructor(status, code, detail, requestId) {
    super(describe(status, code, detail));
    this.status = status;
    this.code = code;
    this.requestId = requestId || null;
  }
}

function describe(status, code, detail) {
  if (status === 401) return "This service needs an API key: enter it under “API key” and try again.";
  if (status === 0) return "The service could not be reached.";
  const text = typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : "";
  return `${code || `HTTP ${status}`}${text ? `: ${text}` : ""}`;
}

async function errorFrom(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    /* not JSON (a proxy's page, uvicorn's plain 503): keep the status alone */
  }
  return new ApiError(response.status, body.error, body.detail, body.request_id);
}

/** fetch() with the key; rejects with ApiError on a non-2xx answer or a network failure. */
export async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch {
    throw new ApiError(0);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function requestJson(url, options = {}) {
  return (await request(url, options)).json();
}

export function submitUrl(videoUrl) {
  return requestJson("jobs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ file_path: videoUrl }),
  });
}

/**
 * POST the file as multipart field "file" with XMLHttpRequest, because fetch() reports no upload
 * progress. Returns {promise, abort}; onProgress gets the fraction sent (0..1).
 */
export function submitFile(path, file, onProgress) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      const body = xhr.response || {};
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body.error, body.detail, body.request_id));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0)));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "cancelled", "upload cancelled")));
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

/** A blob: URL for a media file of the job, or null when the service has none (404). */
export async function mediaUrl(url) {
  try {
    const response = await request(url);
    return URL.createObjectURL(await response.blob());
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}
