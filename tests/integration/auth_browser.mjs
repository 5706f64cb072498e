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
// "error": ...} (exit 1). The launch and the report are browser.mjs's.

import { parseArgs, runBrowser, timeoutOf, watchErrors } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
let input = "";
for await (const chunk of process.stdin) input += chunk;
const scenarios = JSON.parse(input);

const result = { ok: false, scenarios: {} };
await runBrowser(result, timeout, async (browser) => {
  for (const { name, url, before = [] } of scenarios) {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      page.setDefaultTimeout(timeout);
      const seen = { console_errors: [], page_errors: [], socket_errors: [], sockets: [] };
      watchErrors(page, seen);
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
});
