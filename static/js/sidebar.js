// The sidebar: past conversations page by page, search, archive, import, and
// live updates from the person's other tabs; plus the conversation menu
// (rename, pin, archive, delete) and the keyboard shortcuts.

import { csrfToken } from "./attachments.js";

const $ = (id) => document.getElementById(id);

export class Sidebar {
  constructor({ getConversationId, onDeletedHere }) {
    this.getConversationId = getConversationId;
    this.onDeletedHere = onDeletedHere;
    this.list = $("conversation-list");
    this.nav = $("conversation-nav");
    this.results = $("search-results");
    this.searchBox = $("search");
    this.alert = $("sidebar-alert");
    this.archived = false;
    this.observer = new IntersectionObserver((entries) => {
      for (const entry of entries) if (entry.isIntersecting) this.loadMore(entry.target);
    }, { root: this.nav, rootMargin: "200px" });
    this.watchMore();
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest(".load-more");
      if (button) this.loadMore(button.closest(".more"));
    });

    let timer = null;
    this.searchBox.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.search(), 200);
    });
    this.searchBox.addEventListener("keydown", (event) => {
      if (event.key === "Escape") { this.searchBox.value = ""; this.search(); }
      if (event.key === "Enter") this.results.querySelector("a")?.click();
    });

    $("show-archived").addEventListener("click", () => this.showArchived(!this.archived));
    $("back-to-chats").addEventListener("click", () => this.showArchived(false));
    $("import-file").addEventListener("change", (event) => this.importFile(event.target));
    this.setupMenu();
    this.setupShortcuts();
  }

  say(text) {
    this.alert.textContent = text;
  }

  watchMore() {
    const more = this.list.querySelector(".more");
    if (more) this.observer.observe(more);
  }

  async fetchItems(params) {
    const query = new URLSearchParams({ ...params, current: this.getConversationId() || "" });
    const response = await fetch(`/conversations/?${query}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const template = document.createElement("template");
    template.innerHTML = await response.text(); // server-rendered, titles escaped
    return template.content;
  }

  async loadMore(more) {
    if (!more || more.dataset.loading) return;
    more.dataset.loading = "1";
    try {
      const items = await this.fetchItems({ cursor: more.dataset.cursor, ...(this.archived ? { archived: "1" } : {}) });
      const headings = [...this.list.querySelectorAll(".group-heading")];
      const last = headings[headings.length - 1]?.dataset.group;
      const first = items.querySelector(".group-heading");
      if (first && first.dataset.group === last) first.remove(); // the group goes on from the last page
      this.observer.unobserve(more);
      more.replaceWith(items);
      this.watchMore();
    } catch {
      delete more.dataset.loading;
      this.say("Could not load more conversations. Scroll again to retry.");
    }
  }

  async refresh() {
    try {
      const items = await this.fetchItems(this.archived ? { archived: "1" } : {});
      this.list.replaceChildren(items);
      this.watchMore();
    } catch {
      /* the list stays as it was; the next change refreshes it */
    }
  }

  async showArchived(on) {
    this.archived = on;
    $("back-to-chats").hidden = !on;
    $("show-archived").textContent = on ? "Back to chats" : "Archived chats";
    await this.refresh();
  }

  async search() {
    const q = this.searchBox.value.trim();
    if (!q) {
      this.results.hidden = true;
      this.results.replaceChildren();
      this.nav.hidden = false;
      return;
    }
    const response = await fetch(`/search/?${new URLSearchParams({ q })}`, { credentials: "same-origin" });
    if (!response.ok || this.searchBox.value.trim() !== q) return;
    this.results.innerHTML = await response.text(); // server-rendered: snippets escaped, matches in <mark>
    this.results.hidden = false;
    this.nav.hidden = true;
  }

  // The person sent a message in this conversation: it moves to the top.
  touch(conversation) {
    $("no-conversations")?.remove();
    let item = this.list.querySelector(`li.conv-item[data-id="${CSS.escape(conversation.id)}"]`);
    if (!item) {
      item = document.createElement("li");
      item.className = "conv-item";
      item.dataset.id = conversation.id;
      const link = document.createElement("a");
      link.href = `/c/${conversation.id}/`;
      link.dataset.id = conversation.id;
      item.append(link);
    }
    const link = item.querySelector("a");
    link.textContent = conversation.title;
    this.markCurrent(conversation.id);
    if (item.dataset.pinned || this.archived) return;
    let today = this.list.querySelector('.group-heading[data-group="Today"]');
    if (!today) {
      today = document.createElement("li");
      today.className = "group-heading";
      today.dataset.group = "Today";
      const h = document.createElement("h3");
      h.textContent = "Today";
      today.append(h);
      const afterPinned = [...this.list.children].find((li) => li.classList.contains("group-heading") && li.dataset.group !== "Pinned");
      this.list.insertBefore(today, afterPinned || this.list.querySelector(".more"));
    }
    today.after(item);
    this.tidyHeadings();
  }

  markCurrent(id) {
    this.list.querySelectorAll("a[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
    this.list.querySelector(`a[data-id="${CSS.escape(id)}"]`)?.setAttribute("aria-current", "page");
  }

  tidyHeadings() {
    for (const heading of this.list.querySelectorAll(".group-heading")) {
      const next = heading.nextElementSibling;
      if (!next || !next.classList.contains("conv-item")) heading.remove();
    }
  }

  // Events from the person's other tabs (and this one).
  onEvent(event) {
    const c = event.conversation;
    if (event.event === "conversation.deleted") {
      this.list.querySelector(`li.conv-item[data-id="${CSS.escape(c.id)}"]`)?.remove();
      this.tidyHeadings();
      if (c.id === this.getConversationId()) this.onDeletedHere();
    } else if (event.event === "conversation.added") {
      this.refresh();
    } else if (event.event === "conversation.updated") {
      const item = this.list.querySelector(`li.conv-item[data-id="${CSS.escape(c.id)}"]`);
      const moved = !item || Boolean(item.dataset.pinned) !== c.pinned || this.archived !== c.archived;
      if (moved) this.refresh();
      else item.querySelector("a").textContent = c.title;
      if (c.id === this.getConversationId()) {
        $("chat-title").textContent = c.title;
        document.title = `${c.title} · Claude Chat`;
        this.updateMenu(c);
      }
    }
  }

  // --- the conversation menu -------------------------------------------------

  setupMenu() {
    const menu = $("conversation-menu");
    if (!menu) return;
    menu.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      menu.open = false;
      const action = button.dataset.action;
      if (action === "rename") this.startRename();
      else if (action === "delete") $("delete-dialog").showModal();
      else this.act(action);
    });
    document.addEventListener("click", (event) => {
      if (menu.open && !menu.contains(event.target)) menu.open = false;
    });
    $("delete-cancel").addEventListener("click", () => $("delete-dialog").close());
    $("delete-confirm").addEventListener("click", async () => {
      $("delete-dialog").close();
      const data = await this.act("delete");
      if (data?.ok) location.href = "/";
    });
    $("chat-title").addEventListener("dblclick", () => this.startRename());
  }

  // A new chat got its id: its menu can now act on it.
  conversationCreated(id) {
    const menu = $("conversation-menu");
    menu.hidden = false;
    for (const link of menu.querySelectorAll("a[data-export]")) link.href = `/c/${id}/${link.dataset.export}`;
  }

  updateMenu(c) {
    const menu = $("conversation-menu");
    if (!menu) return;
    const pin = menu.querySelector('[data-action="pin"], [data-action="unpin"]');
    pin.dataset.action = c.pinned ? "unpin" : "pin";
    pin.textContent = c.pinned ? "Unpin" : "Pin";
    const archive = menu.querySelector('[data-action="archive"], [data-action="unarchive"]');
    archive.dataset.action = c.archived ? "unarchive" : "archive";
    archive.textContent = c.archived ? "Unarchive" : "Archive";
  }

  async act(action, extra = {}) {
    const id = this.getConversationId();
    if (!id) return null;
    const body = new URLSearchParams({ action, ...extra });
    try {
      const response = await fetch(`/c/${id}/action/`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken() },
        body,
      });
      const data = await response.json();
      if (!data.ok) this.say(data.error || "That did not work.");
      return data;
    } catch {
      this.say("The server could not be reached: try again.");
      return null;
    }
  }

  startRename() {
    const title = $("chat-title");
    if (!this.getConversationId() || title.querySelector("input")) return;
    const before = title.textContent;
    const input = document.createElement("input");
    input.type = "text";
    input.value = before;
    input.className = "rename-input";
    input.setAttribute("aria-label", "Conversation title");
    input.maxLength = 200;
    title.replaceChildren(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const value = input.value.trim();
      title.textContent = save && value ? value : before;
      if (save && value && value !== before) {
        const data = await this.act("rename", { title: value });
        if (!data?.ok) title.textContent = before;
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      if (event.key === "Escape") { event.preventDefault(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async importFile(input) {
    const file = input.files[0];
    input.value = "";
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    this.say("");
    try {
      const response = await fetch("/import/", { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() }, body: form });
      const data = await response.json();
      if (data.ok) location.href = data.url;
      else this.say(data.error);
    } catch {
      this.say(`${file.name} could not be imported: the server could not be reached.`);
    }
  }

  setupShortcuts() {
    document.addEventListener("keydown", (event) => {
      const mod = event.ctrlKey || event.metaKey;
      if (mod && !event.shiftKey && event.key.toLowerCase() === "k") {
        event.preventDefault();
        document.getElementById("app").classList.add("sidebar-open");
        this.searchBox.focus();
        this.searchBox.select();
      } else if (mod && event.shiftKey && event.key.toLowerCase() === "o") {
        event.preventDefault();
        location.href = "/";
      }
    });
  }
}
