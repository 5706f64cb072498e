// @wsproxy/client, resumable sessions: one session through wsproxy that survives a
// dropped connection and ends at the first real close (wsproxy's README, "Resumable
// sessions"; the proxy needs `resume: {enabled: true}`). No dependencies beyond
// wsproxy-client.js: browsers and Node >= 20.
//
// The single-purpose form of `new WsproxyClient(url, {resume: true})`, kept for the code
// written against it: the same protocol by the same code, except that any close frame
// ends the session ("close"), where WsproxyClient reconnects after a drain's 1001/1012
// and its hint; a connect that fails before a session opened is retried after
// `retryDelayMs`, as a resume attempt is; sends are never refused (no queue bound).
//
//   const s = new ResumableSession("wss://proxy/ws");
//   s.addEventListener("message", (e) => console.log(e.data));  // the backend's payload
//   s.send("subscribe");                                        // queued until open

import { RESUME_FAILED, WsproxyClient } from "./wsproxy-client.js";

export { RESUME_FAILED };

function event(type, fields) {
  return Object.assign(new Event(type), fields);
}

export class ResumableSession extends EventTarget {
  #client;
  #closed = false;

  /** Options: `WebSocket` (the class; default the global), `retryDelayMs` (the most
   *  between two attempts to connect or resume, full jitter below it; default 50). */
  constructor(url, { WebSocket: WS = globalThis.WebSocket, retryDelayMs = 50 } = {}) {
    super();
    const wait = Math.max(retryDelayMs, 1);
    const client = new WsproxyClient(url, {
      WebSocket: WS,
      resume: true,
      binaryType: "arraybuffer",
      backoff: { baseMs: wait, maxMs: wait, maxHintMs: wait },
      queue: { maxMessages: Number.MAX_SAFE_INTEGER, maxBytes: Number.MAX_SAFE_INTEGER },
      // Asked only of closes that do not resume: a failed connect is retried, a close
      // frame on an open session is the end.
      shouldReconnect: (close) => close.beforeOpen,
    });
    this.#client = client;
    for (const type of ["session", "message", "resumed", "resumefailed"]) {
      client.addEventListener(type, (e) => {
        const { isTrusted: _t, ...fields } = Object.fromEntries(Object.entries(e));
        this.dispatchEvent(event(type, fields));
      });
    }
    client.addEventListener("terminal", (e) => {
      if (this.#closed) return;
      this.#closed = true;
      this.dispatchEvent(event("close", { code: e.code, reason: e.reason, requested: e.requested }));
    });
  }

  /** "connecting", "open", "resuming", "closed". */
  get state() {
    const state = this.#client.readyState;
    if (this.#closed || state >= WsproxyClient.CLOSING) return "closed";
    if (state === WsproxyClient.OPEN) return "open";
    return this.#client.session.resuming ? "resuming" : "connecting";
  }

  get sessionId() { return this.#client.session.id; }
  get windowMs() { return this.#client.session.windowMs; }
  /** Backend messages received in this session; our messages sent in it. */
  get received() { return this.#client.session.received; }
  get sent() { return this.#client.session.sent; }

  /** Send *data* (string or binary) now if open, else once the session is back. */
  send(data) {
    if (this.#closed) return false;
    return this.#client.send(data);
  }

  close(code = 1000, reason = "") {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close(code, reason);
    this.dispatchEvent(event("close", { code, reason, requested: true }));
  }
}
