// clients/js's ResumableSession in headless Chromium (test_resume_browser.py).
//
//   node resume_browser.mjs --page=http://127.0.0.1:PORT/healthz --module-file=PATH
//        --ws=ws://127.0.0.1:PORT/ --count=N [--timeout-ms=20000]
//
// Loads --page with clients/js/wsproxy-resume.js served from --module-file at
// /__wsproxy-resume.js (a route of the browser's), opens a ResumableSession to --ws,
// sends "up-1".."up-N" at about 1,000 a second and reads until it has N backend
// messages. The test cuts the TCP connections under the page meanwhile. Reports
// {ok, got (the backend messages, in order), events ({type, reason, resent, unacked}),
// page_errors, console_errors}. The launch and the report are browser.mjs's.

import { readFileSync } from "node:fs";

import { parseArgs, runBrowser, timeoutOf, watchErrors } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
const result = { ok: false, page_errors: [], console_errors: [] };

await runBrowser(result, timeout, async (browser) => {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  watchErrors(page, result);
  const moduleUrl = new URL(args.page).origin + "/__wsproxy-resume.js";
  const moduleText = readFileSync(args["module-file"], "utf-8");
  await page.route(moduleUrl, (route) =>
    route.fulfill({ status: 200, contentType: "text/javascript", body: moduleText }));
  await page.goto(args.page);
  Object.assign(result, await page.evaluate(async ([moduleUrl, url, count, ms]) => {
    const { ResumableSession } = await import(moduleUrl);
    const got = []; const events = [];
    const session = new ResumableSession(url);
    for (const type of ["session", "resumed", "resumefailed", "close"]) {
      session.addEventListener(type, (e) => events.push(
        { type, reason: e.reason ?? null, resent: e.resent ?? null, unacked: e.unacked ?? null }));
    }
    const done = new Promise((resolve, reject) => {
      const bound = setTimeout(() => reject(new Error(
        `${got.length} of ${count} messages in ${ms} ms; events: ${JSON.stringify(events)}`)), ms);
      session.addEventListener("message", (e) => {
        got.push(e.data);
        if (got.length === count) { clearTimeout(bound); resolve(); }
      });
    });
    await new Promise((resolve) => session.addEventListener("session", resolve, { once: true }));
    for (let i = 1; i <= count; i += 1) {
      session.send(`up-${i}`);
      if (i % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await done;
    session.close();
    return { got, events };
  }, [moduleUrl, args.ws, Number(args.count), timeout]));
});
