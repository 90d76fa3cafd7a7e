// The transcript: message articles, live streaming, copy buttons, auto-scroll.
//
// Assistant HTML always comes from the server, already sanitized (nh3): it is
// the one sanitizing path. The person's own text is set with textContent.
//
// Streaming: each event for an answer carries a sequence number. Finished
// blocks arrive once as `append` HTML; only the unfinished tail is replaced on
// each delta, so a long answer costs linear time. A late joiner gets a
// snapshot (seq N) and drops the events it already contains.

const STICK_DISTANCE = 80;

export class Transcript {
  constructor({ root, scroller, jump, onGap, onStreamingChange, onRetry, onContinue, onCurl, onEnd, onBranch }) {
    this.root = root;
    this.onBranch = onBranch;
    this.onRetry = onRetry;
    this.onContinue = onContinue;
    this.onCurl = onCurl;
    this.onEnd = onEnd;
    this.scroller = scroller;
    this.jump = jump;
    this.onGap = onGap;
    this.onStreamingChange = onStreamingChange;
    this.live = new Map(); // message id -> {seq, synced, buffer}
    this.stick = true;
    scroller.addEventListener("scroll", () => {
      this.stick = this.distanceFromBottom() < STICK_DISTANCE;
      if (this.stick) this.jump.hidden = true;
    }, { passive: true });
    jump.addEventListener("click", () => this.scrollToBottom());
    root.addEventListener("click", (event) => this.onClick(event));
    root.querySelectorAll("pre").forEach(decorateCode);
    root.querySelectorAll('article[data-status="streaming"]').forEach((article) => {
      // Rendered from the database (up to a second old): wait for a snapshot.
      this.live.set(article.dataset.id, { seq: -1, synced: false, buffer: [] });
    });
    const target = location.hash.startsWith("#m-") && document.getElementById(location.hash.slice(1));
    if (target) {
      // Opened from a search result: show that message, not the end.
      target.scrollIntoView({ block: "center" });
      target.classList.add("found");
      this.stick = false;
    } else {
      this.scrollToBottom();
    }
  }

  get streaming() {
    return this.live.size > 0;
  }

  distanceFromBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.stick = true;
    this.jump.hidden = true;
  }

  // Call around every change: keeps the view pinned unless the reader scrolled up.
  afterChange() {
    if (this.stick) this.scroller.scrollTop = this.scroller.scrollHeight;
    else this.jump.hidden = false;
  }

  article(id) {
    return this.root.querySelector(`article[data-id="${CSS.escape(id)}"]`);
  }

  addUserMessage(message) {
    if (this.article(message.id)) return;
    const template = document.createElement("template");
    template.innerHTML = message.article; // the server's message template: the person's text escaped
    this.root.append(template.content);
    this.scrollToBottom();
  }

  startAnswer(id, seq) {
    const existing = this.article(id);
    if (existing && existing.dataset.status !== "streaming") {
      // "Retry" writes the same answer again: start from empty.
      existing.dataset.status = "streaming";
      existing.querySelector(".answer").replaceChildren(typingIndicator(), actions());
    }
    if (!existing) {
      const article = el("article", { class: "msg msg-assistant", "data-role": "assistant", "data-id": id, "data-status": "streaming" });
      const answer = el("div", { class: "answer" });
      answer.append(typingIndicator(), actions());
      article.append(el("div", { class: "avatar", "aria-hidden": "true" }), answer);
      this.root.append(article);
    }
    const state = this.live.get(id);
    if (!state || seq === 0) {
      // A fresh start (seq 0) is the whole story from here: replay what arrived meanwhile.
      const buffered = state ? state.buffer.filter((e) => e.seq > 0) : [];
      this.live.set(id, { seq, synced: true, buffer: [] });
      buffered.sort((a, b) => a.seq - b.seq).forEach((e) => this.onAnswerEvent(e));
    }
    this.onStreamingChange(this.streaming);
    this.afterChange();
  }

  // Every event about an answer goes through here, in arrival order.
  onAnswerEvent(event) {
    const id = event.message;
    if (event.event === "message.start") return this.startAnswer(id, event.seq);
    if (event.event === "message.end") return this.endAnswer(event);
    let state = this.live.get(id);
    if (!state) {
      if (event.event !== "message.snapshot") return; // an answer we no longer follow
      this.startAnswer(id, -1);
      state = this.live.get(id);
    }
    if (event.event === "message.snapshot") {
      if (!this.article(id)) this.startAnswer(id, -1);
      this.applySnapshot(event);
      state.seq = event.seq;
      state.synced = true;
      const later = state.buffer.filter((e) => e.seq > event.seq).sort((a, b) => a.seq - b.seq);
      state.buffer = [];
      later.forEach((e) => this.onAnswerEvent(e));
      return;
    }
    if (!state.synced) { state.buffer.push(event); return; }
    if (event.seq <= state.seq) return; // already shown (it was in the snapshot)
    if (event.seq > state.seq + 1) {
      // A gap: ask for a fresh snapshot and hold events until it arrives.
      state.synced = false;
      state.buffer.push(event);
      this.onGap(id);
      return;
    }
    state.seq = event.seq;
    if (event.event === "message.retry") return this.showRetrying(id, event);
    this.applyDelta(id, event.parts);
  }

  showRetrying(id, event) {
    const answer = this.article(id)?.querySelector(".answer");
    if (!answer) return;
    let line = answer.querySelector(".retrying");
    if (!line) {
      line = el("p", { class: "note retrying", role: "status" });
      answer.prepend(line);
    }
    line.textContent = `Retrying… (attempt ${event.attempt} of ${event.retries}) ${event.reason}`;
    this.afterChange();
  }

  blockFor(article, part) {
    const answer = article.querySelector(".answer");
    let block = answer.querySelector(`[data-index="${part.index}"]`);
    if (block) return block;
    if (part.type === "thinking") {
      block = el("details", { class: "thinking", "data-index": part.index, open: "" });
      const summary = el("summary");
      summary.textContent = "Thinking";
      block.append(summary, streamingBody());
    } else if (part.type === "redacted_thinking") {
      block = el("p", { class: "redacted", "data-index": part.index });
      block.textContent = "Some of the model's reasoning was redacted by the API.";
    } else {
      block = streamingBody();
      block.dataset.index = part.index;
    }
    answer.insertBefore(block, answer.querySelector(".typing") || answer.querySelector(".actions"));
    return block;
  }

  applyDelta(id, parts) {
    const article = this.article(id);
    if (!article) return;
    article.querySelector(".retrying")?.remove();
    for (const part of parts) {
      const block = this.blockFor(article, part);
      const body = block.matches(".md") ? block : block.querySelector(".md");
      if (!body) continue;
      body.dataset.raw = (body.dataset.raw || "") + part.text;
      const committed = body.querySelector(":scope > .committed");
      const tail = body.querySelector(":scope > .tail");
      if (part.append) {
        const template = document.createElement("template");
        template.innerHTML = part.append; // sanitized on the server
        template.content.querySelectorAll("pre").forEach(decorateCode);
        committed.append(template.content);
      }
      if ("tail" in part) {
        tail.innerHTML = part.tail; // sanitized on the server
        tail.querySelectorAll("pre").forEach(decorateCode);
      } else if (part.text) {
        showUnrendered(tail, part.text);
      }
      if (part.type === "text" && part.text) closeThinking(article);
    }
    this.afterChange();
  }

  applySnapshot(event) {
    const article = this.article(event.message);
    article.querySelectorAll(".answer > [data-index]").forEach((node) => node.remove());
    for (const part of event.parts) {
      const block = this.blockFor(article, part);
      const body = block.matches(".md") ? block : block.querySelector(".md");
      if (!body) continue;
      body.dataset.raw = part.text;
      body.querySelector(":scope > .committed").innerHTML = part.html;
      body.querySelector(":scope > .tail").innerHTML = part.tail;
      body.querySelectorAll("pre").forEach(decorateCode);
    }
    this.afterChange();
  }

  endAnswer(event) {
    const id = event.message;
    this.live.delete(id);
    const template = document.createElement("template");
    template.innerHTML = event.article; // rendered by the server's message template
    const fresh = template.content.querySelector("article");
    fresh.querySelectorAll("pre").forEach(decorateCode);
    const article = this.article(id);
    if (article) article.replaceWith(fresh);
    else this.root.append(fresh);
    this.onStreamingChange(this.streaming);
    this.onEnd(event);
    this.afterChange();
  }

  // After a reconnect: which answers are really still streaming.
  reconcile(streamingIds) {
    const still = new Set(streamingIds);
    let stale = false;
    for (const article of this.root.querySelectorAll('article[data-status="streaming"]')) {
      if (!still.has(article.dataset.id)) stale = true;
    }
    for (const id of still) {
      if (!this.live.has(id)) this.live.set(id, { seq: -1, synced: false, buffer: [] });
      else this.live.get(id).synced = false;
    }
    this.onStreamingChange(this.streaming);
    return stale; // true: something finished while we were away
  }

  replaceAll(html) {
    const template = document.createElement("template");
    template.innerHTML = html; // server-rendered transcript
    template.content.querySelectorAll("pre").forEach(decorateCode);
    this.root.replaceChildren(template.content);
    this.live.clear();
    this.root.querySelectorAll('article[data-status="streaming"]').forEach((article) => {
      this.live.set(article.dataset.id, { seq: -1, synced: false, buffer: [] });
    });
    this.onStreamingChange(this.streaming);
    this.afterChange();
  }

  // Edit an earlier question: a new version of it is sent, the old one stays a "‹ ›" away.
  startEdit(article) {
    if (!article || article.querySelector(".edit-box")) return;
    const bubble = article.querySelector(".bubble");
    const form = el("form", { class: "edit-box" });
    const area = el("textarea", { "aria-label": "Edit message", rows: "3" });
    area.value = bubble ? bubble.dataset.raw ?? bubble.textContent : "";
    const send = el("button", { type: "submit", class: "primary" });
    send.textContent = "Send";
    const cancel = el("button", { type: "button", class: "icon-button" });
    cancel.textContent = "Cancel";
    const row = el("div", { class: "edit-actions" });
    row.append(cancel, send);
    form.append(area, row);
    article.classList.add("editing");
    article.append(form);
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
    const close = () => { form.remove(); article.classList.remove("editing"); };
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") { event.preventDefault(); close(); }
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!area.value.trim() && !article.querySelector(".message-files")) return;
      this.onBranch({ action: "edit", message: article.dataset.id, text: area.value });
    });
  }

  // A long conversation opens at its end; earlier messages come a page at a time.
  async showEarlier(button) {
    const holder = button.closest(".earlier");
    button.disabled = true;
    const id = location.pathname.split("/")[2];
    const response = await fetch(`/c/${id}/transcript/?before=${encodeURIComponent(button.dataset.before)}`, { credentials: "same-origin" });
    if (!response.ok) { button.disabled = false; return; }
    const template = document.createElement("template");
    template.innerHTML = await response.text(); // server-rendered transcript
    template.content.querySelectorAll("pre").forEach(decorateCode);
    const height = this.scroller.scrollHeight;
    holder.replaceWith(template.content);
    this.scroller.scrollTop += this.scroller.scrollHeight - height; // keep the reader's place
  }

  lastUserArticle() {
    const users = this.root.querySelectorAll('article[data-role="user"]');
    return users[users.length - 1] || null;
  }

  onClick(event) {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.classList.contains("copy-code")) {
      const code = button.closest(".code-block").querySelector("code");
      copyText(code.textContent, button);
    } else if (button.classList.contains("retry")) {
      if (!this.streaming) this.onRetry(button.closest("article").dataset.id);
    } else if (button.classList.contains("show-earlier")) {
      this.showEarlier(button);
    } else if (button.classList.contains("regenerate")) {
      if (!this.streaming) this.onBranch({ action: "regenerate", message: button.closest("article").dataset.id });
    } else if (button.classList.contains("branch")) {
      if (!this.streaming && button.dataset.target) this.onBranch({ action: "switch", message: button.dataset.target });
    } else if (button.classList.contains("edit")) {
      if (!this.streaming) this.startEdit(button.closest("article"));
    } else if (button.classList.contains("continue")) {
      if (!this.streaming) this.onContinue();
    } else if (button.classList.contains("curl")) {
      this.onCurl(button.closest("article").dataset.id);
    } else if (button.classList.contains("copy-message")) {
      const article = button.closest("article");
      const text = [...article.querySelectorAll(".answer > .md")].map((b) => b.dataset.raw || "").join("\n\n");
      copyText(text, button);
    }
  }
}

