// Files attached in the composer: uploaded over HTTP while the person types,
// each shown as a chip with a thumbnail or PDF icon, name, size, progress and
// a remove button. The server identifies every file by its bytes and refuses
// what the API would refuse, with a sentence naming the file.

const ACCEPTED = "image/jpeg,image/png,image/gif,image/webp,application/pdf";

export class PendingFiles {
  constructor({ list, input, dropZone, pasteTarget, draftKey, onChange }) {
    this.list = list;
    this.draftKey = draftKey; // a function: the key changes when a new chat gets its id
    this.onChange = onChange;
    this.items = [];
    this.counter = 0;
    input.accept = ACCEPTED;
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = "";
    });
    pasteTarget.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])];
      if (files.length) {
        event.preventDefault();
        this.add(files);
      }
    });
    let depth = 0;
    dropZone.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      dropZone.classList.add("dropping");
    });
    dropZone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) dropZone.classList.remove("dropping");
    });
    dropZone.addEventListener("dragover", (event) => {
      if (hasFiles(event)) event.preventDefault();
    });
    dropZone.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      dropZone.classList.remove("dropping");
      this.add([...event.dataTransfer.files]);
    });
    this.restore();
  }

  get uploading() {
    return this.items.some((item) => item.status === "uploading");
  }

  get ready() {
    return this.items.filter((item) => item.status === "done");
  }

  get refused() {
    return this.items.filter((item) => item.status === "error");
  }

  ids() {
    return this.ready.map((item) => item.attachment.id);
  }

  add(files) {
    for (const file of files) {
      const item = { key: ++this.counter, name: file.name || "pasted image", size: file.size, status: "uploading", progress: 0 };
      item.preview = file.type.startsWith("image/") ? URL.createObjectURL(file) : null;
      item.isPdf = file.type === "application/pdf" || /\.pdf$/i.test(item.name);
      this.items.push(item);
      this.render(item);
      this.upload(item, file);
    }
    this.changed();
  }

  upload(item, file) {
    const form = new FormData();
    form.append("file", file, item.name);
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", "/attachments/");
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        item.progress = event.loaded / event.total;
        this.render(item);
      }
    });
    xhr.addEventListener("load", () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON: handled below */ }
      if (xhr.status === 200 && data?.ok) {
        item.status = "done";
        item.attachment = data.attachment;
      } else {
        item.status = "error";
        item.error = data?.error || (xhr.status === 413 ? `${item.name} is too large to upload.` : `${item.name} could not be uploaded (HTTP ${xhr.status}).`);
      }
      this.render(item);
      this.changed();
    });
    xhr.addEventListener("error", () => {
      item.status = "error";
      item.error = `${item.name} could not be uploaded: the connection failed. Remove it and attach it again.`;
      this.render(item);
      this.changed();
    });
    xhr.send(form);
  }

  remove(key) {
    const index = this.items.findIndex((item) => item.key === key);
    if (index < 0) return;
    const [item] = this.items.splice(index, 1);
    if (item.status === "uploading") item.xhr?.abort();
    if (item.preview) URL.revokeObjectURL(item.preview);
    item.chip?.remove();
    this.changed();
  }

  // After the server saved the message: the sent files leave the composer.
  clear() {
    for (const item of [...this.items]) this.remove(item.key);
  }

  changed() {
    this.list.hidden = this.items.length === 0;
    this.save();
    this.onChange(this);
  }

  save() {
    const done = this.ready.map((item) => item.attachment);
    if (done.length) localStorage.setItem(this.draftKey(), JSON.stringify(done));
    else localStorage.removeItem(this.draftKey());
  }

  // Files uploaded before a reload are still attached.
  restore() {
    let saved = [];
    try { saved = JSON.parse(localStorage.getItem(this.draftKey()) || "[]"); } catch { saved = []; }
    for (const attachment of saved) {
      const item = { key: ++this.counter, name: attachment.name, size: attachment.size, status: "done", attachment };
      item.preview = attachment.is_image ? `${attachment.url}?thumb=1` : null;
      item.isPdf = attachment.media_type === "application/pdf";
      this.items.push(item);
      this.render(item);
    }
    this.list.hidden = this.items.length === 0;
  }

  moveDraft(oldKey) {
    const saved = localStorage.getItem(oldKey);
    localStorage.removeItem(oldKey);
    if (saved) localStorage.setItem(this.draftKey(), saved);
  }

  render(item) {
    if (!item.chip) {
      item.chip = el("li", { class: "file-chip pending" });
      const thumb = item.preview ? el("img", { class: "chip-thumb", src: item.preview, alt: "" }) : el("span", { class: "chip-icon", "aria-hidden": "true" });
      if (!item.preview) thumb.textContent = item.isPdf ? "PDF" : "FILE";
      const text = el("span", { class: "chip-text" });
      const name = el("span", { class: "chip-name" });
      name.textContent = item.name;
      const meta = el("span", { class: "chip-meta" });
      text.append(name, meta);
      const bar = el("span", { class: "chip-progress", role: "progressbar", "aria-label": `Uploading ${item.name}`, "aria-valuemin": "0", "aria-valuemax": "100" });
      bar.append(el("span", { class: "chip-progress-fill" }));
      const remove = el("button", { type: "button", class: "chip-remove", "aria-label": `Remove ${item.name}`, title: "Remove" });
      remove.textContent = "×";
      remove.addEventListener("click", () => this.remove(item.key));
      const error = el("span", { class: "chip-error", role: "alert" });
      item.chip.append(thumb, text, remove, bar, error);
      this.list.append(item.chip);
    }
    const chip = item.chip;
    chip.dataset.status = item.status;
    const img = chip.querySelector("img.chip-thumb");
    if (item.status === "error" && img) {
      const icon = el("span", { class: "chip-icon", "aria-hidden": "true" });
      icon.textContent = "!";
      img.replaceWith(icon);
    }
    const meta = chip.querySelector(".chip-meta");
    const details = [humanSize(item.size)];
    if (item.attachment?.pages) details.push(`${item.attachment.pages} page${item.attachment.pages === 1 ? "" : "s"}`);
    if (item.status === "uploading") details.push(`${Math.round(item.progress * 100)}%`);
    meta.textContent = details.join(" · ");
    const bar = chip.querySelector(".chip-progress");
    bar.hidden = item.status !== "uploading";
    bar.setAttribute("aria-valuenow", String(Math.round(item.progress * 100)));
    chip.querySelector(".chip-progress-fill").style.width = `${Math.round(item.progress * 100)}%`;
    chip.querySelector(".chip-error").textContent = item.status === "error" ? item.error : "";
  }
}

function hasFiles(event) {
  return [...(event.dataTransfer?.types || [])].includes("Files");
}

export function humanSize(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function el(tag, attrs = {}) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}
