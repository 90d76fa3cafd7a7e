// The chat page: composer, socket, sidebar. Protocol: docs/websocket-protocol.md.

import "./report.js";
import { PendingFiles } from "./attachments.js";
import { SettingsPanel } from "./settings.js";
import { Sidebar } from "./sidebar.js";
import { ReconnectingSocket } from "./socket.js";
import { Transcript } from "./transcript.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const $ = (id) => document.getElementById(id);

const form = $("composer");
const box = $("message");
const sendButton = $("send");
const stopButton = $("stop");
const alertBox = $("composer-alert");
const connection = $("connection");

let conversationId = config.conversationId;
let pending = null; // client_id of the message waiting for the server's receipt
let pendingFromBox = false; // whether that message is the composer's text (to clear it)

const draftKey = () => `chat-draft:${conversationId || "new"}`;
const filesKey = () => `chat-files:${conversationId || "new"}`;
let sendWhenUploaded = false;

const files = new PendingFiles({
  list: $("pending-files"),
  input: $("attach"),
  dropZone: $("chat"),
  pasteTarget: box,
  draftKey: filesKey,
  onChange: () => {
    if (sendWhenUploaded && !files.uploading) {
      sendWhenUploaded = false;
      if (files.refused.length) showAlert("Not sent: a file was refused (see above). Remove it, then send again.");
      else send();
    }
    updateSendButton();
  },
});

function updateSendButton() {
  sendButton.disabled = pending !== null;
  sendButton.title = files.uploading ? "Send once the files are uploaded" : "Send (Enter)";
}

const sidebar = new Sidebar({
  getConversationId: () => conversationId,
  onDeletedHere: () => {
    showAlert("This conversation was deleted in another tab. Anything you type here will not be sent.");
    box.disabled = true;
    sendButton.disabled = true;
  },
});

const settings = new SettingsPanel({
  panel: $("settings-panel"),
  form: $("settings-form"),
  toggle: $("settings-toggle"),
  close: $("settings-close"),
  badge: $("model-badge"),
  models: config.models,
  conversationId,
  onSaved: () => {},
});

const transcript = new Transcript({
  root: $("transcript"),
  scroller: $("scroller"),
  jump: $("jump"),
  onGap: (id) => socket.send({ action: "resync", message: id }),
  onRetry: (id) => { showAlert(""); socket.send({ action: "retry", message: id }); },
  onContinue: () => sendText("Continue"),
  onCurl: (id) => showCurl(id),
  onEnd: (event) => showTotals(event.totals),
  onBranch: (request) => {
    showAlert("");
    if (!socket.send({ ...request, client_id: crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) })) {
      showAlert("Not connected to the server: try again once reconnected.");
    }
  },
  onStreamingChange: (streaming) => {
    stopButton.hidden = !streaming;
    sendButton.hidden = streaming;
  },
});

const socket = new ReconnectingSocket({
  path: () => (conversationId ? `/ws/chat/${conversationId}/` : config.wsPath),
  onOpen: () => {},
  onState: (state) => {
    connection.textContent = {
      connecting: "Connecting…",
      open: "",
      closed: "Reconnecting…",
      gone: "This conversation no longer exists.",
    }[state];
    connection.dataset.state = state;
  },
  onMessage: (event) => handle(event),
});

function handle(event) {
  switch (event.event) {
    case "state":
      if (transcript.reconcile(event.streaming) && conversationId) refreshTranscript();
      break;
    case "conversation.created":
      conversationId = event.id;
      settings.setConversation(event.id);
      sidebar.conversationCreated(event.id);
      files.moveDraft("chat-files:new");
      history.replaceState(null, "", event.url);
      moveDraft("new", conversationId);
      break;
    case "message.user":
      $("welcome")?.remove();
      if (connection.dataset.state === "open") connection.textContent = "";
      transcript.addUserMessage(event.message);
      updateSidebar(event.conversation);
      if (event.client_id === pending) {
        pending = null;
        if (pendingFromBox) {
          box.value = "";
          localStorage.removeItem(draftKey());
          resize();
          files.clear();
        }
        showAlert("");
      }
      break;
    case "message.start":
    case "message.retry":
    case "message.delta":
    case "message.snapshot":
    case "message.end":
      transcript.onAnswerEvent(event);
      break;
    case "transcript.replace":
      transcript.replaceAll(event.html);
      break;
    case "conversation.added":
    case "conversation.updated":
    case "conversation.deleted":
      sidebar.onEvent(event);
      break;
    case "error":
      if (!event.client_id || event.client_id === pending) pending = null;
      showAlert(event.message);
      if (event.fields && Object.keys(event.fields).length) {
        settings.showErrors(event.fields);
        settings.setOpen(true);
      }
      break;
  }
  updateSendButton();
}

