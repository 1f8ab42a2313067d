// One run at a time, for either page: streams it, draws its progress on the graph, reports
// its end (or the error that ended it) in the status line, and stops it on request.

import { ApiError, describe, stopRun, streamRun } from "./api.js";
import { clear, duration, el } from "./dom.js";

// The status line under the header: what is happening, the last error, the run's id.
export class Status {
  constructor(element) {
    this.element = element;
  }

  show(kind, message, extra = []) {
    this.element.hidden = false;
    this.element.dataset.kind = kind;
    clear(this.element).append(el("span", { class: "message", text: message }), ...extra);
  }

  error(error, hint) {
    const extra = hint ? [el("span", { class: "hint", text: hint })] : [];
    this.show("error", typeof error === "string" ? error : describe(error), extra);
  }

  run(kind, message, runId) {
    this.show(kind, message, runId ? [el("code", { class: "run-id", text: runId })] : []);
  }
}

// Why a refused request was refused, and what to do about it.
export function hintFor(error) {
  if (!(error instanceof ApiError)) return "";
  if (error.status === 401) return "Enter a public API key of this organisation below.";
  if (error.status === 403) {
    return "This page needs a public key that allows its origin: " +
      `flowserve keys create --kind public --origin ${location.origin}`;
  }
  return "";
}

export class Runner {
  constructor(ctx, graph, status) {
    this.ctx = ctx;
    this.graph = graph;
    this.status = status;
    this.runId = null;
    this.controller = null;
    this.stopping = false; // a stop was asked for
    this.failure = null; // why the last run could not start, or its stream broke
    this.listeners = [];
  }

  get running() {
    return this.controller !== null;
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  changed() {
    for (const listener of this.listeners) listener(this);
  }

  // Runs the flow on `body`; `onText(outputId, text)` gets each output's new text. Resolves
  // to the last envelope, or null when the run could not start or the stream broke.
  async run(body, onText) {
    this.graph.reset();
    this.controller = new AbortController();
    this.runId = null;
    this.stopping = false;
    this.failure = null;
    this.changed();
    this.status.run("running", "starting…");
    const started = performance.now();
    let last = null;
    try {
      for await (const envelope of streamRun(this.ctx, body, this.controller.signal)) {
        if (this.runId === null && envelope.run_id) {
          this.runId = envelope.run_id;
          this.changed();
          this.status.run("running", "running", this.runId);
        }
        for (const [id, text] of Object.entries(envelope.outputs || {})) {
          if (text) onText(id, text);
        }
        this.graph.progress(envelope.progress_data);
        if (envelope.state !== "RUNNING") last = envelope;
      }
      if (last === null) {
        this.failure = "the stream ended before the run did";
        this.status.error(this.failure);
      } else {
        this.graph.finish(last.metadata);
        const took = duration(performance.now() - started);
        if (last.state === "COMPLETED") this.status.run("done", `completed in ${took}`, this.runId);
        else this.status.run(last.state === "FAILED" ? "error" : "cancelled",
          `${last.state}: ${last.error || "run ended"}`, this.runId);
      }
    } catch (error) {
      this.failure = error.name === "AbortError" ? "disconnected" : describe(error);
      if (error.name === "AbortError") this.status.run("cancelled", this.failure, this.runId);
      else this.status.error(error, hintFor(error));
    } finally {
      this.controller = null;
      this.changed();
    }
    return last;
  }

  // Asks the server to stop the run (it then ends the stream with a CANCELLED envelope);
  // if the server cannot be asked, leaving the stream cancels the run as well.
  async stop() {
    if (!this.running) return;
    this.stopping = true;
    this.changed();
    if (this.runId === null) {
      this.controller.abort();
      return;
    }
    try {
      await stopRun(this.ctx, this.runId);
    } catch (error) {
      if (!this.running) return; // it ended meanwhile: nothing to stop
      this.status.error(error, hintFor(error));
      this.controller.abort();
    }
  }
}
