// Unit tests without sockets: the hint parser, the back-off, the default rule, and the
// client's state machine driven by a fake WebSocket (no network, no timers waited on
// beyond a few ms). Run: node --test test/unit.test.js

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import {
  DEFAULTS, FramingError, RECONNECT_CODES, RESUME_FAILED, Resumption, WsproxyClient, backoffDelay,
  defaultRule, parseRetryHint,
} from "../wsproxy-client.js";

describe("parseRetryHint", () => {
  test("reads wsproxy's hint", () => {
    assert.equal(parseRetryHint("service restart; retry-after-ms=734"), 734);
    assert.equal(parseRetryHint("going away; retry-after-ms=0"), 0);
    assert.equal(parseRetryHint("retry-after-ms=12"), 12);
    assert.equal(parseRetryHint("try again later; retry-after-ms=5000; more"), 5000);
  });
  test("no hint, or not a hint", () => {
    for (const reason of ["", "service restart", "retry-after-ms=", "retry-after-ms=-5",
      "retry-after-ms=1.5", "xretry-after-ms=5", "retry-after-ms=5x", "retry-after-ms=1234567890",
      undefined, null, 1012]) {
      assert.equal(parseRetryHint(reason), null, String(reason));
    }
  });
});

describe("backoffDelay", () => {
  test("full jitter: random(0, min(max, base * 2^(n-1)))", () => {
    const b = { baseMs: 100, maxMs: 1000 };
    assert.equal(backoffDelay(1, b, () => 0), 0);
    assert.equal(backoffDelay(1, b, () => 0.999999), 99);
    assert.equal(backoffDelay(2, b, () => 0.5), 100);
    assert.equal(backoffDelay(3, b, () => 0.5), 200);
    assert.equal(backoffDelay(4, b, () => 0.5), 400);
    assert.equal(backoffDelay(5, b, () => 0.5), 500); // ceiling 1000 reached
    assert.equal(backoffDelay(1e6, b, () => 0.999999), 999);
    assert.equal(backoffDelay(0, b, () => 0.5), 50); // below 1 counts as 1
  });
  test("defaults: 500 ms first, 30 s at most", () => {
    assert.deepEqual(DEFAULTS.backoff, { baseMs: 500, maxMs: 30000, maxHintMs: 60000, resetAfterMs: 5000 });
    assert.equal(backoffDelay(1, {}, () => 0.999999), 499);
    assert.equal(backoffDelay(100, undefined, () => 0.999999), 29999);
  });
  test("bounded for every attempt (a seeded sweep)", () => {
    let seed = 1;
    const random = () => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    for (let attempt = 1; attempt <= 64; attempt++) {
      const ceiling = Math.min(2000, 50 * 2 ** (attempt - 1));
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, { baseMs: 50, maxMs: 2000 }, random);
        assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `${attempt}: ${d}`);
      }
    }
  });
});

describe("defaultRule", () => {
  test("reconnect codes", () => {
    assert.deepEqual([...RECONNECT_CODES].sort(), [1001, 1006, 1011, 1012, 1013, 1014]);
    for (const code of RECONNECT_CODES) assert.equal(defaultRule(code, "", false), "reconnect");
  });
  test("terminal codes", () => {
    for (const code of [1000, 1002, 1003, 1005, 1007, 1008, 1009, 1010, 1015, 3000, 4000, 4001, 4999]) {
      assert.equal(defaultRule(code, "bye; retry-after-ms=5", true), "stop", String(code));
    }
  });
  test("1008 token expired refreshes only with a token hook", () => {
    assert.equal(defaultRule(1008, "token expired", true), "refresh");
    assert.equal(defaultRule(1008, "token expired; retry-after-ms=50", true), "refresh");
    assert.equal(defaultRule(1008, "token expired", false), "stop");
    assert.equal(defaultRule(1008, "connection revoked", true), "stop");
  });
});

