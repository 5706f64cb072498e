// WsproxyClient against a running wsproxy (tests/integration/test_client_js.py starts it).
//
// Environment: WSPROXY_URL (ws://host:port of the proxy, with resume enabled), WSPROXY_ADMIN (its admin API),
// WSPROXY_JWT_SECRET (the HS256 secret of its jwt auth). The backends behind it echo,
// answer "whoami" with their name, and close on demand: /close/CODE?reason=R closes
// every connection, /close-once/CODE/KEY?reason=R the first one per KEY. Without
// WSPROXY_URL these tests skip (the unit tests still run). Needs a global WebSocket:
// node --experimental-websocket on Node 20.

import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import net from "node:net";
import { describe, test } from "node:test";

import { WsproxyClient } from "../wsproxy-client.js";

const PROXY = process.env.WSPROXY_URL;
const ADMIN = process.env.WSPROXY_ADMIN;
const SECRET = process.env.WSPROXY_JWT_SECRET;
const skip = PROXY === undefined ? "WSPROXY_URL is not set (tests/integration/test_client_js.py sets it)" : false;
/** Bound on each wait for what normally takes milliseconds. */
const WAIT_MS = 15_000;

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 JWT for *sub*, valid for at least *lifetime* seconds (exp rounded up). */
function jwt(sub, lifetime) {
  const now = Date.now() / 1000;
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, iat: Math.floor(now), exp: Math.ceil(now) + lifetime }));
  const signature = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

async function admin(path, body) {
  const answer = await fetch(ADMIN + path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}),
  });
  assert.equal(answer.status, 200, await answer.clone().text());
  return answer.json();
}

/** A WebSocket constructor that notes when each socket is made (performance.now()). */
function counting() {
  const made = [];
  class Counted extends globalThis.WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      made.push({ at: performance.now(), url, protocols });
    }
  }
  return { WebSocket: Counted, made };
}

/**
 * Whether *later* came at least *ms* after *before*, as the client's wait (a Node timer)
 * must have it. A timer starts at the loop's clock, read in whole milliseconds when the
 * loop woke for the turn that set it: a time taken in that turn (the close's own) can be
 * later than the wait's start by however long the turn had run, any time on a busy
 * machine. So *before* is taken a turn earlier (the socket's making, the drain's
 * request), and the clock's truncation is allowed for (1 ms).
 */
function waited(before, later, ms) {
  assert.ok(later - before >= ms - 1, `${later - before} ms, not ${ms} ms`);
}

/** Every event of *client*, with the time it came. */
function record(client) {
  const events = [];
  for (const type of ["open", "message", "close", "reconnecting", "terminal", "drop"]) {
    client.addEventListener(type, (e) => events.push({ type, at: performance.now(), ...e }));
  }
  return events;
}

/** The next *type* event of *client* that *match* accepts; fails after WAIT_MS. */
function next(client, type, match = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeEventListener(type, listener);
      reject(new Error(`no ${type} event within ${WAIT_MS} ms`));
    }, WAIT_MS);
    function listener(e) {
      if (!match(e)) return;
      clearTimeout(timer);
      client.removeEventListener(type, listener);
      resolve({ at: performance.now(), event: e });
    }
    client.addEventListener(type, listener);
  });
}

/** Sends *text* and waits for the message *expect* (default: its echo). */
async function roundTrip(client, text, expect = text) {
  const answer = next(client, "message", (e) => e.data === expect || text === "whoami");
  assert.equal(client.send(text), true);
  return (await answer).event.data;
}

function pick(object, ...names) {
  return Object.fromEntries(names.map((name) => [name, object[name]]));
}

function closeReason(text) {
  return encodeURIComponent(text);
}

/** Drain *backend*, the one *client* is on, and read the client's close: 1012 with
 *  the proxy's hint, which `retryInMs` carries. The caller undrains. */
