// clients/js in headless Chromium against `wsproxy run` (test_client_js_browser.py).
//
//   node client_js_browser.mjs --page=http://127.0.0.1:PORT/healthz --module-file=PATH
//        --auth-ws=ws://127.0.0.1:A/ --admin=http://127.0.0.1:ADMIN --tokens=JSON
//        --limit-ws=ws://127.0.0.1:L/ [--timeout-ms=20000]
//
// Loads --page (a page of the proxy's origin to run in) with clients/js served from
// --module-file at /__wsproxy-client.js (a route of the browser's, so the proxy needs
// no plain HTTP), then runs three scenarios in the page, each with a WebSocket class
// that notes when each socket was made and when its close came (before the client's
// own listener, which starts the wait):
//
// - expiry: --auth-ws with a token hook that makes an HS256 token with tokens.secret when
//   asked (WebCrypto): lasting tokens.short_life seconds the first time, then long ones.
//   The proxy closes with 1008 "token expired", the hook is asked again, the client
//   reconnects and echoes.
// - revoke: --auth-ws with tokens.revoke (subject tokens.subject); once open, this
//   script revokes the subject through the admin API (POST /connections/close): 1008
//   "connection revoked", terminal, no other socket.
// - refused: --limit-ws (limits.max_connections 1, admission.reject_with: close): one
//   client holds the slot, a second one is refused (101, then 1013 with a hint); the
//   holder closes on that close, and the second reconnects after the hint and echoes.
//
// Reports {ok, expiry, revoke, refused, page_errors, console_errors}: each scenario's
// events ({type, at, code, reason, retryInMs, hinted, attempt, delayMs, tokenRefresh,
// terminal, requested, data}), its sockets ({made, closed, protocols}), and what the
// scenario read. The launch and the report are browser.mjs's.

import { readFileSync } from "node:fs";

import { parseArgs, runBrowser, timeoutOf, watchErrors } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
const tokens = JSON.parse(args.tokens);
const result = { ok: false, page_errors: [], console_errors: [] };

/** In the page: the helpers every scenario uses (window.t). */
function setup(ms) {
  window.t = {
    /** A WebSocket class that notes each socket's making and close in *sockets*. */
    counting(sockets) {
      return class extends WebSocket {
        constructor(url, protocols) {
          super(url, protocols);
          const s = { made: performance.now(), closed: null, protocols: protocols ?? null };
          sockets.push(s);
          const ended = () => { s.closed ??= performance.now(); };
          this.addEventListener("close", ended);
          this.addEventListener("error", ended);
        }
      };
    },
    /** Every event of *client* into *events*. */
    record(client, events) {
      for (const type of ["open", "message", "close", "reconnecting", "terminal", "error"]) {
        client.addEventListener(type, (e) => {
          const seen = {
            type, at: performance.now(), code: e.code, reason: e.reason, retryInMs: e.retryInMs,
            hinted: e.hinted, attempt: e.attempt, delayMs: e.delayMs, tokenRefresh: e.tokenRefresh,
            terminal: e.terminal, requested: e.requested, data: e.data,
          };
          window.t.all.push(seen);
          if (type !== "error") events.push(seen);
        });
      }
    },
    /** Every event recorded so far, by all clients (for the error of a failed wait). */
    all: [],
    /** The next *type* event of *client* that *match* accepts, bounded. */
    next(client, type, match = () => true) {
      return new Promise((resolve, reject) => {
        const bound = setTimeout(() => reject(new Error(
          `no ${type} event in ${ms} ms; events so far: ${JSON.stringify(window.t.all)}`)), ms);
        const listener = (e) => {
          if (!match(e)) return;
          clearTimeout(bound);
          client.removeEventListener(type, listener);
          resolve(e);
        };
        client.addEventListener(type, listener);
      });
    },
    /** An HS256 JWT for *sub*, valid for at least *lifetime* s (made here, when asked). */
    async jwt(secret, sub, lifetime) {
      const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
        .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
      const text = (o) => b64(new TextEncoder().encode(JSON.stringify(o)));
      const now = Date.now() / 1000;
      const signed = text({ alg: "HS256", typ: "JWT" }) + "." +
        text({ sub, iat: Math.floor(now), exp: Math.ceil(now) + lifetime });
      const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(secret),
        { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
      return signed + "." + b64(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(signed)));
    },
    async echo(client, text) {
      const back = window.t.next(client, "message", (e) => e.data === text);
      if (!client.send(text)) throw new Error("send refused: " + text);
      return (await back).data;
    },
  };
}

