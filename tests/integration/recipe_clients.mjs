// Runs one client recipe of clients/README.md and reports what its client does
// (tests/integration/test_client_recipes.py).
//
//   node recipe_clients.mjs KIND RECIPE_FILE URL     KIND: graphql-ws | socket.io | phoenix | signalr
//
// RECIPE_FILE is the recipe's block, extracted from the README as it stands, as a module
// exporting connect(url). This script only watches the client it returns, through the
// library's own events, and prints one JSON line each (t: this process's clock, in ms):
//   {"event": "open", "backend": NAME, "t"}   the client is (again) connected, to NAME
//   {"event": "close", "code", "reason", "t"} the connection closed, as the library saw it
//   {"event": "terminal", "t"}                the library (as the recipe set it) gave up
//   {"event": "timer", "ms", "t"}             a timer was set to fire in ms
// It runs until it is stopped (SIGTERM).
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";

const [kind, recipeFile, url] = process.argv.slice(2);
const say = (record) =>
  process.stdout.write(JSON.stringify({ ...record, t: performance.now() }) + "\n");
// Every timer set (with a delay), before the recipe and its library are loaded (socket.io
// keeps the setTimeout it found then): the test looks for the one its reconnect waited on.
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = function setTimeout(callback, ms, ...rest) {
  if (ms > 0) say({ event: "timer", ms });
  return realSetTimeout(callback, ms, ...rest);
};
const { connect } = await import(pathToFileURL(recipeFile).href);

if (kind === "graphql-ws") {
  const client = connect(url);
  client.on("closed", (event) => say({ event: "close", code: event.code, reason: event.reason }));
  client.subscribe({ query: "subscription { whoami }" }, {
    next: ({ data }) => say({ event: "open", backend: data.whoami }),
    // The subscription errors out when the client stops retrying.
    error: () => say({ event: "terminal" }),
    complete: () => say({ event: "terminal" }),
  });
} else if (kind === "socket.io") {
  const socket = connect(url);
  socket.on("whoami", (backend) => say({ event: "open", backend }));
  socket.on("disconnect", (why, details) => {
    const { code, reason } = details?.context ?? {};
    say({ event: "close", code, reason });
    // The recipe's listener runs after this one: look once it has.
    setImmediate(() => { if (!socket.io.reconnection()) say({ event: "terminal" }); });
  });
} else if (kind === "phoenix") {
  const socket = connect(url);
  socket.onClose(({ code, reason }) => {
    say({ event: "close", code, reason });
    if (socket.closeWasClean) say({ event: "terminal" }); // the recipe called disconnect()
  });
  // The backend names itself in its answer to a join (which Phoenix repeats on each reconnect).
  socket.channel("recipe:whoami").join().receive("ok", ({ backend }) => say({ event: "open", backend }));
} else if (kind === "signalr") {
  const connection = connect(url);
  connection.on("whoami", (backend) => say({ event: "open", backend }));
  connection.onreconnecting((error) => {
    const message = error?.message ?? "";
    const [, code, reason] = /status code: (\d+) \((.*)\)\.$/.exec(message) ?? [];
    say({ event: "close", code: code === undefined ? null : Number(code), reason, message });
  });
  connection.onclose((error) => {
    const [, code, reason] = /status code: (\d+) \((.*)\)\.$/.exec(error?.message ?? "") ?? [];
    say({ event: "close", code: code === undefined ? null : Number(code), reason });
    say({ event: "terminal" });
  });
  await connection.start();
} else {
  process.stderr.write(`unknown kind ${kind}\n`);
  process.exit(2);
}
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
