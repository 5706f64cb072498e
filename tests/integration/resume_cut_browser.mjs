// clients/js's ResumableSession in headless Chromium, its message cut in the middle
// (test_resume_browser.py's second test).
//
//   node resume_cut_browser.mjs --page=http://127.0.0.1:PORT/healthz --module-dir=DIR
//        --ws=ws://127.0.0.1:PORT/ --big=N [--timeout-ms=20000]
//
// Loads --page with clients/js's two modules served from --module-dir (browser.mjs's
// pageWithClientModules), opens a ResumableSession to --ws and sends "one"; then it
// does what the backend says: "send-big" sends "big-" and N "x"s, "send-after" sends
// "after", "done" closes the session. The test cuts the TCP connection under the
// page in the middle of the big message. Reports {ok, events ({type, reason, resent,
// unacked}), page_errors, console_errors}. The launch and the report are browser.mjs's.

import { pageWithClientModules, parseArgs, runBrowser, timeoutOf } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
const result = { ok: false, page_errors: [], console_errors: [] };

await runBrowser(result, timeout, async (browser) => {
  const { page, origin } = await pageWithClientModules(browser, args, result, timeout);
  Object.assign(result, await page.evaluate(async ([origin, url, big, ms]) => {
    const { ResumableSession } = await import(`${origin}/wsproxy-resume.js`);
    const session = new ResumableSession(url);
    const events = [];
    const ended = new Promise((resolve) => {
      for (const type of ["session", "resumed", "resumefailed", "close"]) {
        session.addEventListener(type, (e) => {
          events.push({ type, reason: e.reason ?? null, resent: e.resent ?? null,
                        unacked: e.unacked ?? null });
          if (type === "close") resolve();
        });
      }
    });
    const done = new Promise((resolve, reject) => {
      const bound = setTimeout(() => reject(new Error(
        `no "done" in ${ms} ms; events: ${JSON.stringify(events)}`)), ms);
      session.addEventListener("message", (e) => {
        if (e.data === "send-big") session.send("big-" + "x".repeat(big));
        else if (e.data === "send-after") session.send("after");
        else if (e.data === "done") { clearTimeout(bound); resolve(); }
      });
    });
    await new Promise((resolve) => session.addEventListener("session", resolve, { once: true }));
    session.send("one");
    await done;
    session.close(1000);
    await ended;
    return { events };
  }, [origin, args.ws, Number(args.big), timeout]));
});
