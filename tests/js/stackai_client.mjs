// The Stack AI docs' streaming client ("How to stream model responses"), run unchanged against
// flowserve by tests/test_js_client.py.
//
//   node stackai_client.mjs <base_url> <org> <flow_id> <api_key> '<inputs JSON>'
//
// Prints ONE JSON line on stdout:
//   {"outputs": <last parsed message>, "error": <message the promise rejected with, or null>,
//    "messages": <onmessage calls>, "status": <status seen in onopen>, "opens": <onopen calls>,
//    "requests": <HTTP requests sent>, "content_type": <content-type seen in onopen>,
//    "last_event_id": <the id of the last message, "<run_id>:<seq>">,
//    "sent_ids": <the last-event-id header each request carried, or null>}
// and exits 0. A non-zero exit means the script itself crashed.
//
// The example's code is in streamDataFromStack(); everything else is harness. Changes to the
// published snippet, all needed for it to run at all:
//   - the docs' `onmessage` checks an undefined `data.error`; it is read as `outputs.error`
//     (contract 1.3);
//   - the arrow function uses `await`, so it is declared `async`;
//   - its free variables (flow_id, org, PUBLIC_API_KEY, user_id, signal) come from argv or the
//     harness, the host is the flowserve base URL, and it returns `outputs`;
//   - lines marked `// harness` record what the example saw, and change nothing it does.
//
// With a 6th argument `retry`, `onerror` lets fetch-event-source retry network errors (its
// default, documented behaviour) instead of rethrowing them; errors the example throws itself
// (an error message from the server) still end it. The published snippet rethrows everything,
// which turns the library's automatic reconnect off (contract 1.3).

import { fetchEventSource } from "@microsoft/fetch-event-source";

// ---- harness: the browser globals fetch-event-source reads (it is written for a page) ----
// `window.fetch`, `window.setTimeout` / `clearTimeout` and `document`'s visibility events.
// Node 20 has a global fetch; the page is never hidden.
globalThis.window = globalThis;
globalThis.document = {
  hidden: false,
  addEventListener() {},
  removeEventListener() {},
};

// The example logs with console.*; keep stdout for the one result line.
console.log = (...args) => console.error(...args);

const [base, org, flow_id, PUBLIC_API_KEY, inputsJson, mode] = process.argv.slice(2);
const RETRY = mode === "retry"; // harness
if (!base || !org || !flow_id || PUBLIC_API_KEY === undefined || inputsJson === undefined) {
  console.error("usage: node stackai_client.mjs <base_url> <org> <flow_id> <api_key> '<inputs JSON>'");
  process.exit(2);
}
const givenInputs = JSON.parse(inputsJson);
const user_id = givenInputs.user_id;
const controller = new AbortController();
const signal = controller.signal;

const harness = {
  outputs: null,
  messages: 0,
  opens: 0,
  status: null,
  content_type: null,
  requests: 0,
  last_event_id: null,
  sent_ids: [],
};

// Count real HTTP requests too: a retry by fetch-event-source would show up here.
const realFetch = globalThis.fetch;
globalThis.fetch = (...args) => {
  harness.requests += 1;
  harness.sent_ids.push(args[1]?.headers?.["last-event-id"] ?? null);
  return realFetch(...args);
};

// ---- the Stack AI docs example ----
const streamDataFromStack = async () => {
  const inputsAPI = { ...givenInputs, user_id: user_id };
  var outputs = null;

  await fetchEventSource(`${base}/stream_exported_flow?flow_id=${flow_id}&org=${org}`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "Authorization": `Bearer ${PUBLIC_API_KEY}`,
      "Accept": "text/event-stream, text/plain",
    },
    body: JSON.stringify(inputsAPI),
    signal: signal,
    openWhenHidden: true,
    async onopen(res) {
      harness.opens += 1; harness.status = res.status; harness.content_type = res.headers.get("content-type"); // harness
      if (res.ok && res.status === 200) {
      }
      else if (
        res.status >= 400 &&
        res.status < 500 &&
        res.status !== 429
      ) {
        console.error("Client side error ", res);
      }
    },
    onmessage(event) {
      outputs = JSON.parse(event.data);
      harness.messages += 1; harness.outputs = outputs; harness.last_event_id = event.id; // harness
      if (outputs.error) {
        throw new Error(outputs.error);
      }
    },
    onclose() {
    },
    onerror(err) {
      if (RETRY && err instanceof TypeError) return; // harness: a dropped connection, retried
      throw err;
    },
  });
  return outputs;
};
// ---- end of the example ----

let error = null;
try {
  await streamDataFromStack();
} catch (err) {
  error = err instanceof Error ? err.message : String(err);
}

process.stdout.write(
  JSON.stringify({
    outputs: harness.outputs,
    error,
    messages: harness.messages,
    status: harness.status,
    opens: harness.opens,
    requests: harness.requests,
    content_type: harness.content_type,
    last_event_id: harness.last_event_id,
    sent_ids: harness.sent_ids,
  }) + "\n",
);
process.exit(0);
