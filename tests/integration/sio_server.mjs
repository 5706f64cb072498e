// A Node socket.io server for the framework tests (tests/integration/test_frameworks_node.py).
//
//   node sio_server.mjs NAME
//
// Listens on 127.0.0.1, port 0, and prints one JSON line per thing that happens, the
// first {"event": "listening", "port": N, "name": NAME} (readiness comes from that line).
// Events: `echo` acks its argument back; `whoami` acks {name, transport}. Each session
// is printed as it connects ({"event": "connect", "cid", "transport"}), and every request
// engine.io refuses ({"event": "connection_error", "code", "message", "sid"}: a request of
// a session that reached the other backend shows here as "Session ID unknown" with a sid
// this backend never issued). Every engine.io session it opens: {"event": "session", "sid"}.
// socket.io and its dependencies come from $WSPROXY_NODE_DIR/node_modules.
import { createServer } from "node:http";
import { createRequire } from "node:module";
import path from "node:path";

const nodeDir = process.env.WSPROXY_NODE_DIR || "/tmp/wsproxy-node";
const require = createRequire(path.join(nodeDir, "node_modules", "x.js"));
const { Server } = require("socket.io");

const name = process.argv[2] || "backend";
const say = (record) => process.stdout.write(JSON.stringify({ name, ...record }) + "\n");

const http = createServer();
const io = new Server(http, { cors: { origin: true, credentials: true } });
io.engine.on("connection_error", (err) => {
  const sid = new URL(err.req.url, "http://backend").searchParams.get("sid");
  say({ event: "connection_error", code: err.code, message: err.message, sid });
});
io.engine.on("connection", (conn) => say({ event: "session", sid: conn.id }));
io.on("connection", (socket) => {
  const transport = () => socket.conn.transport.name;
  say({ event: "connect", cid: socket.handshake.query.cid ?? null, transport: transport() });
  socket.on("echo", (payload, ack) => ack(payload));
  socket.on("whoami", (ack) => ack({ name, transport: transport() }));
});
// Every exchange the backend serves, for the drain test: a plain request from its arrival
// to its response's close, an upgrade until its socket closes ({"event": "exchange",
// "phase": "start"|"end", "kind": "http"|"upgrade", "t": seconds since the epoch, and at
// the end of a plain one "answered": whether its response was sent whole, not cut off).
const exchange = (phase, kind, more = {}) =>
  say({ event: "exchange", phase, kind, t: Date.now() / 1000, ...more });
http.on("request", (req, res) => {
  exchange("start", "http");
  res.on("close", () => exchange("end", "http", { answered: res.writableFinished }));
});
http.on("upgrade", (req, socket) => {
  exchange("start", "upgrade");
  socket.on("close", () => exchange("end", "upgrade"));
});
http.listen(0, "127.0.0.1", () => {
  say({ event: "listening", port: http.address().port });
});
const stop = () => { io.close(); process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
