// Backends for the client recipes of clients/README.md (tests/integration/test_client_recipes.py).
//
//   node recipe_servers.mjs KIND NAME       KIND: graphql-ws | socket.io | phoenix | signalr
//
// Listens on 127.0.0.1, port 0, and prints one JSON line per thing that happens: first
// {"event": "listening", "port": N}, then {"event": "connect"} for every WebSocket session
// that opened and {"event": "disconnect"} when it ended (each with the backend's NAME).
//
// graphql-ws and socket.io are the real servers (npm: graphql-ws + graphql + ws, socket.io).
// Phoenix and SignalR have no server on npm: these are stand-ins that speak just enough of
// the protocol for the real client (npm: phoenix, @microsoft/signalr) to connect and stay
// connected — Phoenix's V2 JSON serializer ([join_ref, ref, topic, event, payload]: every
// heartbeat and channel join is answered "ok"), and SignalR's JSON hub protocol over
// WebSockets without negotiation (the handshake {"protocol":"json","version":1}\x1e is
// answered {}\x1e; a ping {"type":6}\x1e every 5 s keeps the client's server timeout off).
// Both name the backend to the client: Phoenix in the reply to a join, SignalR by invoking
// the client method "whoami" with NAME. Modules come from $WSPROXY_NODE_DIR/node_modules.
import { createServer } from "node:http";
import { createRequire } from "node:module";
import path from "node:path";

const nodeDir = process.env.WSPROXY_NODE_DIR || "/tmp/wsproxy-node";
const require = createRequire(path.join(nodeDir, "node_modules", "x.js"));

const [kind, name = "backend"] = process.argv.slice(2);
const say = (record) => process.stdout.write(JSON.stringify({ name, ...record }) + "\n");
const http = createServer();
const RS = "\x1e";

function wsServer() {
  const { WebSocketServer } = require("ws");
  return new WebSocketServer({ server: http });
}

function session(ws) {
  say({ event: "connect" });
  ws.on("close", (code) => say({ event: "disconnect", code }));
}

if (kind === "graphql-ws") {
  const { useServer } = require("graphql-ws/use/ws");
  const { buildSchema } = require("graphql");
  const schema = buildSchema("type Query { whoami: String } type Subscription { whoami: String }");
  const roots = {
    query: { whoami: () => name },
    subscription: {
      // The backend's name once, then nothing until the client goes.
      async *whoami() { yield { whoami: name }; await new Promise(() => {}); },
    },
  };
  const wss = wsServer();
  wss.on("connection", session);
  useServer({ schema, roots }, wss);
} else if (kind === "socket.io") {
  const { Server } = require("socket.io");
  const io = new Server(http, { transports: ["websocket"] });
  io.on("connection", (socket) => {
    say({ event: "connect" });
    socket.emit("whoami", name);
    socket.on("disconnect", (reason) => say({ event: "disconnect", reason }));
  });
} else if (kind === "phoenix") {
  wsServer().on("connection", (ws) => {
    session(ws);
    ws.on("message", (data) => {
      const [joinRef, ref, topic, event] = JSON.parse(data.toString());
      if (event === "heartbeat" || event === "phx_join") {
        const response = event === "phx_join" ? { backend: name } : {};
        ws.send(JSON.stringify([joinRef, ref, topic, "phx_reply", { status: "ok", response }]));
      }
    });
  });
} else if (kind === "signalr") {
  wsServer().on("connection", (ws) => {
    session(ws);
    let handshaken = false;
    const ping = setInterval(() => ws.send(JSON.stringify({ type: 6 }) + RS), 5000);
    ws.on("close", () => clearInterval(ping));
    ws.on("message", (data) => {
      if (handshaken) return; // pings and invocations: nothing to answer
      const handshake = JSON.parse(data.toString().split(RS)[0]);
      if (handshake.protocol !== "json") {
        ws.send(JSON.stringify({ error: `protocol ${handshake.protocol} not supported` }) + RS);
        ws.close(1002);
        return;
      }
      handshaken = true;
      ws.send("{}" + RS);
      ws.send(JSON.stringify({ type: 1, target: "whoami", arguments: [name] }) + RS);
    });
  });
} else {
  process.stderr.write(`usage: recipe_servers.mjs graphql-ws|socket.io|phoenix|signalr NAME\n`);
  process.exit(2);
}

http.listen(0, "127.0.0.1", () => say({ event: "listening", port: http.address().port }));
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
