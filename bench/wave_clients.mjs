// Hosts hundreds of reconnecting WebSocket clients in one Node process, for
// bench/drain_wave.py (which starts a few of these; see bench/README.md, "Drain wave").
//
//   node bench/wave_clients.mjs --url ws://127.0.0.1:PORT/ --count 500 --timing js \
//        --node-modules bench/out/node/node_modules [--client-module clients/js/wsproxy-client.js]
//        [--url-next ws://127.0.0.1:PORT2/] [--concurrency 32] [--max-seconds 180]
//
// --timing picks how each client reconnects after the proxy closes its socket:
//   js         clients/js (WsproxyClient): waits the close reason's retry-after-ms hint,
//              else full-jitter back-off; its defaults, nothing tuned.
//   immediate  Phoenix's timing (phoenix.js Socket.reconnectAfterMs): 10 ms after the
//              close, then 50, 100, 150, 200, 250, 500, 1000, 2000, 5000 ms on failures.
//              (SignalR's first retry is at 0 ms: the same wave.)
//   rws        reconnecting-websocket 4.4.0 with its defaults. Its default
//              minReconnectionDelay is drawn once per module load (1000 + random*4000 ms),
//              as in one browser page per client; so each client imports its own copy of
//              the module (a distinct module URL), as each page would.
//
// Every client gets the `ws` package's WebSocket through a subclass that records each
// socket: when it was created (the attempt), opened, closed, with which code and hint.
// Times are process.hrtime (CLOCK_MONOTONIC, seconds): the clock of Python's
// time.monotonic(), so the driver can put the proxy's drain and these on one axis.
//
// stdout, one JSON object a line: {"event":"connected"} once the clients are open,
// {"event":"settled"} once every client was closed after "arm" and is open again,
// {"event":"result", sockets: [[client, attempt, open|null, close|null, code, hint], ...]}.
// stdin: "arm" (the drain is about to start), "stop" (close every client, report, exit).
// Bounded: --max-seconds, after which it reports and exits on its own.

import { createRequire } from "node:module";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import path from "node:path";

function parseArgs(argv) {
  const out = { concurrency: 32, maxSeconds: 180, clientModule: "" };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-(\w)/g, (_, c) => c.toUpperCase());
    out[key] = argv[i + 1];
  }
  out.count = Number(out.count);
  out.concurrency = Number(out.concurrency);
  out.maxSeconds = Number(out.maxSeconds);
  if (!out.url || !(out.count > 0) || !["js", "immediate", "rws"].includes(out.timing)
      || !out.nodeModules) {
    process.stderr.write("usage: wave_clients.mjs --url URL --count N --timing js|immediate|rws "
                         + "--node-modules DIR [--client-module PATH]\n");
    process.exit(2);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const now = () => Number(process.hrtime.bigint()) / 1e9;
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const HINT_RE = /retry-after-ms=(\d+)$/;
// phoenix.js Socket: reconnectAfterMs(tries) = [10, 50, 100, 150, 200, 250, 500, 1000, 2000][tries - 1] || 5000
const PHOENIX_MS = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];

const require = createRequire(path.resolve(args.nodeModules) + "/");
const WS = require("ws");

/** Every socket of every client: [client, attempt, open, close, code, hint]. */
const sockets = [];
let openNow = 0;
let armed = false;
const closedSinceArm = new Set();
let settledSent = false;
const lib = { reconnecting: 0, hinted: 0, terminal: 0 };

function tracedFor(client) {
  // A WebSocket constructor per client: the instrument, invisible to the library.
  return class TracedWebSocket extends WS {
    constructor(url, protocols, options) {
      // --url-next: from "arm" on, new sockets go there (a load balancer that took the
      // draining proxy out of rotation), whatever URL the library asked for.
      const target = armed && args.urlNext ? args.urlNext : url;
      super(target, protocols, { perMessageDeflate: false, ...(options ?? {}) });
      const rec = [client.id, now(), null, null, null, null];
      sockets.push(rec);
      this.on("error", () => {}); // counted by its close (1006); never an uncaught 'error'
      this.on("open", () => {
        rec[2] = now();
        openNow += 1;
        client.onOpen();
      });
      this.on("close", (code, reason) => {
        rec[3] = now();
        rec[4] = code;
        const m = HINT_RE.exec(reason.toString());
        rec[5] = m ? Number(m[1]) : null;
        if (rec[2] !== null) {
          openNow -= 1;
          if (armed) closedSinceArm.add(client.id);
        }
        checkSettled();
      });
    }
  };
}

