// "Report" on an answer: a small dialog asks why, then POSTs the reason to the
// button's data-report-url (conversations/review.py: report_message), which
// flags the conversation for staff review.

const MAX_REASON = 2000;
let dialog = null;
let current = null; // the Report button the dialog is for

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function build() {
  const box = el("dialog", { class: "curl-dialog report-dialog", "aria-labelledby": "report-title" });
  const form = el("form", { method: "dialog" });
  const reason = el("textarea", { id: "report-reason", name: "reason", rows: "4", maxlength: String(MAX_REASON) });
  reason.style.cssText =
    "width:100%;box-sizing:border-box;padding:0.5rem 0.6rem;border:1px solid var(--border);border-radius:8px;" +
    "background:var(--surface);color:var(--text);font:inherit;resize:vertical;margin:0 0 0.6rem;";
  const alert = el("div", { class: "alert", role: "alert" });
  alert.hidden = true;
  const status = el("p", { role: "status", class: "report-done" });
  status.hidden = true;
  const send = el("button", { type: "submit", class: "primary" }, "Send");
  const cancel = el("button", { type: "button", class: "icon-button" }, "Cancel");
  const actions = el("div", { class: "dialog-actions" });
  actions.append(send, cancel);
  const field = el("div", { class: "report-field" });
  field.append(
    el("p", { class: "help" }, "Staff will review this conversation. Say what is wrong: incorrect, harmful, or something else."),
    el("label", { for: "report-reason", style: "display:block;font-weight:600;font-size:0.9rem;margin:0 0 0.3rem" }, "Reason"),
    reason,
  );
  form.append(
    el("h2", { id: "report-title" }, "Why are you reporting this answer?"),
    field,
    alert,
    status,
    actions,
  );
  box.append(form);
  document.body.append(box);

  cancel.addEventListener("click", () => box.close());
  // Escape closes this dialog only (the chat page stops a streaming answer on Escape).
  box.addEventListener("keydown", (event) => { if (event.key === "Escape") event.stopPropagation(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (status.hidden === false) { box.close(); return; }
    const text = reason.value.trim();
    if (!text) { showError("Say why you are reporting this answer."); reason.focus(); return; }
    send.disabled = true;
    try {
      const response = await fetch(current.dataset.reportUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "x-csrftoken": csrfToken() },
        body: new URLSearchParams({ reason: text }),
      });
      const data = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
      if (!response.ok || !data || !data.ok) {
        showError((data && data.error) || "The report could not be sent. Reload the page and try again.");
        return;
      }
      alert.hidden = true;
      status.textContent = data.message || "Reported. Thank you.";
      status.hidden = false;
      field.hidden = true;
      send.textContent = "Close";
      cancel.hidden = true;
      current.textContent = "Reported";
      current.disabled = true;
    } catch {
      showError("The report could not be sent: the server did not answer. Try again.");
    } finally {
      send.disabled = false;
    }
  });

  function showError(message) {
    alert.textContent = message;
    alert.hidden = false;
  }
  return box;
}

function open(button) {
  dialog ||= build();
  current = button;
  const reason = dialog.querySelector("textarea");
  reason.value = "";
  dialog.querySelector(".report-field").hidden = false;
  dialog.querySelector('[role="alert"]').hidden = true;
  dialog.querySelector('[role="status"]').hidden = true;
  const [send, cancel] = dialog.querySelectorAll(".dialog-actions button");
  send.textContent = "Send";
  cancel.hidden = false;
  dialog.showModal();
  reason.focus();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.report[data-report-url]");
  if (button && !button.disabled) open(button);
});
