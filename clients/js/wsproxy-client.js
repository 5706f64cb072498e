// @wsproxy/client: a reconnecting WebSocket that honours wsproxy's closes.
//
// Reconnects on 1001, 1006, 1011, 1012, 1013, 1014 after the close reason's
// `retry-after-ms=N` hint (clamped), else after full-jitter exponential back-off; stops on
// 1008 and 4000-4999 (and every other code) unless the app's hook says otherwise; asks
// the token hook again on 1008 "token expired". A bounded queue holds sends while not
// open (the newest is refused when full). README.md has the whole contract; the types
// are in wsproxy-client.d.ts. No dependencies: browsers and Node >= 20.

/** Close codes the default rule reconnects on. */
export const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013, 1014]);

export const DEFAULTS = Object.freeze({
  backoff: Object.freeze({ baseMs: 500, maxMs: 30_000, maxHintMs: 60_000, resetAfterMs: 5_000 }),
  queue: Object.freeze({ maxMessages: 1000, maxBytes: 1 << 20 }),
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
    this.#connect();
  }

  get readyState() { return this.#state; }
  get url() { return this.#url; }
  get socket() { return this.#socket; }
  get queued() { return { messages: this.#queue.length, bytes: this.#queuedBytes }; }

  send(data) {
    if (this.#state === OPEN && this.#socket !== null) {
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
    if (this.#binaryType !== undefined) socket.binaryType = this.#binaryType;
    this.#socket = socket;
    let opened = false;
    socket.addEventListener("open", () => {
      if (generation !== this.#generation) return;
      opened = true;
      this.#openedAt = Date.now();
      this.#state = OPEN;
      const queue = this.#queue;
      this.#discardQueue();
      for (const data of queue) socket.send(data);
      const protocol = socket.protocol.startsWith(this.#placement.name) && this.#placement.kind === "subprotocol"
        ? "" : socket.protocol;
      this.dispatchEvent(event("open", { protocol, flushed: queue.length }));
    });
    socket.addEventListener("message", (e) => {
      if (generation !== this.#generation) return;
      this.dispatchEvent(event("message", { data: e.data }));
    });
    // A socket ends once: by its close event, or by an error event, which per the
    // WebSocket spec always means a close with 1006 (some implementations, such as Node
    // 20's undici, fire no close event at all after a refused handshake).
    let ended = false;
    const end = (close) => {
      if (ended) return;
      ended = true;
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

  #onClose(generation, close, opened) {
    if (generation !== this.#generation) return;
    this.#socket = null;
    const base = { code: close.code, reason: close.reason, wasClean: close.wasClean, beforeOpen: !opened };
    if (this.#ending !== null) {
      this.dispatchEvent(event("close", { ...base, terminal: true }));
      this.#end(this.#ending.code, this.#ending.reason, true);
      return;
    }
    if (opened && Date.now() - this.#openedAt >= this.#backoff.resetAfterMs) this.#attempt = 0;
    const attempt = this.#attempt + 1;
    let rule = defaultRule(close.code, close.reason, this.#token !== undefined);
    let verdict;
    if (this.#shouldReconnect !== undefined) {
      this.#deciding = true;
      try {
        verdict = this.#shouldReconnect({ code: close.code, reason: close.reason, wasClean: close.wasClean }, attempt);
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
    this.#state = CONNECTING;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#connect();
    }, delayMs);
    this.dispatchEvent(event("close", { ...base, retryInMs: delayMs, hinted }));
    // A close listener may have called close(): then no reconnect follows.
    if (this.#ending !== null || this.#state === CLOSED) return;
    this.dispatchEvent(event("reconnecting", { attempt, delayMs, hinted, tokenRefresh: rule === "refresh" }));
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
