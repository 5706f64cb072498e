// N sockjs-client sessions against a URL (the proxy), for test_frameworks_node.py.
//
//   node sockjs_clients.mjs --url=http://127.0.0.1:PORT/echo --clients=10 --echoes=5
//        --transports=xhr-streaming --timeout-ms=20000
//
// Each session opens `new SockJS(URL?cid=c<i>, null, {transports})` (sockjs-client keeps
// the query on every session URL, /echo/<server>/<session>/<transport>?cid=..., so
// `balance: hash:cid` can hold it; in Node it keeps no cookies), sends "whoami", M
// echoes and "whoami" again, one at a time, each answer awaited. Prints one JSON line:
// {ok, error, opened, echoed, expected_echoes, clients: [{cid, transport, backends,
// echoed, error}]}, `backends` being the distinct names whoami answered.
//
// --cookies=1 gives each session a cookie jar of its own (keyed by its cid), as a browser
// has: sockjs-client's Node XHR driver calls http.request, wrapped here to send the
// cookies a session was given (the proxy's sticky cookie, for `balance: cookie`).
import { createRequire } from "node:module";
import path from "node:path";

const nodeDir = process.env.WSPROXY_NODE_DIR || "/tmp/wsproxy-node";
const require = createRequire(path.join(nodeDir, "node_modules", "x.js"));
const SockJS = require("sockjs-client");
const http = require("node:http");

const args = Object.fromEntries(process.argv.slice(2).map((a) => {
  const [k, ...v] = a.replace(/^--/, "").split("=");
  return [k, v.join("=")];
}));
const url = args.url;
const clients = Number(args.clients || 10);
const echoes = Number(args.echoes || 5);
const transports = (args.transports || "websocket").split(",");
const timeoutMs = Number(args["timeout-ms"] || 20000);
const cookies = (args.cookies ?? "0") === "1";
const jars = new Map();
if (cookies) {
  const original = http.request;
  http.request = function request(options, callback) {
    const cid = new URL(options.path, "http://x").searchParams.get("cid");
    const jar = jars.get(cid) || new Map();
    jars.set(cid, jar);
    if (jar.size > 0) {
      const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
      options = { ...options, headers: { ...(options.headers || {}), Cookie: cookie } };
    }
    return original.call(this, options, (res) => {
      for (const line of res.headers["set-cookie"] || []) {
        const pair = line.split(";")[0];
        const at = pair.indexOf("=");
        jar.set(pair.slice(0, at).trim(), pair.slice(at + 1));
      }
      callback(res);
    });
  };
}
const deadline = setTimeout(() => finish("timed out"), timeoutMs * 2);

async function one(index) {
  const cid = `c${index}`;
  const result = { cid, transport: null, backends: [], echoed: 0, opened: false, error: null };
  const sock = new SockJS(`${url}?cid=${cid}`, null, { transports, timeout: timeoutMs });
  const answers = [];
  let waiter = null;
  let closed = null;
  sock.onmessage = (e) => { answers.push(e.data); if (waiter) waiter(); };
  sock.onclose = (e) => { closed = `closed ${e.code} ${e.reason}`; if (waiter) waiter(); };
  const next = async () => {
    const timer = setTimeout(() => { closed = closed || "no answer in time"; waiter(); }, timeoutMs);
    while (answers.length === 0 && closed === null) {
      await new Promise((resolve) => { waiter = resolve; });
    }
    clearTimeout(timer);
    if (answers.length === 0) throw new Error(closed);
    return answers.shift();
  };
  const seen = new Set();
  try {
    await new Promise((resolve, reject) => {
      sock.onopen = resolve;
      const early = sock.onclose;
      sock.onclose = (e) => { early(e); reject(new Error(closed)); };
    });
    sock.onclose = (e) => { closed = `closed ${e.code} ${e.reason}`; if (waiter) waiter(); };
    result.opened = true;
    result.transport = sock.transport;
    sock.send("whoami");
    seen.add(await next());
    for (let i = 0; i < echoes; i++) {
      const payload = `${cid}:${i}`;
      sock.send(payload);
      const back = await next();
      if (back !== payload) throw new Error(`echo ${i} came back as ${back}`);
      result.echoed += 1;
    }
    sock.send("whoami");
    seen.add(await next());
  } catch (err) {
    result.error = String(err && (err.message || err));
  } finally {
    sock.close();
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
    ok: error === null,
    error,
    opened: results.filter((r) => r.opened).length,
    echoed: results.reduce((n, r) => n + r.echoed, 0),
    expected_echoes: clients * echoes,
    clients: results,
  };
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(error === null ? 0 : 1);
}

Promise.all(Array.from({ length: clients }, (_, i) => one(i)))
  .then((results) => finish(null, results), (err) => finish(String(err)));
