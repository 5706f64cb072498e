// Drives the admin page's rebalancing block in headless Chromium (test_rebalance.py).
//
//   node rebalance_page.mjs --url=http://127.0.0.1:PORT/ [--timeout-ms=20000]
//
// Loads the page, waits for three share rows, reads them, clicks "Rebalance now" and
// waits until the status names the finished round; prints one JSON object on stdout.
// The launch and the report are browser.mjs's.

import { parseArgs, runBrowser, timeoutOf, watchErrors } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
const result = { ok: false, requests_elsewhere: [], page_errors: [], console_errors: [] };
await runBrowser(result, timeout, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(timeout);
  const origin = new URL(args.url).origin;
  page.on("request", (r) => { if (!r.url().startsWith(origin)) result.requests_elsewhere.push(r.url()); });
  watchErrors(page, result);

  await page.goto(args.url);
  await page.waitForFunction(() => document.querySelectorAll("[data-share]").length === 3);
  const shares = async () => page.$$eval("[data-share]", (rows) => rows.map((row) => ({
    name: row.dataset.share, text: row.querySelector(".numbers").textContent })));
  result.shares_before = await shares();
  result.status_before = (await page.locator("#rebalance-status").innerText()).trim();
  await page.locator("#rebalance-now:not([disabled])").click();
  await page.waitForFunction(() => /last round: \d+ closed, balanced/.test(
    document.getElementById("rebalance-status").textContent));
  // The shares follow within a refresh or two: wait until none reads 0 connections.
  await page.waitForFunction(() => Array.from(document.querySelectorAll("[data-share] .numbers"))
    .every((n) => !/^0\.0%/.test(n.textContent)));
  result.shares_after = await shares();
  result.status_after = (await page.locator("#rebalance-status").innerText()).trim();
});
