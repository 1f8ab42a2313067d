// Form mode: a field per input of the flow (its description as the label, its default
// filled in), a run button, and a panel per output that fills in live as the run streams.

import { clear, el } from "./dom.js";
import { sources } from "./sources.js";

// A field for an input; `required` when the input has no default.
export function field(input) {
  const area = el("textarea", {
    name: input.id,
    id: `input-${input.id}`,
    rows: 2,
    required: input.default === null,
    value: input.default ?? "",
  });
  // the description and the id, or the id alone
  const names = input.description
    ? [
      el("span", { class: "description", text: input.description }),
      el("code", { class: "muted", text: input.id }),
    ]
    : [el("code", { class: "description", text: input.id })];
  const label = el("label", { for: area.id, class: "label" }, ...names);
  return el("div", { class: "field", dataset: { input: input.id } }, label, area);
}

export function values(fields) {
  const body = {};
  for (const area of fields.querySelectorAll("textarea[name]")) body[area.name] = area.value;
  return body;
}

export function formMode(root, iface, runner) {
  const fields = el("div", { class: "fields" }, ...iface.inputs.map(field));
  const run = el("button", { type: "submit", class: "primary", text: "Run" });
  const stop = el("button", { type: "button", class: "stop", text: "Stop", disabled: true });
  const form = el("form", { class: "run-form" }, fields, el("div", { class: "row" }, run, stop));
  const texts = new Map(); // output id -> its text node
  const panels = iface.outputs.map((output) => {
    const text = document.createTextNode("");
    texts.set(output.id, text);
    return el(
      "section",
      { class: "output", dataset: { output: output.id } },
      el("h3", {},
        el("code", { text: output.id }),
        el("span", { class: "muted", text: ` ← ${output.source}` })),
      el("div", { class: "output-text" }, text),
    );
  });
  const cited = el("div", { class: "cited" });
  root.append(form, el("div", { class: "outputs" }, ...panels), cited);

  runner.onChange(() => {
    run.disabled = runner.running;
    stop.disabled = !runner.running || runner.stopping;
  });
  stop.addEventListener("click", () => runner.stop());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (runner.running) return;
    for (const text of texts.values()) text.data = "";
    clear(cited);
    const last = await runner.run(values(fields), (id, delta) => texts.get(id)?.appendData(delta));
    const list = sources(last?.citations);
    if (list) cited.append(list);
  });
}
