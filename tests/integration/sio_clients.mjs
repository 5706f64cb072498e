// N socket.io-client clients against a URL (the proxy), for test_frameworks_node.py.
//
//   node sio_clients.mjs --url=http://127.0.0.1:PORT --clients=10 --echoes=5 --whoami=3
//        --transports=polling,websocket --cookies=1 --timeout-ms=20000
//
// Each client (its own Manager: forceNew) connects with the given transports,
// `withCredentials: true` unless --cookies=0 (in Node that gives it a cookie jar: the
// proxy's sticky cookie goes back on every poll and on the upgrade) and a stable
// `query: {cid}`, "c0" to "c<N-1>" (for `balance: hash:cid`). It asks `whoami` once at once, sends M acked echoes, waits for
// the upgrade when polling is followed by websocket, then asks `whoami` again K-1
// times. Prints one JSON line: {ok, connected, acked, expected_acks, clients: [{cid,
// backends, transports, acked, error}]}, `backends` being the distinct names whoami
// answered. No reconnection: a session that breaks shows as an error.
//
// With --reconnect=1 (the drain test) each client reconnects by itself (back-off 0.2 to
// 1 s): after its echoes it waits for the others, the script prints {"event": "ready"},
// and each client then waits for its session to break and come back (a reconnect),
// asks `whoami` and sends one more acked echo; `backends` then lists before and after,
// and `reconnected_ms` is the time from "ready" to the reconnect.
import { createRequire } from "node:module";
import path from "node:path";

const nodeDir = process.env.WSPROXY_NODE_DIR || "/tmp/wsproxy-node";
const require = createRequire(path.join(nodeDir, "node_modules", "x.js"));
const { io } = require("socket.io-client");

const args = Object.fromEntries(process.argv.slice(2).map((a) => {
  const [k, ...v] = a.replace(/^--/, "").split("=");
  return [k, v.join("=")];
}));
const url = args.url;
const clients = Number(args.clients || 10);
const echoes = Number(args.echoes || 5);
const whoamis = Math.max(1, Number(args.whoami || 3));
const transports = (args.transports || "polling,websocket").split(",");
const cookies = (args.cookies ?? "1") !== "0";
const timeoutMs = Number(args["timeout-ms"] || 20000);
const reconnect = (args.reconnect ?? "0") === "1";
const deadline = setTimeout(() => finish("timed out"), timeoutMs * 2);
let readyAt = 0;
let readyCount = 0;
let allReady;
const everyoneReady = new Promise((resolve) => { allReady = resolve; });
const ready = () => {
  readyCount += 1;
  if (readyCount === clients) {
    readyAt = Date.now();
    process.stdout.write(JSON.stringify({ event: "ready" }) + "\n");
    allReady();
  }
};

async function one(index) {
  const cid = `c${index}`;
  const result = { cid, backends: [], transports: [], acked: 0, connected: false, error: null };
  const socket = io(url, {
    transports, forceNew: true, reconnection: reconnect, withCredentials: cookies,
    reconnectionDelay: 200, reconnectionDelayMax: 1000,
    query: { cid }, timeout: timeoutMs, ackTimeout: timeoutMs,
  });
  const seen = new Set();
  const whoami = async () => {
    const me = await socket.timeout(timeoutMs).emitWithAck("whoami");
    seen.add(me.name);
    result.transports.push(me.transport);
  };
  try {
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", reject);
    });
    result.connected = true;
    let upgraded = null;
    if (transports.length > 1) {
      upgraded = new Promise((resolve) => socket.io.engine.once("upgrade", resolve));
    }
    await whoami();
    for (let i = 0; i < echoes; i++) {
      const payload = { cid, i };
      const back = await socket.timeout(timeoutMs).emitWithAck("echo", payload);
      if (JSON.stringify(back) !== JSON.stringify(payload)) {
        throw new Error(`echo ${i} came back as ${JSON.stringify(back)}`);
      }
      result.acked += 1;
    }
    if (upgraded && socket.io.engine.transport.name !== "websocket") await upgraded;
    for (let i = 1; i < whoamis; i++) await whoami();
    if (reconnect) {
      const back = new Promise((resolve) => socket.io.once("reconnect", resolve));
      ready();
      await everyoneReady;
      await back;
      result.reconnected_ms = Date.now() - readyAt;
      await whoami();
      const last = await socket.timeout(timeoutMs).emitWithAck("echo", "after");
      if (last !== "after") throw new Error(`echo after came back as ${JSON.stringify(last)}`);
    }
  } catch (err) {
    result.error = String(err && (err.message || err));
  } finally {
    socket.disconnect();
  }
  result.backends = [...seen];
  return result;
}

let done = false;
function finish(error, results = []) {
  if (done) return;
  done = true;
  clearTimeout(deadline);
  const report = {
    event: "report",
    ok: error === null,
    error,
    connected: results.filter((r) => r.connected).length,
    acked: results.reduce((n, r) => n + r.acked, 0),
    expected_acks: clients * echoes,
    clients: results,
  };
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(error === null ? 0 : 1);
}

Promise.all(Array.from({ length: clients }, (_, i) => one(i)))
  .then((results) => finish(null, results), (err) => finish(String(err)));
