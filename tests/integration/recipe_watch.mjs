// How the recipe tests watch a recipe's client, in Node (recipe_clients.mjs) and in
// Chromium (recipe_browser.mjs) alike: through the library's own events only.
//
// watch(kind, connect, url, say): connect is the recipe's export; say(record) reports
//   {"event": "open", "backend": NAME}    the client is (again) connected, to NAME
//   {"event": "close", "code", "reason"}  the connection closed, as the library saw it
//   {"event": "terminal"}                 the library (as the recipe set it) gave up
// (the caller adds the time). No imports: this file runs in a page as it is.

const signalrClose = (error) => {
  const [, code, reason] = /status code: (\d+) \((.*)\)\.$/.exec(error?.message ?? "") ?? [];
  return { code: code === undefined ? null : Number(code), reason: reason ?? null };
};

export async function watch(kind, connect, url, say) {
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
      setTimeout(() => { if (!socket.io.reconnection()) say({ event: "terminal" }); }, 0);
    });
  } else if (kind === "phoenix") {
    const socket = connect(url);
    socket.onClose(({ code, reason }) => {
      say({ event: "close", code, reason });
      if (socket.closeWasClean) say({ event: "terminal" }); // the recipe called disconnect()
    });
    // The backend names itself in its answer to a join (Phoenix joins again on each reconnect).
    socket.channel("recipe:whoami").join()
      .receive("ok", ({ backend }) => say({ event: "open", backend }));
  } else if (kind === "signalr") {
    const connection = connect(url);
    connection.on("whoami", (backend) => say({ event: "open", backend }));
    connection.onreconnecting((error) => say({ event: "close", ...signalrClose(error) }));
    connection.onclose((error) => {
      say({ event: "close", ...signalrClose(error) });
      say({ event: "terminal" });
    });
    await connection.start();
  } else {
    throw new Error(`unknown kind ${kind}`);
  }
}