function el(tag, attrs = {}) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function streamingBody() {
  const body = el("div", { class: "md", "data-raw": "" });
  body.append(el("div", { class: "committed" }), el("div", { class: "tail" }));
  return body;
}

// Text whose markdown the server has not rendered yet (it re-renders a busy
// answer's tail less often than it sends text): shown as plain text at the end
// of the last block until the next rendered tail replaces it.
const CONTAINERS = new Set(["P", "UL", "OL", "LI", "BLOCKQUOTE", "DIV", "PRE", "CODE", "TABLE", "TBODY", "TR", "TD", "H1", "H2", "H3", "H4", "H5", "H6"]);

function showUnrendered(tail, text) {
  let target = tail;
  while (target.lastElementChild && CONTAINERS.has(target.lastElementChild.tagName)) target = target.lastElementChild;
  let span = target.lastChild;
  if (!(span instanceof HTMLElement && span.classList.contains("unrendered"))) {
    // A code block opened with nothing in it yet renders as one newline: the
    // text that follows is its first line, not its second.
    if (target.tagName === "CODE" && target.textContent === "\n") target.textContent = "";
    span = el("span", { class: "unrendered" });
    target.append(span);
  }
  span.textContent += text;
  if (target.tagName === "CODE") leaveClosedCode(tail, span);
}

