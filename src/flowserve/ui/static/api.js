// Talking to flowserve's public API: the key, the flow's interface, the run stream, stop.
//
// Runs are read from the v0 stream as JSON lines (POST /inference/v0/stream/…?delta=true)
// through fetch and a ReadableStream reader: EventSource cannot POST nor send an
// Authorization header, and JSON lines need no parser beyond splitting on "\n". Every line
// is a whole run envelope (contract 2.1): the new text per output, the run id, the nodes
// started and completed so far, and on the last one the final state, error and metadata.

const KEY = "flowserve.key.";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// A key given in the address's fragment (#key=…; browsers never send the fragment) is kept
// for this tab and taken out of the address, so it is not left in the history or on screen.
export function takeKeyFromFragment(org) {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const key = fragment.get("key");
  if (key === null) return;
  if (key) sessionStorage.setItem(KEY + org, key);
  fragment.delete("key");
  const rest = fragment.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

export const keys = {
  get: (org) => sessionStorage.getItem(KEY + org) || "",
  set: (org, key) => sessionStorage.setItem(KEY + org, key),
  forget: (org) => sessionStorage.removeItem(KEY + org),
};

const part = encodeURIComponent;

// The API's own words for an error answer ({"detail": …}, contract 2.2).
async function failure(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // not JSON: the status says it
  }
  let message;
  if (typeof detail === "string") message = detail;
  else if (Array.isArray(detail)) {
    // [{loc: ["body", "in-0"], msg}]: "in-0: msg"
    const where = (d) => (d.loc || []).slice(1).join(".") || "request";
    message = detail.map((d) => `${where(d)}: ${d.msg}`).join("; ");
  } else if (detail && typeof detail === "object" && detail.error) message = String(detail.error);
  else message = response.statusText;
  return new ApiError(response.status, message);
}

async function call(method, path, key, body) {
  const response = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${key}`,
      Accept: "application/json",
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export function flowInterface(ctx) {
  return call("GET", `/v1/orgs/${part(ctx.org)}/flows/${part(ctx.flow)}/interface`, ctx.key);
}

export function stopRun(ctx, runId) {
  const path = `/inference/v0/stop/${part(ctx.org)}/${part(ctx.flow)}?run_id=${part(runId)}`;
  return call("POST", path, ctx.key);
}

// The run's envelopes, as they arrive. Errors before the stream are ApiErrors with the
// status; a run that fails once streaming ends with an envelope whose state says so.
export async function* streamRun(ctx, body, signal) {
  const path = `/inference/v0/stream/${part(ctx.org)}/${part(ctx.flow)}?delta=true`;
  const response = await fetch(path, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${ctx.key}`,
      "Content-Type": "application/json",
      Accept: "application/x-ndjson",
    },
    body: JSON.stringify(body),
    cache: "no-store",
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line.trim()) yield JSON.parse(line);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

// What a user is told of an error: the status and the API's message.
export function describe(error) {
  if (error instanceof ApiError) {
    const fallback = error.status === 401 ? "invalid API key" : "request failed";
    return `${error.status}: ${error.message || fallback}`;
  }
  return `network error: ${error.message || error}`;
}
