// The page's start: which org, flow and mode the address names (/ui/{org}/{flow} is the
// form, /ui/{org}/{flow}/chat the chat), the key, the flow's interface, then the mode.

import { flowInterface, keys, takeKeyFromFragment } from "./api.js";
import { chatMode } from "./chat.js";
import { formMode } from "./form.js";
import { FlowGraph } from "./graph.js";
import { hintFor, Runner, Status } from "./run.js";

const $ = (id) => document.getElementById(id);

function where() {
  let parts;
  try {
    parts = location.pathname.split("/").slice(1).map((part) => decodeURIComponent(part));
  } catch {
    return null; // a malformed %-escape
  }
  const chat = parts.length === 4 && parts[3] === "chat";
  if (parts[0] !== "ui" || !(parts.length === 3 || chat) || !parts[1] || !parts[2]) return null;
  return { org: parts[1], flow: parts[2], mode: chat ? "chat" : "form" };
}

function askForKey(ctx) {
  const form = $("access");
  form.hidden = false;
  const input = $("key-input");
  input.focus();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    keys.set(ctx.org, input.value.trim());
    location.reload();
  });
}

async function main() {
  const status = new Status($("status"));
  const ctx = where();
  if (ctx === null) {
    status.error("not a flow's page: open /ui/{org}/{flow_id} or /ui/{org}/{flow_id}/chat");
    return;
  }
  takeKeyFromFragment(ctx.org);
  const base = `/ui/${encodeURIComponent(ctx.org)}/${encodeURIComponent(ctx.flow)}`;
  $("to-form").href = base;
  $("to-chat").href = `${base}/chat`;
  $(ctx.mode === "chat" ? "to-chat" : "to-form").setAttribute("aria-current", "page");
  document.body.dataset.mode = ctx.mode;
  $("flow-name").textContent = ctx.flow;

  ctx.key = keys.get(ctx.org);
  if (!ctx.key) {
    askForKey(ctx);
    return;
  }
  const forget = $("forget-key");
  forget.hidden = false;
  forget.addEventListener("click", () => {
    keys.forget(ctx.org);
    location.reload();
  });

  let iface;
  try {
    iface = await flowInterface(ctx);
  } catch (error) {
    status.error(error, hintFor(error));
    if (error.status === 401 || error.status === 403) askForKey(ctx);
    return;
  }
  const name = iface.name || iface.flow_id;
  document.title = `${name} · flowserve`;
  $("flow-name").textContent = name;
  $("flow-version").textContent = `${iface.flow_id} v${iface.version}`;
  $("flow-description").textContent = iface.description;

  const graph = new FlowGraph(iface);
  $("graph").append(graph.element);
  graph.table.attach($("node-stats"));
  $("graph-panel").hidden = false;

  const runner = new Runner(ctx, graph, status);
  const work = $("work");
  if (ctx.mode === "chat") chatMode(work, ctx, iface, runner);
  else formMode(work, iface, runner);
  document.body.dataset.ready = "true";
}

main();
