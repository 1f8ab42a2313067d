// Building the page's elements. Text is only ever set as text (text nodes, textContent):
// nothing the API or a model sends is parsed as HTML. The page's Content-Security-Policy is
// the second line of defence, not the first.

// el("button", {class: "x", type: "button", on: {click: f}}, "Send"): attribute names are
// this page's own, never the API's; children that are strings become text nodes.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "value") node.value = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

// "12.3 s", "450 ms"
export function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1) return "<1 ms";
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}
