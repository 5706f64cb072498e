// @wsproxy/client, resumable sessions: one session through wsproxy that survives a
// dropped connection (wsproxy's README, "Resumable sessions"; the proxy needs
// `resume: {enabled: true}`). No dependencies: browsers and Node >= 20.
//
// The session opts in with `?wsproxy_resume=1`; every message the proxy sends starts
// with one byte: 0x00 before the backend's payload, 0x01 before a JSON control
// message (session, ack, resumed). When the socket closes with 1006 (no close frame:
// the network went), the session reconnects with `?wsproxy_resume=<id>.<received>`
// within the window the proxy announced, re-sends what the proxy had not acked, and
// goes on: every message once, in order, both ways. A failed resume (close 4410, or the
// window gone) is a "resumefailed" event, then a fresh session ("session"); any other
// close is the end ("close").
//
//   const s = new ResumableSession("wss://proxy/ws");
//   s.addEventListener("message", (e) => console.log(e.data));  // the backend's payload
//   s.send("subscribe");                                        // queued until open

/** The close code of a resume the proxy refused. */
export const RESUME_FAILED = 4410;

function event(type, fields) {
  const e = new Event(type);
  Object.assign(e, fields);
  return e;
}

export class ResumableSession extends EventTarget {
  #url; #WS; #retryDelayMs; #ws = null; #state = "connecting"; #unacked = []; #deadline = 0;

  /** Options: `WebSocket` (the class; default the global), `retryDelayMs` (between two
   *  resume attempts, default 50). */
  constructor(url, { WebSocket: WS = globalThis.WebSocket, retryDelayMs = 50 } = {}) {
    super();
    this.#url = url;
    this.#WS = WS;
    this.#retryDelayMs = retryDelayMs;
    this.sessionId = null;
    this.windowMs = 0;
    /** Backend messages received in this session; our messages sent in it. */
    this.received = 0;
    this.sent = 0;
    this.#fresh();
  }

  /** "connecting", "open", "resuming", "closed". */
  get state() { return this.#state; }

  /** Send *data* (string or binary) now if open, else once the session is back. */
  send(data) {
    if (this.#state === "closed") return false;
    this.sent += 1;
    this.#unacked.push([this.sent, data]);
    if (this.#state === "open") this.#ws.send(data);
    return true;
  }

  close(code = 1000, reason = "") {
    const ws = this.#ws;
    this.#state = "closed";
    if (ws !== null) ws.close(code, reason);
    this.dispatchEvent(event("close", { code, reason, requested: true }));
  }

  #socket(value) {
    const url = new URL(this.#url);
    url.searchParams.set("wsproxy_resume", value);
    const ws = new this.#WS(url.toString());
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    return ws;
  }

  #fresh() {
    this.#state = "connecting";
    const ws = this.#socket("1");
    ws.onmessage = (e) => this.#message(ws, e.data);
    ws.onclose = (e) => {
      if (ws !== this.#ws || this.#state === "closed") return;
      if (this.#state === "connecting") {
        setTimeout(() => this.#fresh(), this.#retryDelayMs);
      } else {
        this.#dropped(e);
      }
    };
  }

  #resume() {
    if (this.#state === "closed") return;
    if (performance.now() >= this.#deadline) {
      this.#failed("window passed");
      return;
    }
    const ws = this.#socket(`${this.sessionId}.${this.received}`);
    ws.onmessage = (e) => this.#message(ws, e.data);
    ws.onclose = (e) => {
      if (ws !== this.#ws || this.#state === "closed") return;
      if (this.#state === "resuming") {
        if (e.code === RESUME_FAILED) {
          this.#failed(String(e.reason).replace(/^resume failed: /, ""));
        } else {
          setTimeout(() => this.#resume(), this.#retryDelayMs);
        }
      } else {
        this.#dropped(e);
      }
    };
  }

  #dropped(e) {
    if (e.code === 1006) {  // no close frame: the network, not an endpoint
      this.#state = "resuming";
      this.#deadline = performance.now() + this.windowMs;
      this.#resume();
    } else {
      this.#state = "closed";
      this.dispatchEvent(event("close", { code: e.code, reason: e.reason, requested: false }));
    }
  }

  #failed(reason) {
    const unacked = this.#unacked.length;
    this.#unacked = [];  // the old backend may or may not have had them: the app is told
    this.dispatchEvent(event("resumefailed", { reason, unacked }));
    this.#fresh();
  }

  #acked(n) {
    while (this.#unacked.length > 0 && this.#unacked[0][0] <= n) this.#unacked.shift();
  }

  #message(ws, data) {
    if (ws !== this.#ws) return;
    const text = typeof data === "string";
    const kind = text ? data.charCodeAt(0) : new Uint8Array(data)[0];
    const rest = data.slice(1);
    if (kind === 0) {
      this.received += 1;
      this.dispatchEvent(event("message", { data: rest }));
      return;
    }
    if (kind !== 1 || !text) throw new Error("wsproxy: not a resumable session's message");
    const control = JSON.parse(rest);
    if (control.type === "ack") {
      this.#acked(control.n);
    } else if (control.type === "session") {
      this.sessionId = control.id;
      this.windowMs = control.window * 1000;
      this.received = 0;
      // What was sent while connecting belongs to this session: numbered from 1.
      const queued = this.#unacked.map(([, message]) => message);
      this.#unacked = queued.map((message, i) => [i + 1, message]);
      this.sent = queued.length;
      this.#state = "open";
      for (const message of queued) ws.send(message);
      this.dispatchEvent(event("session", { sessionId: control.id }));
    } else if (control.type === "resumed") {
      this.#acked(control.acked);
      this.#state = "open";
      for (const [, message] of this.#unacked) ws.send(message);
      this.dispatchEvent(event("resumed", { resent: this.#unacked.length }));
    }
  }
}
