// Drives the admin page in headless Chromium with playwright-core (test_admin_page.py).
//
//   node admin_page.mjs --url=http://127.0.0.1:PORT/ [--backend=b1] [--token=T]
//                       [--proxy-url=http://127.0.0.1:PORT/ --refuse=N]
//                       [--screenshot=/tmp/x.png] [--timeout-ms=20000]
//
// Loads the page, fills the token form when --token is given, waits for two backend rows,
// with --backend clicks Drain on it and waits until its state cell says "draining". With
// --proxy-url: clicks Drain proxy and cancels the confirmation (no POST /drain may go
// out, the proxy stays ready), then clicks it again and confirms; once the proxy is
// draining, makes N upgrades to --proxy-url that are refused with 503, and waits for
// the page to count them. Prints one JSON object on stdout (exit 0), or
// {"ok": false, "error": ...} (exit 1). The launch and the report are browser.mjs's.

import http from "node:http";

import { parseArgs, runBrowser, timeoutOf, watchErrors } from "./browser.mjs";

// One upgrade request from node (not the page: Chromium would log each refusal);
// resolves with the status of the answer.
function upgradeStatus(url) {
  return new Promise((resolve, reject) => {
    const request = http.request(url, { headers: {
      Connection: "Upgrade", Upgrade: "websocket",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
    } });
    request.on("response", (response) => { response.resume(); resolve(response.statusCode); });
    request.on("upgrade", (response, socket) => { socket.destroy(); resolve(101); });
    request.on("error", reject);
    request.end();
  });
}

const args = parseArgs();
const timeout = timeoutOf(args);
const result = { ok: false, requests_elsewhere: [], page_errors: [], console_errors: [] };
await runBrowser(result, timeout, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(timeout);
  const origin = new URL(args.url).origin;
  result.posts = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(origin)) result.requests_elsewhere.push(r.url());
    if (r.method() === "POST") result.posts.push(new URL(r.url()).pathname);
  });
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

  if (args.backend !== undefined) {
    const row = page.locator(`tr[data-backend="${args.backend}"]`);
    await row.locator('button[data-action="drain"]').click();
    await row.locator('td[data-state="draining"]').waitFor();
    await row.locator('button[data-action="undrain"]').waitFor();
    // The drain section lists the backend's drain once GET /drain has been read again.
    await page.locator(`#drain [data-drain="${args.backend}"]`).waitFor();
  }

  result.backends_after = await rows();
  result.proxy_state_after = await page.getAttribute("#proxy-state", "data-state");
  result.connection_count = await page.getAttribute("#conn-count", "data-count");
  result.connection_rows = await page.locator("tr[data-connection]").count();
  result.drain_text = (await page.locator("#drain").innerText()).trim();
  result.error_text = (await page.locator("#error-text").innerText()).trim();

  if (args["proxy-url"] !== undefined) {
    const toggle = page.locator("#proxy-toggle");
    const confirm = page.locator("#drain-confirm");
    const readyz = () => page.evaluate(async () => (await fetch("/readyz", { cache: "no-store" })).status);
    result.refused_hidden_before = await page.locator("#refused").isHidden();
    // Cancelled: nothing is posted, the proxy stays ready.
    const postsBefore = result.posts.length;
    await toggle.click();
    await confirm.waitFor({ state: "visible" });
    result.confirm_text = (await page.locator("#drain-confirm-text").innerText()).trim();
    result.toggle_disabled_while_asking = await toggle.isDisabled();
    await page.click("#drain-confirm-no");
    await confirm.waitFor({ state: "hidden" });
    await page.waitForFunction(() => !document.querySelector("#proxy-toggle").disabled);
    // A full refresh after the cancel, and the proxy is still ready.
    const updated = await page.locator("#updated").innerText();
    await page.waitForFunction((u) => document.querySelector("#updated").textContent !== u, updated);
    result.readyz_after_cancel = await readyz();
    result.proxy_state_after_cancel = await page.getAttribute("#proxy-state", "data-state");
    result.posts_after_cancel = result.posts.slice(postsBefore);
    // Confirmed: POST /drain, and the page shows the proxy draining.
    await toggle.click();
    await confirm.waitFor({ state: "visible" });
    await page.click("#drain-confirm-yes");
    await page.locator('#proxy-state[data-state="draining"]').waitFor();
    await page.locator('#proxy-toggle[data-action="undrain"]').waitFor();
    result.readyz_after_confirm = await readyz();
    result.posts_after_confirm = result.posts.slice(postsBefore);
    // Upgrades while drained: refused (the refusals begin once drain.delay is over).
    const want = Number(args.refuse);
    const statuses = [];
    for (let i = 0; i < 200 && statuses.filter((s) => s === 503).length < want; i++) {
      statuses.push(await upgradeStatus(args["proxy-url"]));
    }
    result.upgrade_statuses = statuses;
    await page.locator(`#refused[data-refused="${want}"]`).waitFor();
    result.refused_visible = await page.locator("#refused").isVisible();
    result.refused_text = (await page.locator("#refused").innerText()).trim();
  }
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
});
