// Uses the demo page in headless Chromium with playwright-core (test_demo_page.py).
//
//   node demo_page.mjs --url=http://127.0.0.1:PORT/ --admin=http://127.0.0.1:ADMIN
//        --message=TEXT [--timeout-ms=20000]
//
// Loads the page (through `wsproxy demo`), waits for its socket to name its backend
// ("socket on NAME"), sends --message with the page's form and waits for the echo. Then
// drains that backend through the admin API (POST /backends/NAME/drain, spread 0s),
// waits for the page's close, its "reconnecting" line and the socket on the other
// backend, and sends --message again. Reports the answer to GET / (status, headers),
// the WebSockets the page opened, the log lines as {kind, text} (text without the time
// stamp), the backend the page names for itself and for its socket (before and after
// the drain), the drain's close and reconnect as the page's client saw them (times from
// performance.now(): when each socket was made and when its close came), and the page's
// errors (with the URL each console error names). The launch and the report are
// browser.mjs's.

import { parseArgs, runBrowser, timeoutOf, watchErrors } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
const result = {
  ok: false, requests_elsewhere: [], page_errors: [], console_errors: [], sockets: [],
};
await runBrowser(result, timeout, async (browser) => {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  const origin = new URL(args.url).origin;
  page.on("request", (r) => {
    if (!r.url().startsWith(origin)) result.requests_elsewhere.push(r.url());
  });
  page.on("websocket", (ws) => result.sockets.push(ws.url()));
  watchErrors(page, result);
  const logLine = (kind, text, nth = 0) =>
    page.locator(`#log div.${kind}`).filter({ hasText: text }).nth(nth);
  const send = async (text, nth) => {
    await page.fill("#text", text);
    await page.click("#send button");
    await logLine("in", "< " + text, nth).waitFor();
  };

  // Every socket the page's client makes: when it was made, when its close came (this
  // listener runs before the client's own, which starts the wait).
  await page.addInitScript(() => {
    const Native = window.WebSocket;
    window.__made = [];
    window.WebSocket = class extends Native {
      constructor(...a) {
        super(...a);
        const socket = { made: performance.now(), closed: null };
        window.__made.push(socket);
        this.addEventListener("close", () => { socket.closed = performance.now(); });
      }
    };
  });
  const response = await page.goto(args.url);
  result.status = response.status();
  result.headers = response.headers();
  result.title = await page.title();
  result.backend = (await page.locator("#page-backend").textContent()).trim();

  await logLine("sys", "socket on ").waitFor();
  result.socket_backend = (await page.locator("#socket-backend").textContent()).trim();
  await send(args.message, 0);

  // Drain the socket's backend: the page's client must close, wait the hint, reconnect.
  await page.evaluate(() => {
    window.__events = [];
    for (const type of ["close", "reconnecting", "open"]) {
      window.wsproxyDemo.addEventListener(type, (e) => window.__events.push({
        type, at: performance.now(), code: e.code, reason: e.reason, retryInMs: e.retryInMs,
        hinted: e.hinted, delayMs: e.delayMs,
      }));
    }
  });
  const drained = await fetch(`${args.admin}/backends/${result.socket_backend}/drain`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: '{"spread": "0s"}',
  });
  result.drain_status = drained.status;
  await logLine("sys", "socket on ", 1).waitFor();
  result.socket_backend_after = (await page.locator("#socket-backend").textContent()).trim();
  await send(args.message, 1);
  result.drain_events = await page.evaluate(() => window.__events);
  result.made = await page.evaluate(() => window.__made);

  // Each line is "<local time>  <text>": two spaces end the time stamp.
  result.lines = await page.$$eval("#log div", (divs) => divs.map((d) => ({
    kind: d.className,
    text: d.textContent.slice(d.textContent.indexOf("  ") + 2),
  })));
});
