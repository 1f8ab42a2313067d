// The flow's graph, drawn in SVG from its interface, top to bottom: inputs, then each node in
// the row after the deepest node it reads, then outputs. During a run each box says its state
// (data-state: idle, running, done, failed, cancelled); when the run ends, each node's
// tokens and time.

import { clear, duration, el } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const BOX_W = 120;
const BOX_H = 44;
const STEP_X = 132;
const STEP_Y = 76;
const PAD = 8;
const LABEL = 15; // characters shown in a box; the whole id is in its tooltip
const SHRINK = 0.6; // drawn at least this big: a wider graph scrolls

function shape(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

const short = (id) => (id.length > LABEL ? `${id.slice(0, LABEL - 1)}…` : id);

const STATES = { COMPLETED: "done", FAILED: "failed", CANCELLED: "cancelled", RUNNING: "running" };

// Row of each node: 1 + the deepest node it reads (inputs are row 0).
function depths(iface) {
  const nodes = new Map(iface.nodes.map((n) => [n.id, n]));
  const depth = new Map();
  const place = (id) => {
    if (!depth.has(id)) {
      depth.set(id, 1); // were there a cycle (the server refuses them): no endless descent
      depth.set(id, 1 + Math.max(0, ...nodes.get(id).deps.map(place)));
    }
    return depth.get(id);
  };
  for (const id of nodes.keys()) place(id);
  return depth;
}

export class FlowGraph {
  constructor(iface) {
    this.iface = iface;
    this.boxes = new Map(); // "kind:id" -> {group, stat}
    const depth = depths(iface);
    const last = 1 + Math.max(0, ...depth.values());
    const rows = Array.from({ length: last + 1 }, () => []);
    for (const input of iface.inputs) rows[0].push(`input:${input.id}`);
    for (const node of iface.nodes) rows[depth.get(node.id)].push(`node:${node.id}`);
    for (const output of iface.outputs) rows[last].push(`output:${output.id}`);
    const widest = Math.max(1, ...rows.map((row) => row.length));
    const spots = new Map();
    rows.forEach((row, y) => {
      const indent = ((widest - row.length) * STEP_X) / 2; // each row centred
      row.forEach((key, x) => {
        spots.set(key, { x: PAD + indent + x * STEP_X, y: PAD + y * STEP_Y });
      });
    });
    const width = 2 * PAD + (widest - 1) * STEP_X + BOX_W;
    const height = 2 * PAD + last * STEP_Y + BOX_H;
    this.element = shape("svg", {
      class: "graph",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": "the flow's graph",
    });
    this.element.style.maxWidth = `${width}px`;
    this.element.style.minWidth = `${Math.round(width * SHRINK)}px`;
    const edges = shape("g", { class: "edges" });
    const boxes = shape("g", { class: "boxes" });
    this.element.append(edges, boxes);

    const source = (id) => (this.isInput(id) ? `input:${id}` : `node:${id}`);
    const edge = (from, to) => {
      const a = spots.get(from);
      const b = spots.get(to);
      const x1 = a.x + BOX_W / 2;
      const y1 = a.y + BOX_H;
      const x2 = b.x + BOX_W / 2;
      const y2 = b.y;
      const bend = Math.max(16, (y2 - y1) / 2);
      const d = `M${x1},${y1} C${x1},${y1 + bend} ${x2},${y2 - bend} ${x2},${y2}`;
      edges.append(shape("path", { d, class: "edge", "data-from": from, "data-to": to }));
    };
    for (const node of iface.nodes) {
      for (const id of node.inputs) edge(`input:${id}`, `node:${node.id}`);
      for (const id of node.deps) edge(`node:${id}`, `node:${node.id}`);
    }
    for (const output of iface.outputs) edge(source(output.source), `output:${output.id}`);

    const box = (kind, id, type) => {
      const { x, y } = spots.get(`${kind}:${id}`);
      const stat = shape("text", { x: x + BOX_W / 2, y: y + 35, class: "stat" });
      const group = shape(
        "g",
        { class: `box kind-${kind}`, "data-kind": kind, "data-id": id, "data-state": "idle" },
        shape("title", {}, `${id} (${type})`),
        shape("rect", { x, y, width: BOX_W, height: BOX_H, rx: 7 }),
        shape("text", { x: x + BOX_W / 2, y: y + 18, class: "label" }, short(id)),
        stat,
      );
      boxes.append(group);
      this.boxes.set(`${kind}:${id}`, { group, stat });
    };
    for (const input of iface.inputs) box("input", input.id, "input");
    for (const node of iface.nodes) box("node", node.id, node.type);
    for (const output of iface.outputs) box("output", output.id, `output of ${output.source}`);

    this.table = new NodeTable(iface);
  }

  isInput(id) {
    return this.iface.inputs.some((input) => input.id === id);
  }

  set(kind, id, state, stat) {
    const box = this.boxes.get(`${kind}:${id}`);
    if (!box) return;
    box.group.dataset.state = state;
    if (stat !== undefined) box.stat.textContent = stat;
  }

  // Before a run: inputs given, nothing else started.
  reset() {
    for (const [key] of this.boxes) {
      const [kind, ...rest] = key.split(":");
      this.set(kind, rest.join(":"), kind === "input" ? "done" : "idle", "");
    }
    this.table.reset();
  }

  // Each envelope's progress_data: the nodes started and completed so far.
  progress(progress) {
    if (!progress) return;
    const completed = new Set(progress.completed_nodes || []);
    for (const id of progress.started_nodes || []) {
      this.set("node", id, completed.has(id) ? "done" : "running");
      this.table.state(id, completed.has(id) ? "done" : "running");
    }
    this.outputs();
  }

  // The last envelope: each node's final state, tokens (metadata.usage) and time
  // (metadata.nodes); a node that never started stays idle.
  finish(metadata) {
    const usage = metadata?.usage || {};
    const timings = metadata?.nodes || {};
    for (const node of this.iface.nodes) {
      const timing = timings[node.id];
      if (!timing) continue;
      const state = STATES[timing.state] || "idle";
      const tokens = usage[node.id]?.completion_tokens;
      const parts = [];
      if (tokens !== undefined && tokens !== null) parts.push(`${tokens} tok`);
      if (timing.duration_ms !== null) parts.push(duration(timing.duration_ms));
      this.set("node", node.id, state, parts.join(" · "));
      this.table.row(node.id, state, tokens, timing.duration_ms);
    }
    this.outputs();
  }

  // An output box shows the state of what it shows.
  outputs() {
    for (const output of this.iface.outputs) {
      const from = this.isInput(output.source) ? "input" : "node";
      const state = this.boxes.get(`${from}:${output.source}`)?.group.dataset.state;
      this.set("output", output.id, state || "idle");
    }
  }
}

// The same per-node facts as a table: state, completion tokens, time.
class NodeTable {
  constructor(iface) {
    this.rows = new Map();
    this.element = el("tbody");
    for (const node of iface.nodes) {
      const cells = [el("td", { text: "–" }), el("td", { text: "–" }), el("td", { text: "–" })];
      const row = el("tr", { dataset: { node: node.id } }, el("th", { text: node.id }), ...cells);
      this.rows.set(node.id, { row, cells });
      this.element.append(row);
    }
  }

  attach(table) {
    clear(table).append(
      el("thead", {},
        el("tr", {}, ...["node", "state", "tokens", "time"].map((t) => el("th", { text: t })))),
      this.element,
    );
  }

  reset() {
    for (const { row, cells } of this.rows.values()) {
      row.dataset.state = "idle";
      for (const cell of cells) cell.textContent = "–";
    }
  }

  state(id, state) {
    const entry = this.rows.get(id);
    if (!entry) return;
    entry.row.dataset.state = state;
    entry.cells[0].textContent = state;
  }

  row(id, state, tokens, ms) {
    this.state(id, state);
    const entry = this.rows.get(id);
    if (!entry) return;
    entry.cells[1].textContent = tokens === undefined || tokens === null ? "–" : String(tokens);
    entry.cells[2].textContent = duration(ms);
  }
}
