// Opens the auth test pages in headless Chromium with playwright-core (test_auth_browser.py).
//
//   node auth_browser.mjs [--timeout-ms=20000] < scenarios.json
//
// stdin holds a JSON list of {"name": ..., "url": ..., "before": [urls]}: pages served by
// the test, each of which opens one WebSocket to the proxy (see the page in
// test_auth_browser.py) and marks #out with data-done once its socket is closed. Every
// scenario runs in a fresh browser context (its own cookie jar), first loads the "before"
// pages (a login page that sets a cookie), then its page, waits (bounded) for data-done,
// and reads what the page showed. Prints one JSON object on stdout (exit 0), or {"ok": false,
// "error": ...} (exit 1). playwright-core is loaded from $WSPROXY_PLAYWRIGHT_DIR.

import { createRequire } from "node:module";
import path from "node:path";

const args = Object.fromEntries(process.argv.slice(2).map((a) => {
  const m = /^--([^=]+)=(.*)$/s.exec(a);
  if (!m) throw new Error("bad argument: " + a);
  return [m[1], m[2]];
}));
const timeout = Number(args["timeout-ms"] || 20000);
const pwDir = process.env.WSPROXY_PLAYWRIGHT_DIR || "/tmp/wsproxy-pw";
const require = createRequire(path.join(pwDir, "node_modules", "noop.js"));
const { chromium } = require("playwright-core");

let input = "";
for await (const chunk of process.stdin) input += chunk;
const scenarios = JSON.parse(input);

const started = Date.now();
const result = { ok: false, scenarios: {} };
const browser = await chromium.launch({
  executablePath: process.env.WSPROXY_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  timeout,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  for (const { name, url, before = [] } of scenarios) {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      page.setDefaultTimeout(timeout);
      const seen = { console_errors: [], page_errors: [], socket_errors: [], sockets: [] };
      page.on("pageerror", (e) => seen.page_errors.push(String(e)));
      page.on("console", (m) => { if (m.type() === "error") seen.console_errors.push(m.text()); });
      page.on("websocket", (ws) => {
        seen.sockets.push(ws.url());
        ws.on("socketerror", (e) => seen.socket_errors.push(String(e)));
      });
      for (const first of before) {
        const response = await page.goto(first);
        if (!response.ok()) throw new Error(`${name}: ${first} answered ${response.status()}`);
      }
      await page.goto(url);
      await page.locator("#out[data-done]").waitFor({ state: "attached" });
      const out = await page.$eval("#out", (el) => ({ ...el.dataset }));
      const text = async (sel) => (await page.locator(sel).textContent()).trim();
      result.scenarios[name] = {
        ...seen,
        opened: out.opened === "1",
        error_event: out.error === "1",
        close_code: out.code === undefined ? null : Number(out.code),
        protocol: await text("#protocol"),
        echo: await text("#echo"),
        document_cookie: await page.evaluate(() => document.cookie),
        cookies: (await context.cookies()).map((c) => ({ name: c.name, domain: c.domain })),
      };
    } finally {
      await context.close();
    }
  }
  result.ok = true;
} catch (err) {
  result.error = String(err && err.stack || err);
} finally {
  result.elapsed_ms = Date.now() - started;
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(result.ok ? 0 : 1);
