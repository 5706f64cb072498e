// @wsproxy/client: a reconnecting WebSocket that honours wsproxy's closes.
//
// Reconnects on 1001, 1006, 1011, 1012, 1013, 1014 after the close reason's
// `retry-after-ms=N` hint (clamped), else after full-jitter exponential back-off; stops on
// 1008 and 4000-4999 (and every other code) unless the app's hook says otherwise; asks
// the token hook again on 1008 "token expired". A bounded queue holds sends while not
// open (the newest is refused when full). With `resume: true` it speaks wsproxy's
// resumable sessions: a drop without a close frame (1006) resumes the session within the
// proxy's window (`Resumption` decides, without I/O); a real close goes by the rules
// above. README.md has the whole contract; the types are in wsproxy-client.d.ts. No
// dependencies: browsers and Node >= 20.

/** Close codes the default rule reconnects on. */
export const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013, 1014]);

export const DEFAULTS = Object.freeze({
  backoff: Object.freeze({ baseMs: 500, maxMs: 30_000, maxHintMs: 60_000, resetAfterMs: 5_000 }),
  queue: Object.freeze({ maxMessages: 1000, maxBytes: 1 << 20 }),
  /** A connect and its handshake (with resume: up to the proxy's first message). */
  openTimeoutMs: 10_000,
});

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;
/** The one reason the proxy closes with when a JWT's exp passes (wsproxy core/closes.py). */
const TOKEN_EXPIRED = "token expired";
/** At most nine digits: a hint is milliseconds, and anything longer is clamped anyway. */
const HINT = /(?:^|[\s;,])retry-after-ms=(\d{1,9})(?=$|[\s;,])/;

/** The `retry-after-ms=N` hint in a close reason, in ms (not clamped), or null. */
export function parseRetryHint(reason) {
  if (typeof reason !== "string" || reason === "") return null;
  const found = HINT.exec(reason);
  return found === null ? null : Number(found[1]);
}

/** Full-jitter back-off: random(0, min(maxMs, baseMs * 2^(attempt-1))) in whole ms. */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const { baseMs, maxMs } = { ...DEFAULTS.backoff, ...backoff };
  const exponent = Math.min(Math.max(attempt, 1) - 1, 52); // 2^52 * base is past any max
  const ceiling = Math.min(maxMs, baseMs * 2 ** exponent);
  return Math.floor(random() * ceiling);
}

/** The default rule for a close: "reconnect", "refresh" or "stop". */
export function defaultRule(code, reason, hasTokenHook) {
  if (RECONNECT_CODES.has(code)) return "reconnect";
  if (code === 1008 && hasTokenHook && String(reason).split(";")[0].trim() === TOKEN_EXPIRED) {
    return "refresh";
  }
  return "stop";
}

function number(value, name, fallback, { positive = false } = {}) {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (positive && value === 0)) {
    throw new RangeError(`${name}: expected a finite number ${positive ? "> 0" : ">= 0"}, got ${String(value)}`);
  }
  return value;
}

function tokenPlacement(tokenIn) {
  if (tokenIn === undefined || tokenIn === "subprotocol") return { kind: "subprotocol", name: "bearer." };
  if (typeof tokenIn === "string") {
    const colon = tokenIn.indexOf(":");
    const kind = tokenIn.slice(0, colon);
    const name = tokenIn.slice(colon + 1);
    if (colon > 0 && name !== "" && (kind === "query" || kind === "subprotocol")) return { kind, name };
  }
  throw new RangeError(
    `tokenIn: expected "subprotocol", "subprotocol:PREFIX" or "query:NAME", got ${JSON.stringify(tokenIn)}`);
}

let encoder = null;
function byteLength(data) {
  if (typeof data === "string") {
    encoder ??= new TextEncoder();
    return encoder.encode(data).byteLength;
  }
  if (data == null) return 0;
  if (typeof data.byteLength === "number") return data.byteLength; // ArrayBuffer, views
  if (typeof data.size === "number") return data.size; // Blob
  return 0;
}

function event(type, fields) {
  return Object.assign(new Event(type), fields);
}

