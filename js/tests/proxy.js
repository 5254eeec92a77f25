// A fault-injecting HTTP proxy between the browser and the real example server, so tests
// can answer 503/403/422, hold a request mid-flight, cut connections, count event
// streams, and survive a server restart on a new port — without test code in the app.
import http from "node:http";

export async function startProxy(target) {
  const state = {
    // e.g. "http://127.0.0.1:4567"; a list is served in turn, one request each (a load
    // balancer in front of several instances).
    target,
    turn: 0,
    rules: [], // { match(req) -> bool, respond(req, res) -> true if handled, once }
    log: [], // every request: { method, url, headers, body (a Buffer), status }
    openStreams: 0,
    sockets: new Set(),
  };
  const server = http.createServer(async (req, res) => {
    const entry = { method: req.method, url: req.url, headers: req.headers, body: null, status: null };
    req.logEntry = entry;
    state.log.push(entry);
    // The body is read whole first, so the log has it and a held request can be
    // forwarded later (`req.body`).
    const chunks = [];
    try {
      for await (const chunk of req) chunks.push(chunk);
    } catch {
      return res.destroy();
    }
    req.body = entry.body = Buffer.concat(chunks);
    const rule = state.rules.find((r) => r.match(req));
    if (rule) {
      if (rule.once) state.rules.splice(state.rules.indexOf(rule), 1);
      if (rule.respond(req, res)) return;
    }
    forward(req, res);
  });
  server.on("connection", (socket) => {
    state.sockets.add(socket);
    socket.on("close", () => state.sockets.delete(socket));
  });

  function forward(req, res) {
    const target = Array.isArray(state.target) ? state.target[state.turn++ % state.target.length] : state.target;
    if (req.logEntry) req.logEntry.target = target;
    const url = new URL(req.url, target);
    const upstream = http.request(url, { method: req.method, headers: req.headers }, (up) => {
      const stream = req.url.includes("/api/sync/events");
      if (stream) {
        state.openStreams++;
        res.on("close", () => state.openStreams--);
      }
      if (req.logEntry) req.logEntry.status = up.statusCode;
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    upstream.on("error", () => res.destroy()); // server down: the browser sees a network error
    upstream.end(req.body);
    res.on("close", () => upstream.destroy());
  }

  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    base,
    state,
    forward,
    /** Adds a rule; returns it so a test can remove it. */
    rule(rule) {
      state.rules.push(rule);
      return rule;
    },
    clearRules() {
      state.rules.length = 0;
    },
    /** Requests seen matching `pred`. */
    seen(pred) {
      return state.log.filter(pred);
    },
    /** Drops every open connection (e.g. the event stream). */
    dropConnections() {
      for (const s of state.sockets) s.destroy();
    },
    async close() {
      this.dropConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Answers with a fixed status and body. */
export const answer = (status, body = "", headers = {}) => (req, res) => {
  req.resume();
  res.writeHead(status, { "Content-Type": "text/plain", ...headers });
  res.end(body);
  return true;
};

/** Kills the connection without an answer: the browser sees a network error. */
export const cut = () => (req, res) => {
  req.socket.destroy();
  return true;
};

/** Holds matching requests until `release()`; `arrived` resolves with the first one. */
export function holder() {
  let arrive;
  const arrived = new Promise((r) => (arrive = r));
  const waiting = [];
  return {
    arrived,
    respond(forward) {
      return (req, res) => {
        waiting.push(() => forward(req, res));
        arrive(req);
        return true;
      };
    },
    release() {
      for (const go of waiting.splice(0)) go();
    },
  };
}