// Text that arrived inside an open code block until it is rendered: once it
// holds the closing fence, the fence is not code and what follows it is not
// in the block; it goes on after the block (the next rendering puts it right).
const CLOSING_FENCE = /(^|\n)(`{3,}|~{3,})[ \t]*(\n|$)/;

function leaveClosedCode(tail, span) {
  const found = CLOSING_FENCE.exec(span.textContent);
  if (!found) return;
  const after = span.textContent.slice(found.index + found[0].length).replace(/^\n+/, "");
  span.textContent = span.textContent.slice(0, found.index + found[1].length);
  const rest = el("span", { class: "unrendered" });
  rest.textContent = after;
  tail.append(rest);
}

function closeThinking(article) {
  article.querySelectorAll("details.thinking[open]").forEach((d) => { d.open = false; });
}

function typingIndicator() {
  const typing = el("div", { class: "typing", "aria-label": "Claude is answering" });
  typing.append(el("span"), el("span"), el("span"));
  return typing;
}

function actions() {
  const bar = el("div", { class: "actions" });
  const copy = el("button", { type: "button", class: "icon-button copy-message", "aria-label": "Copy message", title: "Copy message" });
  copy.textContent = "Copy";
  bar.append(copy);
  return bar;
}

export function decorateCode(pre) {
  if (pre.parentElement && pre.parentElement.classList.contains("code-block")) return;
  const wrapper = el("div", { class: "code-block" });
  const bar = el("div", { class: "code-bar" });
  const lang = el("span", { class: "code-lang" });
  const code = pre.querySelector("code");
  const match = code && /language-([\w+#-]+)/.exec(code.className);
  lang.textContent = match ? match[1] : "text";
  const button = el("button", { type: "button", class: "copy-code", "aria-label": "Copy code" });
  button.textContent = "Copy code";
  bar.append(lang, button);
  pre.replaceWith(wrapper);
  wrapper.append(bar, pre);
}

async function copyText(text, button) {
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = label; }, 1500);
}
