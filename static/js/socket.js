// A websocket that reconnects with backoff and reports its state.

export class ReconnectingSocket {
  constructor({ path, onMessage, onOpen, onState }) {
    this.path = path; // a function: the path can change (a new chat gets an id)
    this.onMessage = onMessage;
    this.onOpen = onOpen;
    this.onState = onState;
    this.attempt = 0;
    this.opened = 0;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.ws = new WebSocket(`${scheme}//${location.host}${this.path()}`);
    this.onState("connecting");
    this.ws.addEventListener("open", () => {
      this.attempt = 0;
      this.opened += 1;
      this.onState("open");
      this.onOpen(this.opened > 1);
    });
    this.ws.addEventListener("message", (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      this.onMessage(data);
    });
    this.ws.addEventListener("close", (event) => {
      if (event.code === 4401) { location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname); return; }
      if (event.code === 4404) { this.onState("gone"); return; }
      this.onState("closed");
      const delay = Math.min(10000, 500 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
      this.attempt += 1;
      setTimeout(() => this.connect(), delay);
    });
  }

  get isOpen() {
    return this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  send(data) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(data));
    return true;
  }
}