/** A WebSocket stand-in the test drives: every instance is kept in `FakeSocket.made`. */
class FakeSocket extends EventTarget {
  static made = [];
  /** Every socket of the file, for the end (``after``). */
  static all = [];
  constructor(url, protocols) {
    super();
    FakeSocket.all.push(this);
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.protocol = "";
    this.sent = [];
    this.closedWith = null;
    FakeSocket.made.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(data);
  }
  close(code, reason) {
    this.closedWith = [code, reason];
    this.readyState = 2;
  }
  // What the test does:
  open(protocol = "") {
    this.readyState = 1;
    this.protocol = protocol;
    this.dispatchEvent(new Event("open"));
  }
  message(data) {
    this.dispatchEvent(Object.assign(new Event("message"), { data }));
  }
  closed(code, reason = "", wasClean = true) {
    this.readyState = 3;
    this.dispatchEvent(Object.assign(new Event("close"), { code, reason, wasClean }));
  }
}

function recorder(client) {
  const events = [];
  for (const type of ["open", "message", "close", "reconnecting", "terminal", "drop", "error",
    "session", "resumed", "resumefailed"]) {
    client.addEventListener(type, (e) => {
      const { type: _t, ...fields } = Object.fromEntries(Object.entries(e));
      events.push([type, fields]);
    });
  }
  return events;
}

/** Every client of the file: a client left connecting would retry forever (each attempt
 *  ends at openTimeoutMs), so ``after`` closes them all. */
const clients = [];
function track(client) {
  clients.push(client);
  return client;
}
after(() => {
  for (const client of clients) client.close();
  for (const socket of FakeSocket.all) if (socket.readyState !== 3) socket.closed(1006, "", false);
});

function fresh(options = {}) {
  FakeSocket.made = [];
  const client = track(new WsproxyClient("ws://example.test/x", { WebSocket: FakeSocket, ...options }));
  return { client, events: recorder(client) };
}