// Resumable sessions (wsproxy's README, "Resumable sessions") ...

/** The close code of a resume the proxy refused (after its 101). */
export const RESUME_FAILED = 4410;
/** The query parameter that opts in ("1") or resumes ("<id>.<R>"). */
export const RESUME_PARAM = "wsproxy_resume";

/** A message that is not the resumable-session protocol's. */
export class FramingError extends Error {
  name = "FramingError";
}

function firstByte(data) {
  if (typeof data === "string") return data.length > 0 ? data.charCodeAt(0) : -1;
  if (data instanceof ArrayBuffer) return data.byteLength > 0 ? new Uint8Array(data)[0] : -1;
  if (ArrayBuffer.isView(data)) return data.byteLength > 0 ? new Uint8Array(data.buffer, data.byteOffset, 1)[0] : -1;
  throw new FramingError("a binary message that is not an ArrayBuffer (binaryType must be \"arraybuffer\")");
}

function controlOf(data) {
  if (typeof data !== "string" || data.charCodeAt(0) !== 1) throw new FramingError("not a control message of the proxy's");
  let control;
  try {
    control = JSON.parse(data.slice(1));
  } catch (error) {
    throw new FramingError(`a control message that is not JSON: ${error.message}`);
  }
  if (control === null || typeof control !== "object" || Array.isArray(control)) {
    throw new FramingError("a control message that is not a JSON object");
  }
  return control;
}

/**
 * A resumable session's state and decisions, without sockets or timers (the client does
 * the I/O; the same logic as clients/python's wsproxy_client.resumption). Attached (a
 * socket is open on it), held (dropped; resuming until `deadline`), or none
 * (`sessionId` null: the next connect starts a fresh session).
 */
export class Resumption {
  constructor(backoff = {}, random = Math.random) {
    this.backoff = { ...DEFAULTS.backoff, ...backoff };
    this.random = random;
    this.sessionId = null;
    this.windowMs = 0;
    /** Backend messages received in this session; the app's messages sent in it. */
    this.received = 0;
    this.sent = 0;
    /** [number, data] of the app's messages not acked yet. */
    this.unacked = [];
    /** Set while held: the time (ms, the caller's clock) after which it cannot come back. */
    this.deadline = null;
    this.attempt = 0;
  }

  get held() { return this.deadline !== null; }

  /** The value of wsproxy_resume for the next connect. */
  param() { return this.held ? `${this.sessionId}.${this.received}` : "1"; }

  /** Held, and past the window: the next attempt is not worth making. */
  expired(now) { return this.deadline !== null && now >= this.deadline; }

  /** A connection's first message: `session` (null returned) or, while held, `resumed`
   *  (the messages to send again, in order). Throws FramingError for anything else. */
  opened(first) {
    const control = controlOf(first);
    if (this.held && control.type === "resumed") {
      this.#acked(Number(control.acked));
      this.deadline = null;
      this.attempt = 0;
      return this.unacked.map(([, data]) => data);
    }
    if (!this.held && control.type === "session") {
      this.sessionId = String(control.id);
      this.windowMs = Number(control.window) * 1000;
      this.received = 0;
      this.sent = 0;
      this.unacked = [];
      return null;
    }
    throw new FramingError(`expected ${this.held ? "resumed" : "session"}, got ${JSON.stringify(control.type)}`);
  }

  /** The app's *data* goes on the session now: numbered and kept until acked. */
  sending(data) {
    this.sent += 1;
    this.unacked.push([this.sent, data]);
  }

  /** A message from the proxy: `{payload}` for the backend's (counted), null for a
   *  control message (an ack is applied). Throws FramingError without the framing byte. */
  take(data) {
    const kind = firstByte(data);
    if (kind === 0) {
      this.received += 1;
      return { payload: data.slice(1) };
    }
    if (kind === 1) {
      const control = controlOf(data);
      if (control.type === "ack") this.#acked(Number(control.n));
      return null; // an unknown control (a later version's) is not the app's
    }
    throw new FramingError("a message without the resumable session's framing byte");
  }

