import { csrfToken } from "./attachments.js";

// The settings panel: model and request parameters of this conversation.
// Every change is validated and saved by the server (the same rules as a send),
// which answers with a sentence per broken rule; those show inline.

const FIELDS = ["model", "system", "max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "thinking", "thinking_budget"];
const OPEN_KEY = "chat-settings-open";

export class SettingsPanel {
  constructor({ panel, form, toggle, close, badge, models, conversationId, onSaved }) {
    this.panel = panel;
    this.form = form;
    this.toggle = toggle;
    this.badge = badge;
    this.models = models;
    this.conversationId = conversationId;
    this.onSaved = onSaved;
    this.errors = {};
    this.timer = null;
    this.saving = null;

    const stored = localStorage.getItem(OPEN_KEY);
    this.setOpen(stored === null ? window.matchMedia("(min-width: 1100px)").matches : stored === "1");
    toggle.addEventListener("click", () => this.setOpen(!this.isOpen, true));
    close.addEventListener("click", () => this.setOpen(false, true));
    form.addEventListener("input", () => this.changed());
    form.addEventListener("change", () => this.changed());
    form.addEventListener("submit", (event) => event.preventDefault());
    this.describeModel();
    this.syncThinking();
  }

  get isOpen() {
    return !this.panel.hidden;
  }

  setOpen(open, remember = false) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    document.getElementById("app").classList.toggle("settings-open", open);
    if (remember) localStorage.setItem(OPEN_KEY, open ? "1" : "0");
  }

  field(name) {
    return this.form.elements.namedItem(name);
  }

  values() {
    const values = {};
    for (const name of FIELDS) {
      const input = this.field(name);
      values[name] = input.type === "checkbox" ? input.checked : input.value;
    }
    return values;
  }

  describeModel() {
    const model = this.models[this.field("model").value];
    const help = document.getElementById("help-model");
    const maxHelp = document.getElementById("help-max_tokens");
    if (!model) { help.textContent = ""; return; }
    const limits = [`Up to ${model.maxOutput.toLocaleString("en-US")} output tokens.`];
    if (!model.temperatureAndTopP) limits.push("Temperature and Top P cannot both be set.");
    if (!model.thinking) limits.push("No extended thinking.");
    help.textContent = limits.join(" ");
    maxHelp.textContent = `The longest answer, in tokens: 1 to ${model.maxOutput.toLocaleString("en-US")} for ${model.name}.`;
    this.field("max_tokens").max = model.maxOutput;
    this.badge.textContent = model.name;
  }

  syncThinking() {
    this.field("thinking_budget").disabled = !this.field("thinking").checked;
  }

  changed() {
    this.describeModel();
    this.syncThinking();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.save(), 300);
  }

  showErrors(errors) {
    this.errors = errors || {};
    for (const name of FIELDS) {
      const box = document.getElementById(`err-${name}`);
      const input = this.field(name);
      const message = this.errors[name] || "";
      if (box) box.textContent = message;
      if (message) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
  }

  get firstError() {
    const name = FIELDS.find((f) => this.errors[f]);
    return name ? this.errors[name] : null;
  }

  async save() {
    const saved = document.getElementById("settings-saved");
    const body = JSON.stringify({ conversation: this.conversationId, settings: this.values() });
    const request = fetch("/settings/", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrftoken": csrfToken() },
      body,
    });
    this.saving = request;
    try {
      const response = await request;
      const data = await response.json();
      if (this.saving !== request) return; // a newer save is under way
      this.showErrors(data.errors);
      saved.textContent = data.ok ? "Saved." : "";
      if (data.ok) this.onSaved(data.settings);
    } catch {
      saved.textContent = "Could not save the settings: they will be sent with your next message.";
    }
  }

  setConversation(id) {
    this.conversationId = id;
  }
}