describe("WsproxyClient with a fake socket", () => {
  test("options are checked, naming the option", () => {
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, backoff: { baseMs: -1 } }), /backoff\.baseMs/);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, backoff: { maxMs: Infinity } }), /backoff\.maxMs/);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, backoff: { baseMs: 10, maxMs: 5 } }), /backoff\.maxMs/);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, queue: { maxBytes: NaN } }), /queue\.maxBytes/);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, tokenIn: "header" }), /tokenIn/);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, tokenIn: "query:" }), /tokenIn/);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, token: "abc" }), /token/);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: 5 }), /WebSocket/);
  });

  test("queue: bounded by messages, newest refused, order kept, flushed before open", () => {
    const { client, events } = fresh({ queue: { maxMessages: 3 } });
    assert.equal(client.readyState, WsproxyClient.CONNECTING);
    assert.deepEqual([1, 2, 3, 4].map((n) => client.send(`m${n}`)), [true, true, true, false]);
    assert.deepEqual(events, [["drop", { data: "m4", why: "queue full" }]]);
    assert.deepEqual(client.queued, { messages: 3, bytes: 6 });
    const [socket] = FakeSocket.made;
    let sentAtOpen = null;
    client.addEventListener("open", () => { sentAtOpen = [...socket.sent]; client.send("m5"); });
    socket.open();
    assert.deepEqual(sentAtOpen, ["m1", "m2", "m3"]);
    assert.deepEqual(socket.sent, ["m1", "m2", "m3", "m5"]);
    assert.deepEqual(events.at(-1), ["open", { protocol: "", flushed: 3 }]);
    assert.equal(client.readyState, WsproxyClient.OPEN);
    assert.deepEqual(client.queued, { messages: 0, bytes: 0 });
  });

  test("queue: bounded by bytes (UTF-8, binary by byteLength)", () => {
    const { client } = fresh({ queue: { maxBytes: 10 } });
    assert.equal(client.send("ééé"), true); // 6 bytes
    assert.equal(client.send(new Uint8Array(5)), false); // 11 > 10
    assert.equal(client.send(new ArrayBuffer(4)), true); // 10
    assert.equal(client.send(""), true); // 0 more bytes still fits
    assert.deepEqual(client.queued, { messages: 3, bytes: 10 });
  });

  test("a hinted close waits the hint, then reconnects; a token travels as a subprotocol", async () => {
    let calls = 0;
    const { client, events } = fresh({ token: async () => `t${++calls}`, protocols: ["chat"] });
    // The token hook is awaited before the socket exists.
    await new Promise((r) => setImmediate(r));
    const [first] = FakeSocket.made;
    assert.deepEqual(first.protocols, ["bearer.t1", "chat"]);
    first.open("bearer.t1");
    assert.deepEqual(events.at(-1), ["open", { protocol: "", flushed: 0 }]);
    const started = Date.now();
    first.closed(1012, "service restart; retry-after-ms=40");
    assert.deepEqual(events.slice(-2), [
      ["close", { code: 1012, reason: "service restart; retry-after-ms=40", wasClean: true, beforeOpen: false, retryInMs: 40, hinted: true }],
      ["reconnecting", { attempt: 1, delayMs: 40, hinted: true, tokenRefresh: false }],
    ]);
    assert.equal(client.readyState, WsproxyClient.CONNECTING);
    assert.equal(client.send("while away"), true);
    while (FakeSocket.made.length < 2) await new Promise((r) => setTimeout(r, 5));
    assert.ok(Date.now() - started >= 40, "reconnected before the hint");
    const second = FakeSocket.made[1];
    assert.deepEqual(second.protocols, ["bearer.t2", "chat"]);
    second.open("chat");
    assert.deepEqual(second.sent, ["while away"]);
    assert.deepEqual(events.at(-1), ["open", { protocol: "chat", flushed: 1 }]);
    client.close();
    assert.equal(client.readyState, WsproxyClient.CLOSING);
    assert.deepEqual(second.closedWith, [undefined, undefined]);
    second.closed(1000, "");
    assert.equal(client.readyState, WsproxyClient.CLOSED);
    assert.deepEqual(events.slice(-2), [
      ["close", { code: 1000, reason: "", wasClean: true, beforeOpen: false, terminal: true }],
      ["terminal", { code: 1000, reason: "", requested: true }],
    ]);
  });

  test("a hint is clamped to maxHintMs", () => {
    const { client, events } = fresh({ backoff: { maxHintMs: 25 } });
    FakeSocket.made[0].open();
    FakeSocket.made[0].closed(1013, "try again later; retry-after-ms=999999");
    assert.deepEqual(events.at(-1), ["reconnecting", { attempt: 1, delayMs: 25, hinted: true, tokenRefresh: false }]);
    client.close();
  });

  test("query:NAME puts the token in the URL", async () => {
    const { client } = fresh({ token: () => "abc", tokenIn: "query:access_token" });
    await new Promise((r) => setImmediate(r));
    assert.equal(FakeSocket.made[0].url, "ws://example.test/x?access_token=abc");
    assert.equal(FakeSocket.made[0].protocols, undefined);
    assert.equal(client.url, "ws://example.test/x");
    client.close();
  });

  test("terminal codes stop for good; shouldReconnect can override both ways", () => {
    for (const [code, reason] of [[1008, "connection revoked"], [4001, "go away"], [1000, ""], [1002, ""]]) {
      const { client, events } = fresh();
      FakeSocket.made[0].open();
      FakeSocket.made[0].closed(code, reason);
      assert.equal(client.readyState, WsproxyClient.CLOSED);
      assert.deepEqual(events.slice(-2), [
        ["close", { code, reason, wasClean: true, beforeOpen: false, terminal: true }],
        ["terminal", { code, reason, requested: false }],
      ]);
      assert.equal(client.send("late"), false);
      assert.deepEqual(events.at(-1), ["drop", { data: "late", why: "closed" }]);
    }
    const seen = [];
    const { client, events } = fresh({
      shouldReconnect: (close, attempt) => { seen.push([close, attempt]); return close.code === 4001 ? true : close.code === 1012 ? false : undefined; },
      backoff: { baseMs: 10, maxMs: 10 },
    });
    FakeSocket.made[0].open();
    FakeSocket.made[0].closed(4001, "again");
    assert.equal(events.at(-1)[0], "reconnecting");
    assert.deepEqual(seen, [[{ code: 4001, reason: "again", wasClean: true, beforeOpen: false }, 1]]);
    client.close(); // while waiting: ends at once
    assert.equal(client.readyState, WsproxyClient.CLOSED);
    assert.deepEqual(events.at(-1), ["terminal", { code: 1000, reason: "", requested: true }]);
    const other = fresh({ shouldReconnect: (close) => (close.code === 1012 ? false : undefined) });
    other.client.addEventListener("terminal", () => {});
    FakeSocket.made[0].closed(1012, "service restart; retry-after-ms=5");
    assert.equal(other.client.readyState, WsproxyClient.CLOSED);
  });

  test("token expired: the hook is asked again; without a hook it is terminal", async () => {
    let calls = 0;
    const { client, events } = fresh({ token: () => `t${++calls}`, backoff: { baseMs: 1, maxMs: 1 } });
    await new Promise((r) => setImmediate(r));
    FakeSocket.made[0].open();
    FakeSocket.made[0].closed(1008, "token expired");
    assert.deepEqual(events.at(-1), ["reconnecting", { attempt: 1, delayMs: 0, hinted: false, tokenRefresh: true }]);
    while (FakeSocket.made.length < 2) await new Promise((r) => setTimeout(r, 2));
    assert.deepEqual(FakeSocket.made[1].protocols, ["bearer.t2"]);
    client.close();
    const bare = fresh();
    FakeSocket.made[0].open();
    FakeSocket.made[0].closed(1008, "token expired");
    assert.equal(bare.client.readyState, WsproxyClient.CLOSED);
  });

  test("a failing token hook counts as a failed connect, then backs off", async () => {
    let calls = 0;
    const { client, events } = fresh({
      token: async () => { if (++calls === 1) throw new Error("token service down"); return "ok"; },
      backoff: { baseMs: 5, maxMs: 5 },
    });
    while (FakeSocket.made.length < 1) await new Promise((r) => setTimeout(r, 2));
    assert.equal(events[0][0], "error");
    assert.equal(events[0][1].error.message, "token service down");
    assert.deepEqual(events[1][1].code, 1006);
    assert.equal(events[1][1].beforeOpen, true);
    assert.equal(events[2][0], "reconnecting");
    assert.deepEqual(FakeSocket.made[0].protocols, ["bearer.ok"]);
    client.close();
  });

  test("the attempt count grows until a connection stays open resetAfterMs", async () => {
    const next = async (n) => { while (FakeSocket.made.length < n) await new Promise((r) => setTimeout(r, 2)); };
    const attempts = (events) => events.filter(([t]) => t === "reconnecting").map(([, e]) => e.attempt);
    const { client, events } = fresh({ backoff: { baseMs: 1, maxMs: 1, resetAfterMs: 60_000 } });
    FakeSocket.made[0].closed(1006, "", false); // a failed connect
    assert.deepEqual(events.at(-2), ["close", { code: 1006, reason: "", wasClean: false, beforeOpen: true, retryInMs: 0, hinted: false }]);
    await next(2);
    FakeSocket.made[1].closed(1006, "", false);
    await next(3);
    FakeSocket.made[2].open(); // open, but not for 60 s
    FakeSocket.made[2].closed(1012, "service restart; retry-after-ms=1");
    assert.deepEqual(attempts(events), [1, 2, 3]);
    client.close();
    const stable = fresh({ backoff: { baseMs: 1, maxMs: 1, resetAfterMs: 0 } });
    FakeSocket.made[0].closed(1006, "", false);
    await next(2);
    FakeSocket.made[1].open(); // open for >= 0 ms: stable
    FakeSocket.made[1].closed(1001, "going away");
    assert.deepEqual(attempts(stable.events), [1, 1]);
    stable.client.close();
  });

  test("close() before anything: terminal at once, and only once", () => {
    const { client, events } = fresh();
    client.close(4000, "bye");
    client.close();
    assert.deepEqual(FakeSocket.made[0].closedWith, [4000, "bye"]);
    FakeSocket.made[0].closed(1006, "", false);
    assert.deepEqual(events.filter(([t]) => t === "terminal"), [["terminal", { code: 4000, reason: "bye", requested: true }]]);
    assert.equal(client.send("x"), false);
  });
});

