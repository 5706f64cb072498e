// A Node SockJS echo server for the framework tests (tests/integration/test_frameworks_node.py).
//
//   node sockjs_server.mjs NAME
//
// Listens on 127.0.0.1, port 0, prefix /echo, and prints one JSON line per thing that
// happens, the first {"event": "listening", "port": N, "name": NAME}. A message
// "whoami" is answered with NAME, any other is echoed. Each session is printed as it
// opens ({"event": "connect", "cid", "transport"}, cid from the session URL's query),
// and every request answered with a 4xx/5xx ({"event": "refused", "status", "url"}:
// a request of a session that reached the other backend shows here as a 404).
// sockjs comes from $WSPROXY_NODE_DIR/node_modules.
import { createServer } from "node:http";
import { createRequire } from "node:module";
import path from "node:path";

const nodeDir = process.env.WSPROXY_NODE_DIR || "/tmp/wsproxy-node";
const require = createRequire(path.join(nodeDir, "node_modules", "x.js"));
const sockjs = require("sockjs");

const name = process.argv[2] || "backend";
const say = (record) => process.stdout.write(JSON.stringify({ name, ...record }) + "\n");

const echo = sockjs.createServer({ prefix: "/echo", log: () => {} });
echo.on("connection", (conn) => {
  const cid = new URL(conn.url, "http://x").searchParams.get("cid");
  say({ event: "connect", cid, transport: conn.protocol });
  conn.on("data", (message) => conn.write(message === "whoami" ? name : message));
});
const http = createServer();
echo.installHandlers(http, { prefix: "/echo" });
http.on("request", (req, res) => {
  res.on("finish", () => {
    if (res.statusCode >= 400) say({ event: "refused", status: res.statusCode, url: req.url });
  });
});
http.listen(0, "127.0.0.1", () => {
  say({ event: "listening", port: http.address().port });
});
const stop = () => { process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