  #acked(n) {
    let drop = 0;
    while (drop < this.unacked.length && this.unacked[drop][0] <= n) drop += 1;
    if (drop > 0) this.unacked.splice(0, drop);
  }

  /**
   * What a close (`{code, reason, beforeOpen}`: a socket's end, or a failed connect) at
   * *now* means: `{verdict: "resume", attempt, delayMs, hinted}` (try after delayMs),
   * `{verdict: "failed", reason, unacked}` (a fresh session at once), `{verdict: "ended"}`
   * (a real close of an attached session) or `{verdict: "none"}` (no session): for
   * these two the client's usual rules decide.
   */
  after(close, now) {
    if (this.held) {
      if (close.code === RESUME_FAILED) return this.fail(String(close.reason).replace(/^resume failed: /, ""));
      if (now >= this.deadline) return this.fail("window passed");
      this.attempt += 1;
      const hint = parseRetryHint(close.reason);
      const hinted = hint !== null;
      const wait = hinted ? Math.min(hint, this.backoff.maxHintMs) : backoffDelay(this.attempt, this.backoff, this.random);
      return { verdict: "resume", attempt: this.attempt, delayMs: Math.min(wait, this.deadline - now), hinted };
    }
    if (this.sessionId === null) return { verdict: "none" };
    if (close.code === 1006 && !close.beforeOpen) {
      // No close frame: the network went, not an endpoint (no close frame carries 1006).
      this.deadline = now + this.windowMs;
      this.attempt = 1;
      return { verdict: "resume", attempt: 1, delayMs: 0, hinted: false };
    }
    this.forget();
    return { verdict: "ended" };
  }

  /** The resume failed: the session is forgotten; how many messages it had not acked. */
  fail(reason) {
    const unacked = this.unacked.length;
    const attempt = this.attempt;
    this.forget();
    return { verdict: "failed", attempt, reason, unacked };
  }

  forget() {
    this.sessionId = null;
    this.deadline = null;
    this.attempt = 0;
    this.received = 0;
    this.sent = 0;
    this.unacked = [];
  }
}

export class WsproxyClient extends EventTarget {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;

  #url;
  #protocols;
  #WebSocket;
  #token;
  #placement;
  #backoff;
  #shouldReconnect;
  #maxMessages;
  #maxBytes;
  #binaryType;
  #openTimeoutMs;
  /** With resume: the session's state (null without). */
  #session = null;

  #state = CONNECTING;
  #socket = null;
  #timer = null;
  /** Counts connects, so that a token or socket from an old one is recognised and ignored. */
  #generation = 0;
  #attempt = 0;
  #openedAt = 0;
  #queue = [];
  #queuedBytes = 0;
  /** Set by close(): the code and reason the app gave. */
  #ending = null;
  /** True while shouldReconnect runs: a close() from it is finished by #onClose. */
  #deciding = false;