describe("WsproxyClient edge cases", () => {
  test("close() from shouldReconnect: close, then terminal (requested), once", () => {
    let client = null;
    FakeSocket.made = [];
    client = track(new WsproxyClient("ws://example.test/", {
      WebSocket: FakeSocket, shouldReconnect: () => { client.close(4000, "app"); return true; },
    }));
    const events = recorder(client);
    FakeSocket.made[0].open();
    FakeSocket.made[0].closed(1012, "service restart; retry-after-ms=1");
    assert.deepEqual(events.slice(1).map(([t, e]) => [t, e.code, e.terminal ?? e.requested]), [
      ["close", 1012, true], ["terminal", 4000, true]]);
    assert.equal(client.readyState, WsproxyClient.CLOSED);
    assert.equal(FakeSocket.made.length, 1);
  });

  test("a shouldReconnect that throws: an error event, and the default rule decides", () => {
    const { client, events } = fresh({ shouldReconnect: () => { throw new Error("oops"); } });
    FakeSocket.made[0].open();
    FakeSocket.made[0].closed(1012, "service restart; retry-after-ms=1");
    assert.equal(events[1][0], "error");
    assert.equal(events[1][1].error.message, "oops");
    assert.deepEqual(events.slice(2).map(([t]) => t), ["close", "reconnecting"]);
    client.close();
    assert.equal(client.readyState, WsproxyClient.CLOSED);
  });

  test("close() while connecting: no error event for the app's own doing", () => {
    const { client, events } = fresh();
    client.close();
    const socket = FakeSocket.made[0];
    socket.dispatchEvent(new Event("error")); // what a browser does after close() on CONNECTING
    socket.closed(1006, "", false);
    assert.deepEqual(events.map(([t]) => t), ["close", "terminal"]);
  });

  test("close() on a socket that fails inside close() (Node's undici): terminal, no reconnect", () => {
    class Eager extends FakeSocket {
      close(code, reason) {
        super.close(code, reason);
        this.dispatchEvent(new Event("error"));
        this.closed(1006, "", false);
      }
    }
    FakeSocket.made = [];
    const client = track(new WsproxyClient("ws://example.test/", { WebSocket: Eager }));
    const events = recorder(client);
    client.close();
    assert.deepEqual(events.map(([t]) => t), ["close", "terminal"]);
    assert.equal(client.readyState, WsproxyClient.CLOSED);
  });

  test("close() with a code the socket refuses throws and changes nothing", () => {
    class Picky extends FakeSocket {
      close(code, reason) {
        if (code !== undefined && code !== 1000 && (code < 3000 || code > 4999)) {
          throw new RangeError("bad code " + code);
        }
        super.close(code, reason);
      }
    }
    FakeSocket.made = [];
    const client = track(new WsproxyClient("ws://example.test/", { WebSocket: Picky }));
    FakeSocket.made[0].open();
    assert.throws(() => client.close(1005), /bad code/);
    assert.equal(client.readyState, WsproxyClient.OPEN);
    assert.equal(client.send("still"), true);
    client.close(4000);
    assert.equal(client.readyState, WsproxyClient.CLOSING);
  });
});

