// The control plane's JSON API, called with the session cookie. Refusals arrive as
// {"error":{"code","message"}} and become an ApiError carrying both.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** Calls `method path` with an optional JSON body; resolves to the JSON answer. */
export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!response.ok) {
    const error = (json && json.error) || {};
    throw new ApiError(
      response.status,
      error.code || "HTTP_" + response.status,
      error.message || "The server answered " + response.status + ".",
    );
  }
  return json;
}
