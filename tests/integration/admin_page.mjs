// Drives the admin page in headless Chromium with playwright-core (test_admin_page.py).
//
//   node admin_page.mjs --url=http://127.0.0.1:PORT/ --backend=b1 [--token=T]
//                       [--screenshot=/tmp/x.png] [--timeout-ms=20000]
//
// Loads the page, fills the token form when --token is given, waits for two backend rows,
// clicks Drain on --backend, waits until its state cell says "draining", and prints one
// JSON object on stdout (exit 0), or {"ok": false, "error": ...} (exit 1).
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
  result.title = await page.title();
  if (args.token !== undefined) {
    await page.locator("#auth-form").waitFor({ state: "visible" });
    result.token_form_shown = true;
    await page.fill("#token-input", args.token);
    await page.click("#token-submit");
  }
  await page.waitForFunction(() => document.querySelectorAll("tr[data-backend]").length === 2);
  const rows = async () => page.$$eval("tr[data-backend]", (trs) => trs.map((tr) => ({
    name: tr.dataset.backend,
    state: tr.querySelector("[data-state]").dataset.state,
    active: Number(tr.querySelector("[data-active]").dataset.active),
    button: tr.querySelector("button").textContent,
  })));
  result.backends_before = await rows();
  result.proxy_state_before = await page.getAttribute("#proxy-state", "data-state");

  const row = page.locator(`tr[data-backend="${args.backend}"]`);
  await row.locator('button[data-action="drain"]').click();
  await row.locator('td[data-state="draining"]').waitFor();
  await row.locator('button[data-action="undrain"]').waitFor();
  // The drain section lists the backend's drain once GET /drain has been read again.
  await page.locator(`#drain [data-drain="${args.backend}"]`).waitFor();

  result.backends_after = await rows();
  result.proxy_state_after = await page.getAttribute("#proxy-state", "data-state");
  result.connection_count = await page.getAttribute("#conn-count", "data-count");
  result.connection_rows = await page.locator("tr[data-connection]").count();
  result.drain_text = (await page.locator("#drain").innerText()).trim();
  result.error_text = (await page.locator("#error-text").innerText()).trim();
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
});
