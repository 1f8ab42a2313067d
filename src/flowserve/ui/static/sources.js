// The sources a run's answer came from: the final v0 envelope's `citations` (knowledge-base
// and per-user document results, contract 3.7), numbered as the model saw them. Shown as
// text, like everything else from the API.

import { el } from "./dom.js";

const SNIPPET = 280; // characters of each cited text shown

// A "Sources" list for `citations`, or null when there are none.
export function sources(citations) {
  if (!Array.isArray(citations) || citations.length === 0) return null;
  const items = citations.map((c) => {
    const where = [c.document_name || "document"];
    if (c.page !== null && c.page !== undefined) where.push(`page ${c.page}`);
    const text = typeof c.text === "string" ? c.text : "";
    const snippet = text.length > SNIPPET ? `${text.slice(0, SNIPPET)}…` : text;
    return el("li", { class: "source", dataset: { index: String(c.index ?? "") } },
      el("span", { class: "source-name", text: `[${c.index}] ${where.join(", ")}` }),
      el("blockquote", { class: "source-text", text: snippet }));
  });
  return el("section", { class: "sources" }, el("h3", { text: "Sources" }), el("ol", {}, ...items));
}