await runBrowser(result, timeout, async (browser) => {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  watchErrors(page, result);
  const origin = new URL(args.page).origin;
  const moduleUrl = origin + "/__wsproxy-client.js";
  const moduleText = readFileSync(args["module-file"], "utf-8");
  await page.route(moduleUrl, (route) =>
    route.fulfill({ status: 200, contentType: "text/javascript", body: moduleText }));
  await page.goto(args.page);
  await page.evaluate(setup, timeout);

  result.expiry = await page.evaluate(async ([moduleUrl, url, secret, short]) => {
    const { WsproxyClient } = await import(moduleUrl);
    const events = []; const sockets = []; const tokens = [];
    const client = new WsproxyClient(url, {
      WebSocket: t.counting(sockets),
      // A short-lived token first, a long-lived one on every later call.
      token: async () => {
        tokens.push(await t.jwt(secret, "expiring", tokens.length === 0 ? short : 600));
        return tokens.at(-1);
      },
    });
    t.record(client, events);
    await t.next(client, "open");
    const before = await t.echo(client, "before expiry");
    const refresh = await t.next(client, "reconnecting");
    await t.next(client, "open");
    const after = await t.echo(client, "after refresh");
    client.close();
    return { events, sockets, tokens, before, after, tokenRefresh: refresh.tokenRefresh };
  }, [moduleUrl, args["auth-ws"], tokens.secret, tokens.short_life]);

  await page.evaluate(async ([moduleUrl, url, token]) => {
    const { WsproxyClient } = await import(moduleUrl);
    const r = window.revoke = { events: [], sockets: [], calls: 0 };
    const client = new WsproxyClient(url, {
      WebSocket: t.counting(r.sockets), token: () => { r.calls += 1; return token; },
    });
    t.record(client, r.events);
    r.client = client;
    await t.next(client, "open");
    r.echo = await t.echo(client, "before revocation");
    r.terminal = t.next(client, "terminal");
  }, [moduleUrl, args["auth-ws"], tokens.revoke]);
  const revoked = await fetch(args.admin + "/connections/close", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ subject: tokens.subject }),
  });
  result.revoke_status = revoked.status;
  result.revoke = await page.evaluate(async () => {
    const r = window.revoke;
    await r.terminal;
    return {
      events: r.events, sockets: r.sockets, calls: r.calls, echo: r.echo,
      readyState: r.client.readyState, sent_after: r.client.send("after revocation"),
    };
  });

  result.refused = await page.evaluate(async ([moduleUrl, url]) => {
    const { WsproxyClient } = await import(moduleUrl);
    const holder = new WsproxyClient(url);
    await t.next(holder, "open");
    const held = await t.echo(holder, "holding the slot");
    const events = []; const sockets = [];
    const client = new WsproxyClient(url, { WebSocket: t.counting(sockets) });
    t.record(client, events);
    // The refusal's close: the slot's holder leaves, so the retry after the hint gets in.
    client.addEventListener("close", () => holder.close(), { once: true });
    await t.next(client, "open", () => sockets.length === 2);
    const echo = await t.echo(client, "after the refusal");
    const end = t.next(client, "terminal");
    client.close();
    await end;
    return { events, sockets, held, echo };
  }, [moduleUrl, args["limit-ws"]]);
});
