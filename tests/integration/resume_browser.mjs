// clients/js's resumable sessions in headless Chromium (test_resume_browser.py).
//
//   node resume_browser.mjs --page=http://127.0.0.1:PORT/healthz --module-dir=DIR
//        --api=session|client --ws=ws://127.0.0.1:PORT/ --count=N [--timeout-ms=20000]
//
// Loads --page with clients/js's two modules served from --module-dir at
// /wsproxy-resume.js and /wsproxy-client.js (routes of the browser's; the first imports
// the second), opens a ResumableSession (--api=session) or a WsproxyClient with
// {resume: true} (--api=client) to --ws, sends "up-1".."up-N" at about 1,000 a second and
// reads until it has N backend messages, then closes (the client: until its terminal
// event). The test cuts the TCP connections under the page meanwhile. Reports {ok, got
// (the backend messages, in order), events ({type, reason, resent, unacked}; the
// client's terminal event as "close"), page_errors, console_errors}. The launch and the
// report are browser.mjs's.

import { pageWithClientModules, parseArgs, runBrowser, timeoutOf } from "./browser.mjs";

const args = parseArgs();
const timeout = timeoutOf(args);
const result = { ok: false, page_errors: [], console_errors: [] };

await runBrowser(result, timeout, async (browser) => {
  const { page, origin } = await pageWithClientModules(browser, args, result, timeout);
  Object.assign(result, await page.evaluate(async ([origin, api, url, count, ms]) => {
    const got = []; const events = [];
    let session;
    if (api === "client") {
      const { WsproxyClient } = await import(`${origin}/wsproxy-client.js`);
      session = new WsproxyClient(url, { resume: true });
    } else {
      const { ResumableSession } = await import(`${origin}/wsproxy-resume.js`);
      session = new ResumableSession(url);
    }
    const ended = new Promise((resolve) => {
      for (const type of ["session", "resumed", "resumefailed", "close", "terminal"]) {
        session.addEventListener(type, (e) => {
          if (api === "client" && type === "close") return; // drops; its end is "terminal"
          events.push({ type: type === "terminal" ? "close" : type, reason: e.reason ?? null,
                        resent: e.resent ?? null, unacked: e.unacked ?? null });
          if (type === "terminal" || (api !== "client" && type === "close")) resolve();
        });
      }
    });
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
    session.close(1000);
    await ended;
    return { got, events };
  }, [origin, args.api ?? "session", args.ws, Number(args.count), timeout]));
});