function checkSettled() {
  if (armed && !settledSent && closedSinceArm.size === args.count
      && openNow === args.count) {
    settledSent = true;
    emit({ event: "settled", t: now() });
  }
}

async function makeClient(id) {
  const client = { id, everOpened: false, lib: null, onOpen: () => {} };
  const WebSocket = tracedFor(client);
  client.onOpen = () => {
    if (!client.everOpened) {
      client.everOpened = true;
      initialOpened(client);
    }
    checkSettled();
  };
  if (args.timing === "js") {
    const mod = await import(pathToFileURL(path.resolve(args.clientModule)).href);
    const c = new mod.WsproxyClient(args.url, { WebSocket });
    c.addEventListener("reconnecting", (e) => {
      lib.reconnecting += 1;
      if (e.hinted) lib.hinted += 1;
    });
    c.addEventListener("terminal", () => { lib.terminal += 1; });
    client.stop = () => c.close(1000, "bench done");
  } else if (args.timing === "rws") {
    // A module URL of its own: its own DEFAULT.minReconnectionDelay, as in its own page.
    const file = path.resolve(args.nodeModules,
                              "reconnecting-websocket/dist/reconnecting-websocket-mjs.js");
    const mod = await import(`${pathToFileURL(file).href}?page=${id}`);
    const RWS = mod.default;
    const c = new RWS(args.url, undefined, { WebSocket });
    c.addEventListener("error", () => {});
    client.stop = () => c.close(1000, "bench done");
  } else {
    let tries = 0;
    let ws = null;
    let timer = null;
    let stopped = false;
    const connect = () => {
      timer = null;
      if (stopped) return;
      ws = new WebSocket(args.url);
      ws.addEventListener("open", () => { tries = 0; });
      ws.addEventListener("close", () => {
        if (stopped) return;
        tries += 1;
        timer = setTimeout(connect, PHOENIX_MS[tries - 1] ?? 5000);
      });
    };
    connect();
    client.stop = () => {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      if (ws !== null && ws.readyState <= 1) ws.close(1000, "bench done");
    };
  }
  return client;
}

// The first connects, at most --concurrency handshakes in flight.
const clients = [];
let created = 0;
let inflight = 0;
let opened = 0;
let connectedSent = false;

function initialOpened() {
  opened += 1;
  inflight -= 1;
  if (opened === args.count && !connectedSent) {
    connectedSent = true;
    emit({ event: "connected", clients: opened, of: args.count, t: now() });
  }
  pump();
}

function pump() {
  while (created < args.count && inflight < args.concurrency) {
    const id = created++;
    inflight += 1;
    makeClient(id).then((c) => { clients[id] = c; }, (err) => {
      emit({ event: "error", error: String(err && err.stack || err) });
      process.exit(1);
    });
  }
}

const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

let finished = false;
async function finish(why) {
  if (finished) return;
  finished = true;
  for (const c of clients) if (c && c.stop) c.stop();
  // Wait (bounded) for the sockets to close, so the proxy sees clean closes.
  const until = now() + 5;
  while (openNow > 0 && now() < until) await new Promise((r) => setTimeout(r, 20));
  const ms = (ns) => Math.round(ns / 1e4) / 100;
  emit({
    event: "result", why, timing: args.timing, count: args.count, created,
    opened_initially: opened, open_at_stop: openNow, lib,
    loop_delay_ms: { p50: ms(loopDelay.percentile(50)), p99: ms(loopDelay.percentile(99)),
                     max: ms(loopDelay.max) },
    sockets,
  });
  process.exit(0);
}

createInterface({ input: process.stdin }).on("line", (line) => {
  const word = line.trim().split(/\s+/)[0];
  if (word === "arm") {
    armed = true;
    closedSinceArm.clear();
    loopDelay.reset();
  } else if (word === "stop") {
    finish("stop");
  }
}).on("close", () => finish("stdin closed"));

setTimeout(() => finish("max-seconds"), args.maxSeconds * 1000).unref();
setTimeout(() => {
  if (!connectedSent) emit({ event: "connected", clients: opened, of: args.count, t: now() });
  connectedSent = true;
}, 60000).unref();
pump();