const control = (fields) => "\x01" + JSON.stringify(fields);
const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

/** A Resumption the proxy has started: id "abc", a 30 s window. */
function started(backoff = {}) {
  const session = new Resumption(backoff, () => 0.5);
  assert.equal(session.param(), "1");
  assert.equal(session.opened(control({ type: "session", id: "abc", window: 30 })), null);
  return session;
}

describe("Resumption (no sockets)", () => {
  test("framing: payloads counted, acks applied, anything else refused", () => {
    const session = started();
    assert.deepEqual(session.take("\x00one"), { payload: "one" });
    const binary = session.take(new Uint8Array([0, 7, 8]).buffer);
    assert.deepEqual([...new Uint8Array(binary.payload)], [7, 8]);
    assert.equal(session.received, 2);
    for (const data of ["a", "b", "c"]) session.sending(data);
    assert.equal(session.take(control({ type: "ack", n: 2 })), null);
    assert.deepEqual(session.unacked, [[3, "c"]]);
    assert.equal(session.take(control({ type: "later" })), null);
    for (const bad of ["", "plain", "\x01not json", "\x01[1]", new Uint8Array([1, 123, 125]).buffer, new ArrayBuffer(0)]) {
      assert.throws(() => session.take(bad), FramingError, String(bad));
    }
    assert.throws(() => new Resumption().opened("\x00hello"), FramingError);
    assert.throws(() => new Resumption().opened(control({ type: "resumed", acked: 0 })), FramingError);
  });

  test("a drop resumes at once within the window; what was not acked goes again, in order", () => {
    const session = started({ baseMs: 1000, maxMs: 8000 });
    for (const data of ["m1", "m2", "m3"]) session.sending(data);
    session.take("\x00x");
    session.take(control({ type: "ack", n: 1 }));
    assert.deepEqual(session.after({ code: 1006, reason: "", beforeOpen: false }, 100),
      { verdict: "resume", attempt: 1, delayMs: 0, hinted: false });
    assert.equal(session.param(), "abc.1");
    // Attempts that fail back off (random() is 0.5), a hint wins, never past the deadline.
    assert.deepEqual(session.after({ code: 1006, reason: "HTTP 503", beforeOpen: true }, 100),
      { verdict: "resume", attempt: 2, delayMs: 1000, hinted: false });
    assert.deepEqual(session.after({ code: 1013, reason: "try again later; retry-after-ms=700", beforeOpen: false }, 200),
      { verdict: "resume", attempt: 3, delayMs: 700, hinted: true });
    assert.equal(session.after({ code: 1006, reason: "", beforeOpen: true }, 30_000 + 100 - 250).delayMs, 250);
    assert.equal(session.expired(30_100), true);
    assert.deepEqual(session.opened(control({ type: "resumed", acked: 2, sent: 1 })), ["m3"]);
    assert.equal(session.held, false);
    session.sending("m4");
    assert.deepEqual(session.unacked.map(([n]) => n), [3, 4]);
  });

  test("4410 and the window fail the resume; a real close ends the session; no session: none", () => {
    const session = started();
    session.sending("lost?");
    session.after({ code: 1006, reason: "", beforeOpen: false }, 0);
    assert.deepEqual(session.after({ code: RESUME_FAILED, reason: "resume failed: buffer overrun", beforeOpen: true }, 1),
      { verdict: "failed", attempt: 1, reason: "buffer overrun", unacked: 1 });
    assert.equal(session.sessionId, null);
    assert.deepEqual(session.after({ code: 1006, reason: "", beforeOpen: true }, 2), { verdict: "none" });
    const late = started();
    late.after({ code: 1006, reason: "", beforeOpen: false }, 0);
    assert.equal(late.after({ code: 1006, reason: "", beforeOpen: true }, 30_000).reason, "window passed");
    for (const code of [1001, 1012, 1008, 4000, 1000]) {
      const real = started();
      real.sending("gone");
      assert.deepEqual(real.after({ code, reason: "", beforeOpen: false }, 0), { verdict: "ended" });
      assert.deepEqual([real.sessionId, real.param(), real.unacked.length], [null, "1", 0]);
    }
  });
});

