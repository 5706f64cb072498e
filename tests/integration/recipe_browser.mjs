// Runs one client recipe of clients/README.md in headless Chromium and reports what its
// client does, as recipe_clients.mjs does in Node (tests/integration/test_client_recipes.py).
//
//   node recipe_browser.mjs KIND RECIPE_FILE URL
//
// A static server on 127.0.0.1 (port 0) serves the page, the recipe (RECIPE_FILE, the
// README's block as it stands), recipe_watch.mjs and the libraries' browser builds from
// $WSPROXY_NODE_DIR/node_modules, named by an import map: the recipe's bare imports resolve
// as a bundler's would, and its `import WebSocket from "ws"` (there for Node) to the
// browser's own WebSocket. The page reports through an exposed function; each report is
// one JSON line on stdout, with t the page's clock in ms ({"event": "timer", "ms"}: a
// timer set in the page). playwright-core from $WSPROXY_PLAYWRIGHT_DIR, Chromium from
// $WSPROXY_CHROMIUM. It runs until it is stopped (SIGTERM).
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const [kind, recipeFile, url] = process.argv.slice(2);
const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(process.env.WSPROXY_NODE_DIR || "/tmp/wsproxy-node", "node_modules");
const say = (record) => process.stdout.write(JSON.stringify(record) + "\n");

const IMPORTS = {
  "graphql-ws": "/node_modules/graphql-ws/dist/client.js",
  "socket.io-client": "/node_modules/socket.io-client/dist/socket.io.esm.min.js",
  "phoenix": "/node_modules/phoenix/priv/static/phoenix.mjs",
  "@microsoft/signalr": "/node_modules/@microsoft/signalr/dist/esm/index.js",
  "ws": "/ws-shim.mjs",
};
const PAGE = `<!doctype html><meta charset="utf-8"><title>recipe</title>
<script type="importmap">${JSON.stringify({ imports: IMPORTS })}</script>
<script type="module">
  import { connect } from "/recipe.mjs";
  import { watch } from "/recipe_watch.mjs";
  const say = (record) => window.report({ ...record, t: performance.now() });
  watch(${JSON.stringify(kind)}, connect, ${JSON.stringify(url)}, say)
    .catch((e) => say({ event: "page_error", error: String(e && e.stack || e) }));
</script>`;

async function body(pathname) {
  if (pathname === "/") return ["text/html", PAGE];
  if (pathname === "/recipe.mjs") return ["text/javascript", await readFile(recipeFile)];
  if (pathname === "/recipe_watch.mjs") {
    return ["text/javascript", await readFile(path.join(here, "recipe_watch.mjs"))];
  }
  if (pathname === "/ws-shim.mjs") return ["text/javascript", "export default globalThis.WebSocket;\n"];
  if (pathname.startsWith("/node_modules/")) {
    const file = path.join(modules, path.normalize(pathname.slice("/node_modules/".length)));
    if (!file.startsWith(modules + path.sep)) return null;
    // dist/esm of @microsoft/signalr imports "./Errors": a bundler adds the ".js".
    for (const candidate of [file, file + ".js"]) {
      try { return ["text/javascript", await readFile(candidate)]; } catch { /* next */ }
    }
  }
  return null;
}

const server = createServer(async (req, res) => {
  const found = await body(new URL(req.url, "http://x").pathname);
  if (found === null) { res.writeHead(404).end(); return; }
  res.writeHead(200, { "content-type": found[0] }).end(found[1]);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));

const require = createRequire(path.join(process.env.WSPROXY_PLAYWRIGHT_DIR || "/tmp/wsproxy-pw",
                                        "node_modules", "noop.js"));
const { chromium } = require("playwright-core");
const browser = await chromium.launch({
  executablePath: process.env.WSPROXY_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  timeout: 20000,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const stop = async () => { await browser.close().catch(() => {}); process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

const page = await browser.newPage();
page.on("pageerror", (e) => say({ event: "page_error", error: String(e) }));
await page.exposeFunction("report", (record) => say(record));
// Every timer set with a delay, before any script of the page runs (see recipe_clients.mjs).
await page.addInitScript(() => {
  const realSetTimeout = window.setTimeout;
  window.setTimeout = function setTimeout(callback, ms, ...rest) {
    if (ms > 0) window.report({ event: "timer", ms, t: performance.now() });
    return realSetTimeout(callback, ms, ...rest);
  };
});
await page.goto(`http://127.0.0.1:${server.address().port}/`);
say({ event: "page_loaded" });
