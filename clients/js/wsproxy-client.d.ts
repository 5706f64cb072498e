// Types for wsproxy-client.js: a reconnecting WebSocket that honours wsproxy's closes.
// The behaviour (defaults, bounds, the drop policy) is described in README.md.

/** What a WebSocket constructor must look like (the browser's, Node's, or `ws`'s). */
export interface WebSocketLike extends EventTarget {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The data `send` takes: what `WebSocket.send` takes. */
export type SendData = string | ArrayBufferLike | ArrayBufferView | Blob;

export interface BackoffOptions {
  /** First back-off ceiling in ms (default 500). Attempt n waits random(0, min(maxMs, baseMs * 2^(n-1))). */
  baseMs?: number;
  /** Ceiling of any back-off wait in ms (default 30000). */
  maxMs?: number;
  /** Ceiling of a `retry-after-ms=N` hint in ms (default 60000): a larger hint waits this long. */
  maxHintMs?: number;
  /** A connection open at least this long (ms, default 5000) resets the attempt count. */
  resetAfterMs?: number;
}

export interface QueueOptions {
  /** Most messages held while not open (default 1000; 0 = refuse every send while not open). */
  maxMessages?: number;
  /** Most bytes held while not open (default 1048576; strings counted as UTF-8). */
  maxBytes?: number;
}

/**
 * How the token from `token()` travels:
 * - "subprotocol" (default): offered as `Sec-WebSocket-Protocol: bearer.<token>` before the
 *   app's own protocols (wsproxy's default `auth.token_from` includes `subprotocol`, prefix `bearer.`);
 * - "subprotocol:PREFIX": the same with another prefix (`auth.subprotocol_prefix`);
 * - "query:NAME": as the query parameter NAME (wsproxy needs `query:NAME` in `auth.token_from`).
 */
export type TokenIn = "subprotocol" | `subprotocol:${string}` | `query:${string}`;

/** What `shouldReconnect` is shown of a close. */
export interface CloseInfo {
  readonly code: number;
  readonly reason: string;
  readonly wasClean: boolean;
  /** The socket closed before it ever opened (a failed connect; with `resume`, before
   *  the proxy's session or resumed message). */
  readonly beforeOpen: boolean;
}

export interface WsproxyClientOptions {
  /** The app's subprotocols, offered on every connect. */
  protocols?: string | string[];
  /** The WebSocket constructor (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Called before every connect and reconnect; undefined = connect without a token. */
  token?: () => Promise<string | undefined> | string | undefined;
  /** How the token travels (default "subprotocol"). */
  tokenIn?: TokenIn;
  backoff?: BackoffOptions;
  /**
   * Overrides the default rule for one close: true = reconnect (after the hint, else the
   * back-off), false = stop for good, undefined = the default rule. *attempt* is the number
   * the next reconnect would have (1 for the first after a stable connection).
   */
  shouldReconnect?: (close: CloseInfo, attempt: number) => boolean | undefined;
  queue?: QueueOptions;
  /**
   * Set on every socket (default: the WebSocket's own default, "blob" in browsers). With
   * `resume` the sockets are "arraybuffer" and a binary message is an ArrayBuffer, or a
   * Blob when this is "blob".
   */
  binaryType?: "blob" | "arraybuffer" | string;
  /**
   * Speak wsproxy's resumable sessions (the proxy needs `resume: {enabled: true}`): a
   * close without a close frame (1006) resumes the session within the proxy's window,
   * every message once and in order; a real close goes by the rules above, and a
   * reconnect after it starts a fresh session. Default false.
   */
  resume?: boolean;
  /**
   * Bound on one connect and its handshake, in ms (with `resume`: up to the proxy's
   * `session` or `resumed` message); past it the attempt ends as a 1006 with the reason
   * "open timed out", and the reconnect rules decide. 0: no bound. Default 10000.
   */
  openTimeoutMs?: number;
}

export interface WsproxyOpenEvent extends Event {
  readonly type: "open";
  /** The subprotocol the server chose ("" when none; never the token's entry). */
  readonly protocol: string;
  /** How many queued messages were sent, in order, just before this event. */
  readonly flushed: number;
}

export interface WsproxyMessageEvent extends Event {
  readonly type: "message";
  readonly data: any;
}

export interface WsproxyCloseEvent extends Event, CloseInfo {
  readonly type: "close";
  /** Set when a reconnect follows: the wait before it, in ms. */
  readonly retryInMs?: number;
  /** Set (true) when this close ends the client for good. */
  readonly terminal?: true;
  /** Whether a `retry-after-ms` hint set the wait. */
  readonly hinted?: boolean;
  /** The socket closed before it ever opened (a failed connect). */
  readonly beforeOpen: boolean;
}

export interface WsproxyReconnectingEvent extends Event {
  readonly type: "reconnecting";
  /** 1 for the first reconnect after a stable connection, then 2, 3, ... */
  readonly attempt: number;
  readonly delayMs: number;
  /** True when the wait is the server's `retry-after-ms` hint (clamped), false for the back-off. */
  readonly hinted: boolean;
  /** True when the close was 1008 "token expired" and the token hook will be asked again. */
  readonly tokenRefresh: boolean;
}

export interface WsproxyTerminalEvent extends Event {
  readonly type: "terminal";
  readonly code: number;
  readonly reason: string;
  /** True when the app's close() ended it. */
  readonly requested: boolean;
}

export interface WsproxyDropEvent extends Event {
  readonly type: "drop";
  readonly data: SendData;
  /** "queue full" (either bound) or "closed" (after the end). */
  readonly why: "queue full" | "closed";
}

export interface WsproxyErrorEvent extends Event {
  readonly type: "error";
  /** The token hook's error, or the WebSocket's error event. */
  readonly error: unknown;
}

/** With `resume`: a fresh session started (a new backend connection), just before `open`. */
export interface WsproxySessionEvent extends Event {
  readonly type: "session";
  readonly sessionId: string;
}

/** With `resume`: the session went on after a drop, just before `open`. */
export interface WsproxyResumedEvent extends Event {
  readonly type: "resumed";
  /** The app's messages sent again (those the proxy had not acked). */
  readonly resent: number;
}

/** With `resume`: the session could not be resumed; a fresh one follows. */
export interface WsproxyResumeFailedEvent extends Event {
  readonly type: "resumefailed";
  /** The proxy's reason (after "resume failed: ") or "window passed". */
  readonly reason: string;
  /** The app's messages the old backend may or may not have had (not sent again). */
  readonly unacked: number;
}

export interface WsproxyClientEventMap {
  open: WsproxyOpenEvent;
  message: WsproxyMessageEvent;
  close: WsproxyCloseEvent;
  reconnecting: WsproxyReconnectingEvent;
  terminal: WsproxyTerminalEvent;
  drop: WsproxyDropEvent;
  error: WsproxyErrorEvent;
  session: WsproxySessionEvent;
  resumed: WsproxyResumedEvent;
  resumefailed: WsproxyResumeFailedEvent;
}

/** With `resume`: the session of the moment. */
export interface SessionInfo {
  /** Null between sessions. */
  readonly id: string | null;
  /** The window the proxy announced, in ms. */
  readonly windowMs: number;
  /** Backend messages received in this session. */
  readonly received: number;
  /** The app's messages sent in this session. */
  readonly sent: number;
  /** The connection dropped and the client is resuming. */
  readonly resuming: boolean;
}

export declare class WsproxyClient extends EventTarget {
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  constructor(url: string | URL, options?: WsproxyClientOptions);
  /**
   * CONNECTING (0) while connecting or waiting to reconnect, OPEN (1), CLOSING (2) after
   * close() while the socket closes, CLOSED (3) once it has ended for good.
   */
  readonly readyState: 0 | 1 | 2 | 3;
  /** The URL given, without any token. */
  readonly url: string;
  /** The current WebSocket, or null between connections. */
  readonly socket: WebSocketLike | null;
  /** Messages and bytes held for the next open. */
  readonly queued: { readonly messages: number; readonly bytes: number };
  /** With `resume`: the session of the moment; null without `resume`. */
  readonly session: SessionInfo | null;
  /**
   * Sends now when open; else queues (flushed in order before the next `open` event).
   * Returns false, with a `drop` event, when the queue is full (the newest message is
   * refused; queued ones are kept) or the client has ended.
   */
  send(data: SendData): boolean;
  /** Ends the client for good: no reconnect; queued messages are discarded. */
  close(code?: number, reason?: string): void;
  addEventListener<K extends keyof WsproxyClientEventMap>(
    type: K,
    listener: (event: WsproxyClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof WsproxyClientEventMap>(
    type: K,
    listener: (event: WsproxyClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** Close codes the default rule reconnects on. */
export declare const RECONNECT_CODES: ReadonlySet<number>;

/** The defaults of every option with a number. */
export declare const DEFAULTS: {
  readonly backoff: Required<BackoffOptions>;
  readonly queue: Required<QueueOptions>;
  readonly openTimeoutMs: number;
};

/** The `retry-after-ms=N` hint in a close reason, in ms (not clamped), or null. */
export declare function parseRetryHint(reason: string | undefined | null): number | null;

/** Full-jitter back-off: random(0, min(maxMs, baseMs * 2^(attempt-1))) in whole ms. */
export declare function backoffDelay(
  attempt: number,
  backoff?: BackoffOptions,
  random?: () => number,
): number;

/**
 * The default rule: "reconnect", "refresh" (1008 "token expired" with a token hook:
 * ask the hook again, then reconnect) or "stop".
 */
export declare function defaultRule(
  code: number,
  reason: string,
  hasTokenHook: boolean,
): "reconnect" | "refresh" | "stop";

/** The close code of a resume the proxy refused. */
export declare const RESUME_FAILED: 4410;
/** The query parameter of the resumable-session protocol. */
export declare const RESUME_PARAM: "wsproxy_resume";

/** A message that is not the resumable-session protocol's. */
export declare class FramingError extends Error {}

/** What `Resumption.after` says of a close. */
export type ResumeStep =
  | { readonly verdict: "resume"; readonly attempt: number; readonly delayMs: number; readonly hinted: boolean }
  | { readonly verdict: "failed"; readonly attempt: number; readonly reason: string; readonly unacked: number }
  | { readonly verdict: "ended" }
  | { readonly verdict: "none" };

/** A resumable session's state and decisions, without I/O (the client uses it with `resume`). */
export declare class Resumption {
  constructor(backoff?: BackoffOptions, random?: () => number);
  sessionId: string | null;
  windowMs: number;
  received: number;
  sent: number;
  unacked: Array<[number, SendData]>;
  deadline: number | null;
  attempt: number;
  readonly held: boolean;
  param(): string;
  expired(now: number): boolean;
  opened(first: unknown): SendData[] | null;
  sending(data: SendData): void;
  take(data: unknown): { payload: string | ArrayBuffer } | null;
  after(close: { code: number; reason: string; beforeOpen: boolean }, now: number): ResumeStep;
  fail(reason: string): ResumeStep;
  forget(): void;
}

export default WsproxyClient;
