// Chat mode: a conversation on the flow's chat pair (the input a message fills, the output
// that is the reply). Each conversation has its own user_id, which keys the flow's memory
// on the server; the page keeps the conversation (id and messages) in localStorage, so a
// reload shows it again and the next message continues it.

import { clear, el } from "./dom.js";
import { field, values } from "./form.js";
import { sources } from "./sources.js";

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // Pages served over plain http from another host are not a secure context: no randomUUID.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  const cut = [[0, 8], [8, 12], [12, 16], [16, 20], [20, 32]];
  return cut.map(([from, to]) => hex.slice(from, to)).join("-");
}

// {userId, turns: [{role: "user" | "assistant", text, state?, error?}]}
class Conversation {
  constructor(ctx) {
    this.storageKey = `flowserve.chat.${ctx.org}/${ctx.flow}`;
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(this.storageKey));
    } catch {
      saved = null; // unreadable: start afresh
    }
    const valid = saved && typeof saved.userId === "string" && Array.isArray(saved.turns);
    this.userId = valid ? saved.userId : newId();
    this.turns = valid ? saved.turns.filter((t) => t && typeof t.text === "string") : [];
    this.save();
  }

  save() {
    const saved = { userId: this.userId, turns: this.turns };
    localStorage.setItem(this.storageKey, JSON.stringify(saved));
  }

  restart() {
    this.userId = newId();
    this.turns = [];
    this.save();
  }
}

function bubble(turn) {
  const text = document.createTextNode(turn.text);
  const note = el("div", { class: "turn-note" });
  const cited = el("div", { class: "cited" });
  const node = el("div", { class: `turn ${turn.role}`, dataset: { role: turn.role } },
    el("div", { class: "turn-text" }, text), note, cited);
  const show = (t) => {
    node.dataset.state = t.state || "";
    note.textContent = t.error ? `${t.state || "ERROR"}: ${t.error}` : "";
    const list = sources(t.citations);
    cited.replaceChildren(...(list ? [list] : []));
  };
  show(turn);
  return { node, text, show };
}

export function chatMode(root, ctx, iface, runner) {
  const conversation = new Conversation(ctx);
  const { input: chatInput, output: chatOutput } = iface.chat;
  const log = el("div", { class: "conversation", "aria-live": "polite" });
  const others = iface.inputs.filter((input) => input.id !== chatInput);
  const extra = el("div", { class: "fields" }, ...others.map(field));
  const message = el("textarea", {
    id: "message",
    rows: 2,
    placeholder: chatInput ? "Message" : "This flow takes no message: send runs it",
    disabled: chatInput === null,
  });
  const send = el("button", { type: "submit", class: "primary", text: "Send" });
  const stop = el("button", { type: "button", class: "stop", text: "Stop", disabled: true });
  const retry = el("button", { type: "button", class: "retry", text: "Retry" });
  const fresh = el("button", { type: "button", class: "new", text: "New conversation" });
  const who = el("code", { class: "user-id" });
  const buttonRow = el("div", { class: "row" }, send, stop, retry, fresh);
  const composer = el("form", { class: "composer" }, message, buttonRow);
  root.append(
    el("p", { class: "muted conversation-id" }, "Conversation ", who),
    others.length
      ? el("details", { class: "other-inputs" }, el("summary", { text: "Other inputs" }), extra)
      : "",
    log,
    composer,
  );

  const render = () => {
    who.textContent = conversation.userId;
    clear(log).append(...conversation.turns.map((turn) => bubble(turn).node));
    log.scrollTop = log.scrollHeight;
  };
  const buttons = () => {
    send.disabled = runner.running;
    stop.disabled = !runner.running || runner.stopping;
    retry.disabled = runner.running || !conversation.turns.some((t) => t.role === "user");
    fresh.disabled = runner.running;
  };
  runner.onChange(buttons);

  async function ask(text) {
    conversation.turns.push({ role: "user", text });
    const reply = { role: "assistant", text: "", state: "RUNNING" };
    conversation.turns.push(reply);
    conversation.save();
    render();
    const shown = bubble(reply);
    log.lastChild.replaceWith(shown.node);
    const body = { ...values(extra), user_id: conversation.userId };
    if (chatInput !== null) body[chatInput] = text;
    const last = await runner.run(body, (id, delta) => {
      if (id !== chatOutput) return;
      reply.text += delta;
      shown.text.appendData(delta);
      log.scrollTop = log.scrollHeight;
    });
    reply.state = last ? last.state : "ERROR";
    reply.error = last ? last.error : runner.failure;
    reply.citations = last?.citations || [];
    shown.show(reply);
    conversation.save();
    buttons();
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    if (runner.running) return;
    const text = message.value;
    if (chatInput !== null && !text.trim()) return;
    message.value = "";
    ask(text);
  });
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  stop.addEventListener("click", () => runner.stop());
  // Sends the last message again, in place of its answer.
  retry.addEventListener("click", () => {
    const turns = conversation.turns;
    const at = turns.map((t) => t.role).lastIndexOf("user");
    if (at < 0 || runner.running) return;
    const text = turns[at].text;
    turns.splice(at);
    ask(text);
  });
  fresh.addEventListener("click", () => {
    conversation.restart();
    render();
    buttons();
  });
  render();
  buttons();
}