describe("WsproxyClient with resume (fake socket)", () => {
  test("a session, a drop resumed with what was not acked, then a real close starts afresh", async () => {
    const { client, events } = fresh({ resume: true });
    const [first] = FakeSocket.made;
    assert.equal(first.url, "ws://example.test/x?wsproxy_resume=1");
    assert.equal(first.binaryType, "arraybuffer");
    assert.equal(client.send("queued"), true);
    first.open();
    assert.equal(client.readyState, WsproxyClient.CONNECTING); // until the proxy's session
    first.message(control({ type: "session", id: "abc", window: 30 }));
    assert.deepEqual(events.slice(-2), [
      ["session", { sessionId: "abc" }], ["open", { protocol: "", flushed: 1 }]]);
    assert.deepEqual(first.sent, ["queued"]);
    first.message("\x00hello");
    assert.deepEqual(events.at(-1), ["message", { data: "hello" }]);
    client.send("two");
    first.message(control({ type: "ack", n: 1 }));
    assert.equal(events.at(-1)[0], "message"); // the ack is not the app's
    first.closed(1006, "", false);
    assert.deepEqual(events.slice(-2), [
      ["close", { code: 1006, reason: "", wasClean: false, beforeOpen: false, retryInMs: 0, hinted: false }],
      ["reconnecting", { attempt: 1, delayMs: 0, hinted: false, tokenRefresh: false }]]);
    assert.equal(client.send("while away"), true);
    assert.deepEqual(client.session, { id: "abc", windowMs: 30_000, received: 1, sent: 2, resuming: true });
    while (FakeSocket.made.length < 2) await tick();
    const second = FakeSocket.made[1];
    assert.equal(second.url, "ws://example.test/x?wsproxy_resume=abc.1");
    second.open();
    second.message(control({ type: "resumed", acked: 1, sent: 1 }));
    assert.deepEqual(second.sent, ["two", "while away"]);
    assert.deepEqual(events.slice(-2), [["resumed", { resent: 1 }], ["open", { protocol: "", flushed: 1 }]]);
    // A drain: a close frame with a hint. The rules decide; the next connect is fresh.
    second.closed(1012, "backend draining; retry-after-ms=20");
    assert.deepEqual(events.at(-1), ["reconnecting", { attempt: 1, delayMs: 20, hinted: true, tokenRefresh: false }]);
    assert.equal(client.session.id, null);
    while (FakeSocket.made.length < 3) await tick();
    assert.equal(FakeSocket.made[2].url, "ws://example.test/x?wsproxy_resume=1");
    client.close();
  });

  test("a failed resume: resumefailed, then a fresh session at once", async () => {
    const { client, events } = fresh({ resume: true });
    const [first] = FakeSocket.made;
    first.open();
    first.message(control({ type: "session", id: "abc", window: 30 }));
    client.send("unacked");
    first.closed(1006, "", false);
    while (FakeSocket.made.length < 2) await tick();
    FakeSocket.made[1].open();
    FakeSocket.made[1].closed(4410, "resume failed: window passed");
    assert.deepEqual(events.slice(-2), [
      ["resumefailed", { reason: "window passed", unacked: 1 }],
      ["reconnecting", { attempt: 1, delayMs: 0, hinted: false, tokenRefresh: false }]]);
    while (FakeSocket.made.length < 3) await tick();
    assert.equal(FakeSocket.made[2].url, "ws://example.test/x?wsproxy_resume=1");
    client.close();
  });

  test("refused attempts go on until the window passes: resumefailed, then a fresh session", async () => {
    const { client, events } = fresh({ resume: true, backoff: { baseMs: 10, maxMs: 10 } });
    FakeSocket.made[0].open();
    FakeSocket.made[0].message(control({ type: "session", id: "abc", window: 0.06 }));
    const dropped = performance.now();
    FakeSocket.made[0].closed(1006, "", false);
    while (!events.some(([type]) => type === "resumefailed")) {
      const last = FakeSocket.made.at(-1);
      if (last.readyState === 0) last.closed(1006, "", false); // refused before it opened
      await tick(2);
    }
    assert.ok(performance.now() - dropped >= 60, "gave up before the window passed");
    assert.deepEqual(events.find(([type]) => type === "resumefailed"), ["resumefailed", { reason: "window passed", unacked: 0 }]);
    const param = (socket) => new URL(socket.url).searchParams.get("wsproxy_resume");
    while (param(FakeSocket.made.at(-1)) !== "1") await tick(); // the fresh session's connect
    const attempts = FakeSocket.made.slice(1, -1).map(param);
    assert.ok(attempts.length >= 2, String(attempts));
    assert.ok(attempts.every((p) => p === "abc.0"), String(attempts));
    client.close();
  });

  test("a 1008 revoke ends it; a proxy that does not frame ends it with 1002", () => {
    const revoked = fresh({ resume: true });
    FakeSocket.made[0].open();
    FakeSocket.made[0].message(control({ type: "session", id: "abc", window: 30 }));
    FakeSocket.made[0].closed(1008, "connection revoked");
    assert.deepEqual(revoked.events.at(-1), ["terminal", { code: 1008, reason: "connection revoked", requested: false }]);
    const plain = fresh({ resume: true });
    FakeSocket.made[0].open();
    FakeSocket.made[0].message("hello");
    assert.deepEqual(plain.events.map(([t]) => t), ["error", "close", "terminal"]);
    assert.equal(plain.events.at(-1)[1].code, 1002);
    assert.deepEqual(FakeSocket.made[0].closedWith, [1002, "not a resumable session"]);
    assert.equal(plain.client.readyState, WsproxyClient.CLOSED);
    assert.throws(() => new WsproxyClient("ws://example.test/", { WebSocket: FakeSocket, resume: "yes" }), TypeError);
  });

  test("an open that does not come within openTimeoutMs is a 1006, and the rules decide", { timeout: 10_000 }, async () => {
    assert.equal(DEFAULTS.openTimeoutMs, 10_000);
    assert.throws(() => new WsproxyClient("ws://x/", { WebSocket: FakeSocket, openTimeoutMs: -1 }), /openTimeoutMs/);
    // A socket that never opens, and (with resume) one that opens but gets no session.
    for (const [options, opens] of [[{}, false], [{ resume: true }, true]]) {
      const { client, events } = fresh({ ...options, openTimeoutMs: 20, backoff: { baseMs: 1, maxMs: 1 } });
      if (opens) FakeSocket.made[0].open();
      while (FakeSocket.made.length < 2) await tick();
      assert.deepEqual(events.find(([type]) => type === "close"), ["close",
        { code: 1006, reason: "open timed out", wasClean: false, beforeOpen: true, retryInMs: 0, hinted: false }]);
      assert.notEqual(FakeSocket.made[0].closedWith, null); // the attempt's socket closed
      FakeSocket.made[0].closed(1006, "", false); // its late close event changes nothing
      assert.equal(events.filter(([type]) => type === "close").length, 1);
      client.close();
    }
    // An open in time is not cut later.
    const { client, events } = fresh({ resume: true, openTimeoutMs: 20 });
    FakeSocket.made[0].open();
    FakeSocket.made[0].message(control({ type: "session", id: "abc", window: 30 }));
    await tick(60);
    assert.deepEqual(events.map(([type]) => type), ["session", "open"]);
    assert.equal(FakeSocket.made.length, 1);
    client.close();
  });
});
