// Opens WebSockets from headless Chromium to a proxy that refuses them
// (test_reject_with_close.py): what a page sees of a refused upgrade.
//
//   node reject_close_browser.mjs --page=http://127.0.0.1:PORT/healthz
//        --ws=ws://127.0.0.1:PORT/ --offers='[[], ["chat.v1", "chat.v2"]]' [--timeout-ms=20000]
//
// Loads --page (any page on loopback: an origin to run in), then for each list of
// subprotocol offers opens one WebSocket to --ws and waits for its close event. Prints
// {"ok": true, "sockets": [{"offers", "opened", "protocol", "error_event", "code",
// "reason", "was_clean"}], ...} on stdout (exit 0), or {"ok": false, "error": ...}
// (exit 1). The launch and the report are browser.mjs's.

import { parseArgs, runBrowser, timeoutOf, watchErrors } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
const result = { ok: false, sockets: [], page_errors: [], console_errors: [] };
await runBrowser(result, timeout, async (browser) => {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  watchErrors(page, result);
  await page.goto(args.page);
  for (const offers of JSON.parse(args.offers)) {
    const seen = await page.evaluate(([url, offers, ms]) => new Promise((resolve, reject) => {
      const out = { offers, opened: false, protocol: null, error_event: false };
      const ws = new WebSocket(url, offers);
      const bound = setTimeout(() => reject(new Error("no close event in " + ms + " ms")), ms);
      ws.onopen = () => { out.opened = true; out.protocol = ws.protocol; };
      ws.onerror = () => { out.error_event = true; };
      ws.onclose = (e) => {
        clearTimeout(bound);
        resolve({ ...out, code: e.code, reason: e.reason, was_clean: e.wasClean });
      };
    }), [args.ws, offers, timeout]);
    result.sockets.push(seen);
  }
});
