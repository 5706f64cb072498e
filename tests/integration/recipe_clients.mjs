// Runs one client recipe of clients/README.md in Node and reports what its client does
// (tests/integration/test_client_recipes.py).
//
//   node recipe_clients.mjs KIND RECIPE_FILE URL     KIND: graphql-ws | socket.io | phoenix | signalr
//
// RECIPE_FILE is the recipe's block, extracted from the README as it stands, as a module
// exporting connect(url). recipe_watch.mjs watches the client it returns; each report is
// one JSON line with t, this process's clock in ms. Besides those:
//   {"event": "timer", "ms", "t"}             a timer was set to fire in ms
// It runs until it is stopped (SIGTERM).
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import { watch } from "./recipe_watch.mjs";

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
await watch(kind, connect, url, say);
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