  constructor(url, options = {}) {
    super();
    this.#url = String(url);
    const protocols = options.protocols;
    this.#protocols = protocols === undefined ? [] : Array.isArray(protocols) ? [...protocols] : [protocols];
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("WebSocket: no WebSocket constructor (pass options.WebSocket, e.g. from the ws package)");
    }
    if (options.token !== undefined && typeof options.token !== "function") {
      throw new TypeError("token: expected a function returning a token (or a promise of one)");
    }
    this.#token = options.token;
    this.#placement = tokenPlacement(options.tokenIn);
    const backoff = options.backoff ?? {};
    const d = DEFAULTS.backoff;
    this.#backoff = {
      baseMs: number(backoff.baseMs, "backoff.baseMs", d.baseMs, { positive: true }),
      maxMs: number(backoff.maxMs, "backoff.maxMs", d.maxMs, { positive: true }),
      maxHintMs: number(backoff.maxHintMs, "backoff.maxHintMs", d.maxHintMs),
      resetAfterMs: number(backoff.resetAfterMs, "backoff.resetAfterMs", d.resetAfterMs),
    };
    if (this.#backoff.maxMs < this.#backoff.baseMs) {
      throw new RangeError(`backoff.maxMs: expected at least backoff.baseMs (${this.#backoff.baseMs}), got ${this.#backoff.maxMs}`);
    }
    if (options.shouldReconnect !== undefined && typeof options.shouldReconnect !== "function") {
      throw new TypeError("shouldReconnect: expected a function");
    }
    this.#shouldReconnect = options.shouldReconnect;
    const queue = options.queue ?? {};
    this.#maxMessages = number(queue.maxMessages, "queue.maxMessages", DEFAULTS.queue.maxMessages);
    this.#maxBytes = number(queue.maxBytes, "queue.maxBytes", DEFAULTS.queue.maxBytes);
    this.#binaryType = options.binaryType;
    this.#openTimeoutMs = number(options.openTimeoutMs, "openTimeoutMs", DEFAULTS.openTimeoutMs);
    if (options.resume !== undefined && typeof options.resume !== "boolean") {
      throw new TypeError("resume: expected a boolean");
    }
    if (options.resume) this.#session = new Resumption(this.#backoff);
    this.#connect();
  }

  get readyState() { return this.#state; }
  get url() { return this.#url; }
  get socket() { return this.#socket; }
  get queued() { return { messages: this.#queue.length, bytes: this.#queuedBytes }; }
  /** With resume: the session of the moment (`id` null between sessions); else null. */
  get session() {
    const s = this.#session;
    if (s === null) return null;
    return Object.freeze({ id: s.sessionId, windowMs: s.windowMs, received: s.received, sent: s.sent, resuming: s.held });
  }

  send(data) {
    if (this.#state === OPEN && this.#socket !== null) {
      // With resume the message is kept until the proxy acks it, and sent again after a
      // resume; without, a socket that closes now loses it (see README.md).
      this.#session?.sending(data);
      this.#socket.send(data);
      return true;
    }
    if (this.#ending !== null || this.#state === CLOSED) return this.#drop(data, "closed");
    const size = byteLength(data);
    if (this.#queue.length + 1 > this.#maxMessages || this.#queuedBytes + size > this.#maxBytes) {
      return this.#drop(data, "queue full");
    }
    this.#queue.push(data);
    this.#queuedBytes += size;
    return true;
  }

  close(code, reason) {
    if (this.#ending !== null || this.#state === CLOSED) return;
    this.#ending = { code: code ?? 1000, reason: reason ?? "" };
    const socket = this.#socket;
    if (socket !== null && socket.readyState < CLOSING) {
      try {
        // Some WebSockets (Node's undici) fire their error and close events inside
        // close() on a connecting socket: #ending is set first, so they end the client.
        socket.close(code, reason);
      } catch (error) {
        this.#ending = null; // a code or reason WebSocket.close refuses: nothing changed
        throw error;
      }
    }
    this.#discardQueue();
    clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#deciding || this.#state === CLOSED) return;
    if (this.#socket !== null && this.#socket.readyState < CLOSED) {
      this.#state = CLOSING; // #onClose ends it when the socket's close arrives
    } else {
      this.#generation += 1; // a token still being fetched is ignored
      this.#end(this.#ending.code, this.#ending.reason, true);
    }
  }

  #drop(data, why) {
    this.dispatchEvent(event("drop", { data, why }));
    return false;
  }

  #discardQueue() {
    this.#queue = [];
    this.#queuedBytes = 0;
  }

  async #connect() {
    const generation = ++this.#generation;
    this.#state = CONNECTING;
    const session = this.#session;
    if (session !== null && session.expired(performance.now())) {
      this.#lost(session.fail("window passed"));
      if (generation !== this.#generation) return; // a listener called close()
    }
    let token;
    if (this.#token !== undefined) {
      try {
        token = await this.#token();
      } catch (error) {
        if (generation !== this.#generation) return;
        this.dispatchEvent(event("error", { error }));
        this.#onClose(generation, { code: 1006, reason: "", wasClean: false }, false);
        return;
      }
      if (generation !== this.#generation) return; // close() came while the hook ran
    }
    let url = this.#url;
    if (session !== null) {
      const parsed = new URL(url);
      parsed.searchParams.set(RESUME_PARAM, session.param());
      url = parsed.href;
    }
    const protocols = [...this.#protocols];
    if (token !== undefined && token !== null && token !== "") {
      if (this.#placement.kind === "query") {
        const parsed = new URL(url);
        parsed.searchParams.set(this.#placement.name, String(token));
        url = parsed.href;
      } else {
        protocols.unshift(this.#placement.name + token);
      }
    }
    let socket;
    try {
      socket = protocols.length > 0 ? new this.#WebSocket(url, protocols) : new this.#WebSocket(url);
    } catch (error) {
      // A URL or protocol the constructor refuses: no retry can fix that.
      this.dispatchEvent(event("error", { error }));
      this.#end(1006, String(error?.message ?? error), false);
      return;
    }
    // With resume the framing byte of binary messages is read at once: an ArrayBuffer.
    if (session !== null) socket.binaryType = "arraybuffer";
    else if (this.#binaryType !== undefined) socket.binaryType = this.#binaryType;
    this.#socket = socket;
    // Without resume a socket is open at its open event; with it, at the proxy's first
    // message (session or resumed).
    let opened = false;
    // A peer that takes the connection and never answers (or, with resume, never sends
    // the session) would hold the client forever: past openTimeoutMs the attempt is a
    // 1006 like any failed connect, and the rules above decide.
    let openTimer = null;
    if (this.#openTimeoutMs > 0) {
      openTimer = setTimeout(() => {
        openTimer = null;
        if (generation !== this.#generation || opened) return;
        end({ code: 1006, reason: "open timed out", wasClean: false }); // first: the
        try { //                       socket's own events are not looked at after it
          socket.close();
        } catch {
          // already closing
        }
      }, this.#openTimeoutMs);
    }
    const open = (resent) => {
      opened = true;
      clearTimeout(openTimer);
      this.#openedAt = Date.now();
      if (resent !== null) for (const data of resent) socket.send(data);
      this.#state = OPEN;
      const queue = this.#queue;
      this.#discardQueue();
      for (const data of queue) {
        session?.sending(data);
        socket.send(data);
      }
      if (session !== null) {
        if (resent === null) this.dispatchEvent(event("session", { sessionId: session.sessionId }));
        else this.dispatchEvent(event("resumed", { resent: resent.length }));
        if (generation !== this.#generation || this.#state !== OPEN) return; // a listener closed it
      }
      const protocol = socket.protocol.startsWith(this.#placement.name) && this.#placement.kind === "subprotocol"
        ? "" : socket.protocol;
      this.dispatchEvent(event("open", { protocol, flushed: queue.length }));
    };
    socket.addEventListener("open", () => {
      if (generation !== this.#generation) return;
      if (session === null) open(null);
    });
    socket.addEventListener("message", (e) => {
      if (generation !== this.#generation) return;
      if (session === null) {
        this.dispatchEvent(event("message", { data: e.data }));
        return;
      }
      try {
        if (!opened) {
          open(session.opened(e.data));
          return;
        }
        const taken = session.take(e.data);
        if (taken === null) return;
        const data = this.#binaryType === "blob" && typeof taken.payload !== "string" ? new Blob([taken.payload]) : taken.payload;
        this.dispatchEvent(event("message", { data }));
      } catch (error) {
        if (!(error instanceof FramingError)) throw error;
        this.#notResumable(generation, socket, error, opened);
      }
    });
    // A socket ends once: by its close event, or by an error event, which per the
    // WebSocket spec always means a close with 1006 (some implementations, such as Node
    // 20's undici, fire no close event at all after a refused handshake).
    let ended = false;
    const end = (close) => {
      if (ended) return;
      ended = true;
      clearTimeout(openTimer);
      this.#onClose(generation, close, opened);
    };
    socket.addEventListener("error", (e) => {
      if (generation !== this.#generation || ended) return;
      // close() while connecting fails the socket with an error: the app's own doing.
      if (this.#ending === null) this.dispatchEvent(event("error", { error: e.error ?? e.message ?? e }));
      end({ code: 1006, reason: "", wasClean: false });
    });
    socket.addEventListener("close", (e) => {
      end({ code: e.code, reason: e.reason ?? "", wasClean: !!e.wasClean });
    });
  }

  /** The proxy does not speak the resumable-session protocol: retrying cannot help. */
  #notResumable(generation, socket, error, opened) {
    this.#generation += 1; // the socket's own close is not looked at
    this.#socket = null;
    const reason = `resume: ${error.message}`.slice(0, 123);
    try {
      socket.close(1002, "not a resumable session");
    } catch {
      // already closing
    }
    this.dispatchEvent(event("error", { error }));
    this.dispatchEvent(event("close", { code: 1002, reason, wasClean: false, beforeOpen: !opened, terminal: true }));
    this.#end(1002, reason, false);
  }

  #lost(step) {
    this.dispatchEvent(event("resumefailed", { reason: step.reason, unacked: step.unacked }));
  }

  /** Schedule the next connect after *delayMs*, with its close and reconnecting events. */
  #retry(base, delayMs, hinted, after) {
    this.#state = CONNECTING;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#connect();
    }, delayMs);
    this.dispatchEvent(event("close", { ...base, retryInMs: delayMs, hinted }));
    // A close listener may have called close(): then no reconnect follows.
    if (this.#ending !== null || this.#state === CLOSED) return;
    after();
  }

  #onClose(generation, close, opened) {
    if (generation !== this.#generation) return;
    this.#socket = null;
    const base = { code: close.code, reason: close.reason, wasClean: close.wasClean, beforeOpen: !opened };
    if (this.#ending !== null) {
      this.dispatchEvent(event("close", { ...base, terminal: true }));
      this.#end(this.#ending.code, this.#ending.reason, true);
      return;
    }
    if (this.#session !== null) {
      const step = this.#session.after(base, performance.now());
      if (step.verdict === "resume") {
        this.#retry(base, step.delayMs, step.hinted, () => this.dispatchEvent(event("reconnecting",
          { attempt: step.attempt, delayMs: step.delayMs, hinted: step.hinted, tokenRefresh: false })));
        return;
      }
      if (step.verdict === "failed") { // a fresh session, at once
        this.#retry(base, 0, false, () => {
          this.#lost(step);
          if (this.#ending !== null || this.#state === CLOSED) return;
          this.dispatchEvent(event("reconnecting", { attempt: step.attempt, delayMs: 0, hinted: false, tokenRefresh: false }));
        });
        return;
      }
    }
    if (opened && Date.now() - this.#openedAt >= this.#backoff.resetAfterMs) this.#attempt = 0;
    const attempt = this.#attempt + 1;
    let rule = defaultRule(close.code, close.reason, this.#token !== undefined);
    let verdict;
    if (this.#shouldReconnect !== undefined) {
      this.#deciding = true;
      try {
        verdict = this.#shouldReconnect(
          { code: close.code, reason: close.reason, wasClean: close.wasClean, beforeOpen: !opened }, attempt);
      } catch (error) {
        this.dispatchEvent(event("error", { error })); // and the default rule decides
      } finally {
        this.#deciding = false;
      }
    }
    if (verdict === true && rule === "stop") rule = "reconnect";
    if (verdict === false) rule = "stop";
    if (this.#ending !== null) rule = "stop"; // the hook called close()
    if (rule === "stop") {
      this.#discardQueue();
      this.dispatchEvent(event("close", { ...base, terminal: true }));
      if (this.#ending !== null) this.#end(this.#ending.code, this.#ending.reason, true);
      else this.#end(close.code, close.reason, false);
      return;
    }
    const hint = parseRetryHint(close.reason);
    const hinted = hint !== null;
    const delayMs = hinted ? Math.min(hint, this.#backoff.maxHintMs) : backoffDelay(attempt, this.#backoff);
    this.#attempt = attempt;
    this.#retry(base, delayMs, hinted, () => this.dispatchEvent(event("reconnecting",
      { attempt, delayMs, hinted, tokenRefresh: rule === "refresh" })));
  }

  #end(code, reason, requested) {
    if (this.#state === CLOSED) return;
    this.#state = CLOSED;
    this.#socket = null;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#discardQueue();
    this.dispatchEvent(event("terminal", { code, reason, requested }));
  }
}

export default WsproxyClient;
