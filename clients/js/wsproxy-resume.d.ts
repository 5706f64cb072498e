// Types of wsproxy-resume.js: resumable sessions through wsproxy (README "Resumable sessions"),
// the single-purpose form of `new WsproxyClient(url, {resume: true})`.

/** The close code of a resume the proxy refused. */
export declare const RESUME_FAILED: 4410;

export interface ResumableSessionOptions {
  /** The WebSocket class (default: the global one). */
  WebSocket?: typeof WebSocket;
  /** The most between two attempts to connect or resume, in ms (default 50). */
  retryDelayMs?: number;
}

/** Events: "session" ({sessionId}), "message" ({data}: the backend's payload),
 *  "resumed" ({resent}), "resumefailed" ({reason, unacked}), "close" ({code, reason,
 *  requested}). */
export declare class ResumableSession extends EventTarget {
  constructor(url: string | URL, options?: ResumableSessionOptions);
  readonly state: "connecting" | "open" | "resuming" | "closed";
  readonly sessionId: string | null;
  readonly windowMs: number;
  readonly received: number;
  readonly sent: number;
  /** Sends now if open, else once the session is back; false once closed. */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): boolean;
  close(code?: number, reason?: string): void;
}