async function drainedClose(client, backend) {
  const closing = next(client, "close");
  const asked = performance.now();
  await admin(`/backends/${backend}/drain`, { spread: "0s" });
  const { event } = await closing;
  assert.equal(event.code, 1012);
  const hint = /retry-after-ms=(\d+)/.exec(event.reason);
  assert.ok(hint, event.reason);
  assert.equal(event.retryInMs, Number(hint[1]));
  return { event, hintMs: Number(hint[1]), asked };
}

describe("WsproxyClient through wsproxy", { skip }, () => {
  test("a backend's 1013 with a hint, relayed: the reconnect waits the hint, then echoes", async () => {
    const { WebSocket, made } = counting();
    const url = `${PROXY}/close-once/1013/${randomUUID()}?reason=${closeReason("try again later; retry-after-ms=700")}`;
    const client = new WsproxyClient(url, { WebSocket, token: () => jwt("hint", 600) });
    const events = record(client);
    const closed = await next(client, "close");
    assert.equal(closed.event.code, 1013);
    assert.equal(closed.event.retryInMs, 700);
    assert.equal(closed.event.hinted, true);
    await next(client, "open");
    assert.equal(made.length, 2);
    waited(made[0].at, made[1].at, 700);
    assert.equal(await roundTrip(client, "after the hint"), "after the hint");
    assert.deepEqual(events.filter((e) => e.type === "reconnecting").map(({ attempt, delayMs, hinted }) =>
      ({ attempt, delayMs, hinted })), [{ attempt: 1, delayMs: 700, hinted: true }]);
    client.close();
    await next(client, "terminal");
  });

  test("a drain of its backend: 1012, the proxy's own hint honoured, the other backend", async () => {
    const { WebSocket, made } = counting();
    const client = new WsproxyClient(`${PROXY}/`, { WebSocket, token: () => jwt("drain", 600) });
    await next(client, "open");
    const first = await roundTrip(client, "whoami");
    assert.ok(["b1", "b2"].includes(first), first);
    try {
      const { event, hintMs, asked } = await drainedClose(client, first);
      assert.equal(event.hinted, true);
      await next(client, "open");
      waited(asked, made[1].at, hintMs);
      const second = await roundTrip(client, "whoami");
      assert.notEqual(second, first);
      assert.equal(await roundTrip(client, "still echoing"), "still echoing");
    } finally {
      await admin(`/backends/${first}/undrain`);
      client.close();
    }
  });

  test("no hint: full-jitter back-off, each wait within its bound and waited", async () => {
    const { WebSocket, made } = counting();
    const backoff = { baseMs: 40, maxMs: 160 };
    const client = new WsproxyClient(`${PROXY}/close/1011?reason=oops`, { WebSocket, backoff, token: () => jwt("backoff", 600) });
    const events = record(client);
    await next(client, "reconnecting", (e) => e.attempt === 6);
    client.close();
    const waits = events.filter((e) => e.type === "reconnecting");
    const closes = events.filter((e) => e.type === "close");
    assert.deepEqual(waits.map((e) => e.attempt), [1, 2, 3, 4, 5, 6]);
    waits.forEach((e, i) => {
      assert.equal(e.hinted, false);
      assert.ok(e.delayMs >= 0 && e.delayMs < Math.min(160, 40 * 2 ** i), `attempt ${e.attempt}: ${e.delayMs}`);
      assert.equal(closes[i].code, 1011);
      assert.equal(closes[i].retryInMs, e.delayMs);
      // The next socket came no earlier than the wait (the last one may not exist yet).
      if (made[i + 1] !== undefined) waited(made[i].at, made[i + 1].at, e.delayMs);
    });
  });

  test("a failed connect (401: bad token) is 1006 and retried; the next token works", async () => {
    let calls = 0;
    const client = new WsproxyClient(`${PROXY}/`, {
      token: () => (++calls === 1 ? "not-a-jwt" : jwt("retry", 600)),
      backoff: { baseMs: 20, maxMs: 20 },
    });
    const events = record(client);
    await next(client, "open");
    const [closed] = events.filter((e) => e.type === "close");
    assert.equal(closed.code, 1006);
    assert.equal(closed.beforeOpen, true);
    assert.equal(calls, 2);
    assert.equal(await roundTrip(client, "in"), "in");
    client.close();
  });

  test("4xxx is terminal; shouldReconnect can make it retry", async () => {
    const { WebSocket, made } = counting();
    const client = new WsproxyClient(`${PROXY}/close/4001?reason=bye`, { WebSocket, token: () => jwt("4xxx", 600) });
    const events = record(client);
    const terminal = await next(client, "terminal");
    assert.deepEqual(pick(terminal.event, "code", "reason", "requested"), { code: 4001, reason: "bye", requested: false });
    assert.equal(client.readyState, WsproxyClient.CLOSED);
    assert.equal(events.find((e) => e.type === "close").terminal, true);
    assert.equal(events.some((e) => e.type === "reconnecting"), false);
    assert.equal(made.length, 1);
    assert.equal(client.send("late"), false);

    let asked = 0;
    const retried = new WsproxyClient(`${PROXY}/close/4001?reason=bye`, {
      token: () => jwt("4xxx", 600), backoff: { baseMs: 10, maxMs: 10 },
      shouldReconnect: (close) => { asked += 1; return close.code === 4001 && asked < 3; },
    });
    const end = await next(retried, "terminal");
    assert.equal(end.event.code, 4001);
    assert.equal(asked, 3);
  });

  test("1008 revocation (admin close by subject) is terminal", async () => {
    let calls = 0;
    const subject = `revoked-${randomUUID()}`;
    const client = new WsproxyClient(`${PROXY}/`, { token: () => { calls += 1; return jwt(subject, 600); } });
    await next(client, "open");
    const terminal = next(client, "terminal");
    await admin("/connections/close", { subject });
    const { event } = await terminal;
    assert.equal(event.code, 1008);
    assert.equal(event.reason, "connection revoked");
    assert.equal(event.requested, false);
    assert.equal(calls, 1);
    assert.equal(client.readyState, WsproxyClient.CLOSED);
  });

  test("1008 token expired: the hook is asked for a new token, then it reconnects", async () => {
    const tokens = [jwt("expiring", 2), jwt("expiring", 600)];
    let calls = 0;
    const client = new WsproxyClient(`${PROXY}/`, { token: async () => tokens[Math.min(calls++, 1)] });
    const events = record(client);
    await next(client, "open");
    const refresh = await next(client, "reconnecting");
    assert.equal(refresh.event.tokenRefresh, true);
    const closed = events.find((e) => e.type === "close");
    assert.equal(closed.code, 1008);
    assert.equal(closed.reason, "token expired");
    await next(client, "open");
    assert.equal(calls, 2);
    assert.equal(await roundTrip(client, "fresh token"), "fresh token");
    client.close();
  });

  test("the token as a query parameter; the app's protocol offer keeps the token out of open.protocol", async () => {
    const byQuery = new WsproxyClient(`${PROXY}/?keep=1`, { token: () => jwt("query", 600), tokenIn: "query:access_token" });
    await next(byQuery, "open");
    assert.equal(await roundTrip(byQuery, "by query"), "by query");
    byQuery.close();
    const bySubprotocol = new WsproxyClient(`${PROXY}/`, { token: () => jwt("sub", 600), protocols: ["chat"] });
    const { event } = await next(bySubprotocol, "open");
    assert.equal(event.protocol, ""); // the backend chose none; the proxy answered with the token's entry
    bySubprotocol.close();
  });

  test("queue: bounded, the newest refused, flushed in order on open and after a reconnect", async () => {
    const url = `${PROXY}/close-once/1013/${randomUUID()}?reason=${closeReason("try again later; retry-after-ms=200")}`;
    const client = new WsproxyClient(url, { token: () => jwt("queue", 600), queue: { maxMessages: 3, maxBytes: 64 } });
    const events = record(client);
    const drops = [];
    client.addEventListener("drop", (e) => drops.push([e.data, e.why]));
    // The first connection is closed by the backend at once: wait for its close, then queue.
    await next(client, "close");
    assert.deepEqual(["m1", "m2", "m3", "m4"].map((m) => client.send(m)), [true, true, true, false]);
    assert.deepEqual(drops, [["m4", "queue full"]]);
    const opened = await next(client, "open");
    assert.equal(opened.event.flushed, 3);
    while (events.filter((e) => e.type === "message").length < 3) await next(client, "message");
    assert.deepEqual(events.filter((e) => e.type === "message").map((e) => e.data), ["m1", "m2", "m3"]);
    client.close();
    await next(client, "terminal");
    // Bytes bound: a message over it is refused even into an empty queue.
    const big = new WsproxyClient(`${PROXY}/`, { token: () => jwt("queue", 600), queue: { maxBytes: 4 } });
    assert.equal(big.send("12345"), false);
    assert.equal(big.send("1234"), true);
    await next(big, "open");
    big.close();
  });

  test("close() is final: terminal, no reconnect, sends refused", async () => {
    const { WebSocket, made } = counting();
    let calls = 0;
    const client = new WsproxyClient(`${PROXY}/`, { WebSocket, token: () => { calls += 1; return jwt("final", 600); } });
    const events = record(client);
    await next(client, "open");
    const terminal = next(client, "terminal");
    client.close(1000, "done");
    assert.equal(client.readyState, WsproxyClient.CLOSING);
    const { event } = await terminal;
    assert.deepEqual(pick(event, "code", "reason", "requested"), { code: 1000, reason: "done", requested: true });
    assert.equal(client.readyState, WsproxyClient.CLOSED);
    const closed = events.find((e) => e.type === "close");
    assert.equal(closed.code, 1000);
    assert.equal(closed.terminal, true);
    assert.equal(client.send("after"), false);
    assert.equal(events.some((e) => e.type === "reconnecting"), false);
    assert.equal(made.length, 1);
    assert.equal(calls, 1);
    assert.equal(client.socket, null);
  });

  test("close() while the socket is still connecting: terminal at once, no reconnect", async () => {
    const { WebSocket, made } = counting();
    const client = new WsproxyClient(`${PROXY}/`, { WebSocket }); // no token hook: a socket at once
    const events = record(client);
    assert.equal(made.length, 1);
    client.close();
    if (client.readyState !== WsproxyClient.CLOSED) await next(client, "terminal");
    assert.equal(client.readyState, WsproxyClient.CLOSED);
    assert.deepEqual(events.filter((e) => e.type === "terminal").map((e) => e.requested), [true]);
    assert.equal(events.some((e) => e.type === "reconnecting"), false);
    assert.equal(made.length, 1);
  });
});

