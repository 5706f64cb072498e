// Uses the demo page in headless Chromium with playwright-core (test_demo_page.py).
//
//   node demo_page.mjs --url=http://127.0.0.1:PORT/ --message=TEXT [--timeout-ms=20000]
//
// Loads the page (through `wsproxy demo`), waits for its "open ws://..." log line, sends
// --message with the page's form and waits for the echo's "< TEXT" line. Reports the
// answer to GET / (status, headers), the WebSockets the page opened, the log lines as
// {kind, text} (text without the time stamp), the backend the page names, and the page's
// errors (with the URL each console error names). The launch and the report are browser.mjs's.

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
  const logLine = (kind, text) =>
    page.locator(`#log div.${kind}`).filter({ hasText: text }).first();

  const response = await page.goto(args.url);
  result.status = response.status();
  result.headers = response.headers();
  result.title = await page.title();
  result.backend = (await page.locator("p code").first().textContent()).trim();

  await logLine("sys", "open ws://").waitFor();
  await page.fill("#text", args.message);
  await page.click("#send button");
  await logLine("in", "< " + args.message).waitFor();

  // Each line is "<local time>  <text>": two spaces end the time stamp.
  result.lines = await page.$$eval("#log div", (divs) => divs.map((d) => ({
    kind: d.className,
    text: d.textContent.slice(d.textContent.indexOf("  ") + 2),
  })));
});
