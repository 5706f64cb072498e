// What the browser scripts share (admin_page.mjs, auth_browser.mjs, demo_page.mjs): their
// --name=value arguments, headless Chromium launched through playwright-core, and the
// report: one JSON object on stdout (exit 0 when result.ok), or {"ok": false, "error": ...}
// (exit 1). tests/integration/browser.py runs them and reads that line.
//
// playwright-core is loaded from $WSPROXY_PLAYWRIGHT_DIR (npm install --prefix DIR), Chromium
// from $WSPROXY_CHROMIUM; the defaults are the paths .ci/run installs to.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

/** The script's arguments, all of the form --name=value, as {name: value}. */
export function parseArgs(argv = process.argv.slice(2)) {
  return Object.fromEntries(argv.map((a) => {
    const m = /^--([^=]+)=(.*)$/s.exec(a);
    if (!m) throw new Error("bad argument: " + a);
    return [m[1], m[2]];
  }));
}

/** Bound on every wait, in ms: --timeout-ms, 20 s by default. */
export function timeoutOf(args) {
  return Number(args["timeout-ms"] || 20000);
}

async function launch(timeout) {
  const pwDir = process.env.WSPROXY_PLAYWRIGHT_DIR || "/tmp/wsproxy-pw";
  const require = createRequire(path.join(pwDir, "node_modules", "noop.js"));
  const { chromium } = require("playwright-core");
  return chromium.launch({
    executablePath: process.env.WSPROXY_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
}

/** Record the page's uncaught errors and console errors in into.page_errors and
 * into.console_errors (both lists). */
export function watchErrors(page, into) {
  page.on("pageerror", (e) => into.page_errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") into.console_errors.push(m.text()); });
}

/** A new page of browser at args.page (its errors watched into result), with clients/js's two
 * modules served from args["module-dir"] at /wsproxy-resume.js and /wsproxy-client.js on the
 * page's origin (routes of the browser's; the first imports the second): {page, origin}. */
export async function pageWithClientModules(browser, args, result, timeout) {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  watchErrors(page, result);
  const origin = new URL(args.page).origin;
  for (const name of ["wsproxy-resume.js", "wsproxy-client.js"]) {
    const body = readFileSync(path.join(args["module-dir"], name), "utf-8");
    await page.route(`${origin}/${name}`, (route) =>
      route.fulfill({ status: 200, contentType: "text/javascript", body }));
  }
  await page.goto(args.page);
  return { page, origin };
}

/** Launch Chromium, await body(browser), close it, print result as one JSON line and exit.
 * result.ok is set once body returns; a throw (from the launch too) goes to result.error. */
export async function runBrowser(result, timeout, body) {
  const started = Date.now();
  let browser = null;
  try {
    browser = await launch(timeout);
    await body(browser);
    result.ok = true;
  } catch (err) {
    result.ok = false;
    result.error = String(err && err.stack || err);
  } finally {
    result.elapsed_ms = Date.now() - started;
    if (browser !== null) await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}