/**
 * A TCP relay to the proxy whose connections can all be reset at once (an RST each way,
 * no close frame: what a phone changing cell looks like to both ends).
 */
async function relay() {
  const target = new URL(PROXY);
  const pairs = [];
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    pairs.push([client, upstream]);
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on("error", end);
    upstream.on("error", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}`,
    cut() {
      for (const pair of pairs.splice(0)) for (const socket of pair) if (!socket.destroyed) socket.resetAndDestroy();
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

function kinds(events, ...types) {
  return events.filter((e) => types.includes(e.type)).map((e) => e.type);
}

function recordSession(client) {
  const events = record(client);
  for (const type of ["session", "resumed", "resumefailed", "error"]) {
    client.addEventListener(type, (e) => events.push({ type, at: performance.now(), ...e }));
  }
  return events;
}

describe("WsproxyClient with resume through wsproxy", { skip }, () => {
  test("a reset connection resumes: every message once and in order, both ways", async () => {
    const count = 600;
    const path = await relay();
    // The token in the query (the subprotocol: the test after this one).
    const client = new WsproxyClient(`${path.url}/`, {
      resume: true, token: () => jwt("resume", 600), tokenIn: "query:access_token",
    });
    const events = recordSession(client);
    try {
      await next(client, "open");
      const backend = await roundTrip(client, "whoami");
      const got = [];
      const all = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${got.length} of ${count} echoes; ${JSON.stringify(events.filter((e) => e.type !== "message").map((e) => [e.type, e.code, e.reason, e.error?.message]))}`)), WAIT_MS);
        client.addEventListener("message", (e) => {
          got.push(e.data);
          if (got.length === count) { clearTimeout(timer); resolve(); }
        });
      });
      for (let i = 1; i <= count; i += 1) {
        assert.equal(client.send(`up-${i}`), true);
        if (i % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 5));
        if (i === 150 || i === 400) path.cut();
      }
      await all;
      // The backend echoes: each of ours reached it once and in order, and each echo came back once, in order.
      assert.deepEqual(got, Array.from({ length: count }, (_, i) => `up-${i + 1}`));
      assert.deepEqual(kinds(events, "session", "resumed", "resumefailed"), ["session", "resumed", "resumed"]);
      assert.deepEqual(events.filter((e) => e.type === "close").map((e) => [e.code, e.retryInMs]), [[1006, 0], [1006, 0]]);
      assert.equal(await roundTrip(client, "whoami"), backend); // the same backend connection
      assert.equal(client.session.received, count + 2);
    } finally {
      client.close();
      await path.close();
    }
  });

  test("a resume with the token as a subprotocol (the default tokenIn)", async () => {
    const path = await relay();
    const client = new WsproxyClient(`${path.url}/`, { resume: true, token: () => jwt("resume-sub", 600) });
    try {
      await next(client, "open");
      const outcome = Promise.race([next(client, "resumed"), next(client, "error")]);
      path.cut();
      const { event } = await outcome;
      assert.equal(event.type, "resumed", String(event.error?.message ?? event.error));
    } finally {
      client.close();
      await path.close();
    }
  });

  test("a drain of its backend: the hint honoured, then a fresh session on the other backend", async () => {
    const { WebSocket, made } = counting();
    const client = new WsproxyClient(`${PROXY}/`, { WebSocket, resume: true, token: () => jwt("drain-resume", 600) });
    const events = recordSession(client);
    const opened = next(client, "open");
    const { event: started } = await next(client, "session");
    await opened;
    const first = await roundTrip(client, "whoami");
    try {
      const { hintMs, asked } = await drainedClose(client, first);
      const { event: fresh } = await next(client, "session");
      assert.notEqual(fresh.sessionId, started.sessionId);
      waited(asked, made[1].at, hintMs);
      assert.match(made[1].url, /[?&]wsproxy_resume=1(&|$)/);
      assert.notEqual(await roundTrip(client, "whoami"), first);
      assert.deepEqual(kinds(events, "session", "resumed", "resumefailed"), ["session", "session"]);
    } finally {
      await admin(`/backends/${first}/undrain`);
      client.close();
    }
  });

  test("1008 revocation ends it: no resume, no reconnect", async () => {
    const { WebSocket, made } = counting();
    const subject = `revoked-resume-${randomUUID()}`;
    const client = new WsproxyClient(`${PROXY}/`, { WebSocket, resume: true, token: () => jwt(subject, 600) });
    const events = recordSession(client);
    await next(client, "open");
    const terminal = next(client, "terminal");
    await admin("/connections/close", { subject });
    const { event } = await terminal;
    assert.deepEqual(pick(event, "code", "reason", "requested"), { code: 1008, reason: "connection revoked", requested: false });
    assert.deepEqual(kinds(events, "session", "resumed", "resumefailed", "reconnecting"), ["session"]);
    assert.equal(made.length, 1);
    assert.equal(client.session.id, null);
  });
});
