// Type-checked, never run (test_client_js.py runs `tsc -p` here): the API as README.md
// shows it must compile under `strict` against wsproxy-client.d.ts, and misuse must not.
import WsproxyClientDefault, {
  DEFAULTS, RECONNECT_CODES, RESUME_FAILED, Resumption, WsproxyClient, backoffDelay, defaultRule,
  parseRetryHint,
} from "../../wsproxy-client.js";
import type { CloseInfo, SessionInfo, WsproxyCloseEvent } from "../../wsproxy-client.js";

const client = new WsproxyClient("wss://example.com/chat", {
  protocols: ["chat"],
  token: async () => "a token",
  tokenIn: "query:access_token",
  backoff: { baseMs: 100, maxMs: 1000, maxHintMs: 5000, resetAfterMs: 1000 },
  shouldReconnect: (close: CloseInfo, attempt: number) =>
    close.code === 4001 ? attempt < 3 : undefined,
  queue: { maxMessages: 5, maxBytes: 100 },
  binaryType: "arraybuffer",
});
client.addEventListener("open", (e) => console.log(e.protocol, e.flushed));
client.addEventListener("message", (e) => console.log(e.data));
client.addEventListener("close", (e: WsproxyCloseEvent) => {
  const wait: number | undefined = e.retryInMs;
  const end: true | undefined = e.terminal;
  console.log(e.code, e.reason, e.wasClean, e.beforeOpen, wait, end, e.hinted);
});
client.addEventListener("reconnecting", (e) => {
  const delay: number = e.delayMs;
  const hinted: boolean = e.hinted;
  console.log(e.attempt, delay, hinted, e.tokenRefresh);
});
client.addEventListener("terminal", (e) => console.log(e.code, e.reason, e.requested));
client.addEventListener("drop", (e) => console.log(e.data, e.why));
client.addEventListener("error", (e) => console.log(e.error));
const queued: boolean = client.send("text");
client.send(new Uint8Array(3));
client.send(new ArrayBuffer(2));
const state: 0 | 1 | 2 | 3 = client.readyState;
console.log(queued, state, client.url, client.socket, client.queued.messages, WsproxyClient.OPEN);
client.close(1000, "done");

const hint: number | null = parseRetryHint("service restart; retry-after-ms=5");
const rule: "reconnect" | "refresh" | "stop" = defaultRule(1012, "", false);
console.log(hint, rule, backoffDelay(2, { baseMs: 10 }), RECONNECT_CODES.has(1012), DEFAULTS.queue.maxBytes);
new WsproxyClientDefault(new URL("ws://example.com/"), { token: () => undefined, tokenIn: "subprotocol:auth." });

// Resumable sessions as an option of the client.
const resuming = new WsproxyClient("wss://example.com/chat", {
  resume: true,
  openTimeoutMs: DEFAULTS.openTimeoutMs * 2,
  shouldReconnect: (close) => (close.beforeOpen ? undefined : close.code !== 4000),
});
resuming.addEventListener("session", (e) => console.log(e.sessionId.length));
resuming.addEventListener("resumed", (e) => console.log(e.resent + 1));
resuming.addEventListener("resumefailed", (e) => console.log(e.reason, e.unacked + 1));
const info: SessionInfo | null = resuming.session;
if (info !== null) console.log(info.id, info.windowMs, info.received, info.sent, info.resuming);
const step = new Resumption({ baseMs: 10 }).after({ code: 1006, reason: "", beforeOpen: false }, 0);
if (step.verdict === "resume") console.log(step.delayMs, step.attempt, step.hinted);
const failed: 4410 = RESUME_FAILED;
console.log(failed);
// @ts-expect-error: openTimeoutMs is a number of ms
new WsproxyClient("ws://example.com/", { openTimeoutMs: "10s" });
// @ts-expect-error: resume is a boolean
new WsproxyClient("ws://example.com/", { resume: "yes" });

// @ts-expect-error: a token cannot travel in a header from a browser
new WsproxyClient("ws://example.com/", { tokenIn: "header" });
// @ts-expect-error: send takes what WebSocket.send takes
client.send({ not: "data" });
// @ts-expect-error: shouldReconnect answers a boolean or undefined
new WsproxyClient("ws://example.com/", { shouldReconnect: () => "yes" });