async function refreshTranscript() {
  const response = await fetch(`/c/${conversationId}/transcript/`, { credentials: "same-origin" });
  if (response.ok) {
    transcript.replaceAll(await response.text());
    socket.send({ action: "resync", message: "" });
  }
}

function showAlert(text) {
  alertBox.textContent = text;
  alertBox.hidden = !text;
}

function send() {
  const text = box.value;
  if (files.uploading) {
    sendWhenUploaded = true;
    showAlert("");
    connection.textContent = "Uploading files… the message goes as soon as they are done.";
    return;
  }
  if (!text.trim() && !files.ready.length) { showAlert("Type a message before sending."); box.focus(); return; }
  sendText(text, true);
}

function sendText(text, fromBox = false) {
  if (pending || transcript.streaming) return;
  if (!socket.isOpen) { showAlert("Not connected to the server. Your message is kept here: send it again once reconnected."); return; }
  if (settings.firstError) {
    settings.setOpen(true);
    showAlert(`Not sent: ${settings.firstError}`);
    return;
  }
  pending = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
  pendingFromBox = fromBox;
  sendButton.disabled = true;
  const attachments = fromBox ? files.ids() : [];
  socket.send({ action: "send", text, client_id: pending, settings: settings.values(), attachments });
}

function showTotals(totals) {
  if (!totals) return;
  for (const node of document.querySelectorAll("#totals [data-total]")) {
    const value = totals[node.dataset.total];
    node.textContent = value === null || value === undefined ? "—" : typeof value === "number" ? value.toLocaleString("en-US") : value;
  }
}

// "Copy as cURL": the exact request behind an answer, shown before copying.
const curlDialog = $("curl-dialog");
let curlFor = null;

async function showCurl(messageId) {
  curlFor = messageId;
  const withData = $("curl-attachments").checked ? "?attachments=1" : "";
  const response = await fetch(`/c/${conversationId}/m/${messageId}/curl/${withData}`, { credentials: "same-origin" });
  $("curl-text").textContent = response.ok ? await response.text() : "The request could not be loaded.";
  if (!curlDialog.open) curlDialog.showModal();
}

$("curl-attachments").addEventListener("change", () => curlFor && showCurl(curlFor));
$("curl-close").addEventListener("click", () => curlDialog.close());
$("curl-copy").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  try {
    await navigator.clipboard.writeText($("curl-text").textContent);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed: select the text";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});

function stop() {
  socket.send({ action: "stop" });
}

function updateSidebar(conversation) {
  if (!conversation) return;
  sidebar.touch(conversation);
  if (!$("chat-title").querySelector("input")) $("chat-title").textContent = conversation.title;
  document.title = `${conversation.title} · Claude Chat`;
}

function resize() {
  box.style.height = "auto";
  box.style.height = Math.min(box.scrollHeight, window.innerHeight * 0.4) + "px";
}

function moveDraft(from, to) {
  const draft = localStorage.getItem(`chat-draft:${from}`);
  localStorage.removeItem(`chat-draft:${from}`);
  if (draft) localStorage.setItem(`chat-draft:${to}`, draft);
}

form.addEventListener("submit", (event) => { event.preventDefault(); send(); });
stopButton.addEventListener("click", stop);
box.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  } else if (event.key === "ArrowUp" && !box.value && !transcript.streaming) {
    const last = transcript.lastUserArticle();
    if (last) { event.preventDefault(); transcript.startEdit(last); }
  }
});
box.addEventListener("input", () => {
  resize();
  if (box.value) localStorage.setItem(draftKey(), box.value);
  else localStorage.removeItem(draftKey());
  if (box.value.trim()) showAlert("");
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && transcript.streaming && !curlDialog.open) { event.preventDefault(); stop(); }
});

// Sidebar drawer at phone width.
const app = $("app");
$("open-sidebar").addEventListener("click", () => app.classList.add("sidebar-open"));
$("close-sidebar").addEventListener("click", () => app.classList.remove("sidebar-open"));

box.value = localStorage.getItem(draftKey()) || "";
resize();
showAlert("");
box.focus();
