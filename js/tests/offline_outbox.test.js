// The durable outbox: writes made offline (or failing on the network) are kept in
// IndexedDB and replayed in order, exactly once, by one tab.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freshWorldPerTest, dbTodos, eventually, postForm } from "./harness.js";
import { answer, cut, holder } from "./proxy.js";
import { openApp, events, addTodo, inject, plainForm, waitPending } from "./app.js";

const w = freshWorldPerTest();

const replays = () => w.proxy.seen((r) => r.headers["x-rhtmx-replay"] === "1");
const rows = () => dbTodos(w.server.dbPath);

test("offline submit: queued, shown as pending, exactly one row after reconnect", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "written offline");
  await waitPending(page, 1);
  assert.equal(await page.getAttribute("html", "data-rhtmx-pending-count"), "1");
  assert.ok(await page.evaluate(() => document.documentElement.classList.contains("rhtmx-pending")));
  assert.ok(await page.evaluate(() => document.documentElement.classList.contains("rhtmx-offline")));
  assert.equal((await events(page, "queued")).length, 1);
  assert.deepEqual(rows(), []);

  await w.context.setOffline(false);
  await waitPending(page, 0);
  const stored = rows();
  assert.equal(stored.length, 1);
  assert.equal(stored[0].title, "written offline");
  assert.equal((await events(page, "replayed")).length, 1);
  // The list refreshes from the server's change event.
  await page.waitForSelector('li.todo input[value="written offline"]');
  assert.ok(!(await page.evaluate(() => document.documentElement.classList.contains("rhtmx-pending"))));
});

test("mixed POST/PUT/DELETE are replayed in order, DELETE parameters in the query string", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await addTodo(page, "alpha");
  await eventually(() => rows().length === 1, { what: "the first row" });
  await addTodo(page, "beta");
  await eventually(() => rows().length === 2, { what: "two rows" });
  await page.waitForSelector('li.todo input[value="beta"]');
  const [a, b] = rows();

  await w.context.setOffline(true);
  await page.fill(`li[data-id="${a.id}"] form.rename input`, "alpha renamed");
  await page.press(`li[data-id="${a.id}"] form.rename input`, "Enter");
  await waitPending(page, 1);
  await inject(page, `<button id="del-b" hx-delete="/todos/${b.id}" hx-vals='{"reason": "done"}' hx-swap="none">x</button>`);
  await page.click("#del-b");
  await waitPending(page, 2);
  await addTodo(page, "gamma");
  await waitPending(page, 3);
  await page.click(`li[data-id="${a.id}"] button.toggle`);
  await waitPending(page, 4);

  await w.context.setOffline(false);
  await waitPending(page, 0);
  const sent = replays().map((r) => `${r.method} ${r.url}`);
  assert.deepEqual(sent.map((s) => s.split(" ")[0]), ["PUT", "DELETE", "POST", "POST"]);
  assert.equal(sent[1], `DELETE /todos/${b.id}?reason=done`);
  const final = rows();
  assert.deepEqual(final.map((r) => [r.title, r.completed]), [["alpha renamed", true], ["gamma", false]]);
});

test("a network error while navigator.onLine is true queues the write with the same key", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await inject(page, plainForm("f", "flaky network"));
  // Every direct attempt dies (Chromium itself retries a POST once on a reset
  // keep-alive connection); the client's replay is let through.
  w.proxy.rule({
    match: (r) => r.method === "POST" && r.url === "/todos" && !r.headers["x-rhtmx-replay"],
    respond: cut(),
  });
  await page.click("#f button");
  await eventually(() => rows().length === 1, { what: "the replayed row" });
  await waitPending(page, 0);
  assert.equal((await events(page, "queued")).length, 1);
  const attempts = w.proxy.seen((r) => r.method === "POST" && r.url === "/todos");
  assert.ok(attempts.length >= 2);
  const key = attempts[0].headers["idempotency-key"];
  assert.ok(key);
  assert.ok(attempts.every((a) => a.headers["idempotency-key"] === key), "one key for every attempt");
  assert.equal(replays().length, 1);
});

test("a lost response is replayed and applied once (the idempotency key)", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await inject(page, plainForm("f", "response lost"));
  // The server applies the request, but the browser never hears back.
  w.proxy.rule({
    match: (r) => r.method === "POST" && r.url === "/todos" && !r.headers["x-rhtmx-replay"],
    respond: (req, res) => {
      res.writeHead = () => res; // swallow, then cut once the server has answered
      res.end = () => req.socket.destroy();
      res.write = () => true;
      w.proxy.forward(req, res);
      return true;
    },
  });
  await page.click("#f button");
  await eventually(() => replays().length >= 1, { what: "a replay" });
  await waitPending(page, 0);
  assert.equal(rows().length, 1, "exactly one row");
  const last = replays().at(-1);
  assert.equal(last.headers["idempotency-key"], w.proxy.seen((r) => r.method === "POST")[0].headers["idempotency-key"]);
});

test("503 then 200: kept, retried with backoff honouring Retry-After", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "retry me");
  await waitPending(page, 1);
  w.proxy.rule({
    match: (r) => r.headers["x-rhtmx-replay"] === "1",
    once: true,
    respond: answer(503, "busy", { "Retry-After": "1" }),
  });
  await w.context.setOffline(false);
  await waitPending(page, 0);
  const tries = replays();
  assert.equal(tries.length, 2);
  assert.equal(tries[0].headers["idempotency-key"], tries[1].headers["idempotency-key"]);
  assert.equal(rows().length, 1);
});

test("422 goes to the dead letters with an event and the queue continues", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "   "); // the server refuses a blank title
  await addTodo(page, "fine");
  await waitPending(page, 2);
  await w.context.setOffline(false);
  await waitPending(page, 0);
  const rejected = await events(page, "rejected");
  assert.equal(rejected.length, 1);
  assert.equal(rejected[0].detail.status, 422);
  const dead = await page.evaluate(() => RhtmxSync.deadLetters());
  assert.equal(dead.length, 1);
  assert.equal(dead[0].status, 422);
  assert.deepEqual(rows().map((r) => r.title), ["fine"]);
  // The page lists it with its reason, and the user can discard it.
  await page.waitForSelector("#rejected-panel:not([hidden])");
  assert.match(await page.textContent("#rejected-list"), /refused \(422\)/);
  await page.click("#rejected-list button:has-text('Discard')");
  await page.waitForSelector("#rejected-panel[hidden]", { state: "attached" });
  assert.equal((await page.evaluate(() => RhtmxSync.deadLetters())).length, 0);
});

test("403 pauses the queue until the token is refreshed, then replays with the new token", async () => {
  let token = "fresh";
  w.proxy.rule({
    match: (r) => r.headers["x-rhtmx-replay"] === "1" && r.headers["x-csrf-token"] !== token,
    respond: answer(403, "bad token"),
  });
  const page = await openApp(w.context, w.proxy.base);
  await page.evaluate(() => {
    const meta = document.createElement("meta");
    meta.name = "csrf-token";
    meta.content = "stale";
    document.head.append(meta);
  });
  await w.context.setOffline(true);
  await addTodo(page, "one");
  await addTodo(page, "two");
  await waitPending(page, 2);
  await w.context.setOffline(false);
  await page.waitForFunction(() => window.__events.some((e) => e.name === "auth-required"));
  assert.equal(replays().length, 1, "paused after the first refusal");
  // Nudging the queue with the same token sends nothing.
  await page.evaluate(() => document.dispatchEvent(new Event("visibilitychange")));
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 2);
  assert.equal(replays().length, 1);

  await page.evaluate(() => (document.querySelector('meta[name="csrf-token"]').content = "fresh"));
  await page.evaluate(() => document.dispatchEvent(new Event("visibilitychange")));
  await waitPending(page, 0);
  assert.deepEqual(rows().map((r) => r.title).sort(), ["one", "two"]);
  assert.ok(replays().slice(1).every((r) => r.headers["x-csrf-token"] === "fresh"));
});

test("a replay answered with HX-Location to a login page waits for the login and is not lost", async () => {
  let loggedIn = false;
  for (const location of ['{"path": "/login?next=/todos", "target": "body"}', "/sign-in"]) {
    w.proxy.rule({
      match: (r) => r.headers["x-rhtmx-replay"] === "1" && !loggedIn && r.url.includes("/todos"),
      once: true,
      respond: answer(200, "", { "HX-Location": location }),
    });
  }
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "kept through a login");
  await waitPending(page, 1);
  await w.context.setOffline(false);
  await page.waitForFunction(() => window.__events.some((e) => e.name === "auth-required"));
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 1, "still queued");
  assert.deepEqual(rows(), []);
  // Once more with the plain-path form, then the user logs in.
  await page.evaluate(() => RhtmxSync.replay());
  await page.waitForFunction(() => window.__events.filter((e) => e.name === "auth-required").length >= 2);
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 1, "still queued");
  loggedIn = true;
  await page.evaluate(() => RhtmxSync.replay());
  await waitPending(page, 0);
  assert.deepEqual(rows().map((r) => r.title), ["kept through a login"]);
});

test("page closed mid-replay and reopened: one row", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await inject(page, plainForm("f", "survives a closed tab"));
  await w.context.setOffline(true);
  await page.click("#f button");
  await waitPending(page, 1);
  const hold = holder();
  w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1", once: true, respond: hold.respond(w.proxy.forward) });
  await w.context.setOffline(false);
  await hold.arrived;
  await page.close(); // mid-replay: the request is in flight
  hold.release(); // ...and reaches the server after all
  const again = await openApp(w.context, w.proxy.base);
  // `pendingCount` reads 0 until the reopened page has counted its outbox: wait for
  // the write itself first, then for the queue to be empty.
  await eventually(() => rows().length === 1, { what: "the queued write reached the table" });
  await waitPending(again, 0).catch(async (e) => {
    console.log("DEBUG", JSON.stringify({
      state: await again.evaluate(() => [RhtmxSync.isLeader, RhtmxSync.pendingCount, window.__events.map((x) => x.name)]),
      log: w.proxy.state.log.filter((r) => r.method === "POST").map((r) => `${r.method} ${r.url} ${r.status} ${r.headers["idempotency-key"]}`),
    }));
    throw e;
  });
  assert.equal(rows().length, 1);
  const keys = new Set(replays().map((r) => r.headers["idempotency-key"]));
  assert.equal(keys.size, 1, "every attempt used the same key");
});

test("server killed with SIGKILL mid-replay and restarted: one row each", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  for (const title of ["k1", "k2", "k3"]) {
    await inject(page, plainForm("f-" + title, title));
    await page.click(`#f-${title} button`);
  }
  await waitPending(page, 3);
  const hold = holder();
  w.proxy.rule({
    match: (r) => r.headers["x-rhtmx-replay"] === "1" && w.proxy.seen((x) => x.headers["x-rhtmx-replay"] === "1").length === 2,
    once: true,
    respond: hold.respond(w.proxy.forward),
  });
  await w.context.setOffline(false);
  await hold.arrived;
  await w.server.kill();
  const restarted = await w.server.restart();
  w.proxy.state.target = restarted.base;
  hold.release();
  try {
    await waitPending(page, 0);
    assert.deepEqual(rows().map((r) => r.title).sort(), ["k1", "k2", "k3"]);
  } finally {
    await restarted.kill();
  }
});

test("entries past the retention period become dead letters with an event, never silently", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "too old");
  await waitPending(page, 1);
  // Age the entry by eight days, straight in IndexedDB (the default retention is seven).
  await page.evaluate(async () => {
    const db = await new Promise((ok, fail) => {
      const r = indexedDB.open("rhtmx-sync");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
    });
    const tx = db.transaction("_pending", "readwrite");
    const store = tx.objectStore("_pending");
    const all = await new Promise((ok) => (store.getAll().onsuccess = (e) => ok(e.target.result)));
    for (const entry of all) store.put({ ...entry, created: entry.created - 8 * 864e5 });
    await new Promise((ok) => (tx.oncomplete = ok));
    db.close();
  });
  await w.context.setOffline(false);
  await waitPending(page, 0);
  const rejected = await events(page, "rejected");
  assert.equal(rejected.length, 1);
  assert.equal(rejected[0].detail.reason, "expired");
  assert.equal((await page.evaluate(() => RhtmxSync.deadLetters())).length, 1);
  assert.deepEqual(rows(), []);
  assert.equal(replays().length, 0, "an expired entry is not sent");
});

test("a multipart form with a file is stored with its Blob and replayed intact", async () => {
  const page = await openApp(w.context, w.proxy.base);
  let received = null;
  w.proxy.rule({
    match: (r) => r.url === "/upload" && r.headers["x-rhtmx-replay"] === "1",
    respond: (req, res) => {
      received = { type: req.headers["content-type"], body: req.body };
      res.writeHead(200);
      res.end("ok");
      return true;
    },
  });
  await inject(page, `<form id="up" hx-post="/upload" hx-encoding="multipart/form-data" hx-swap="none">
      <input name="note" value="with a file"><input type="file" name="doc"><button>send</button></form>`);
  await page.setInputFiles("#up input[type=file]", {
    name: "hello.txt",
    mimeType: "text/plain",
    buffer: Buffer.from("file contents ✓"),
  });
  await w.context.setOffline(true);
  await page.click("#up button");
  await waitPending(page, 1);
  const kept = await page.evaluate(async () => {
    const [entry] = await RhtmxSync.pending();
    return { form: entry.form, file: entry.body.find(([k]) => k === "doc")[1] instanceof File };
  });
  assert.deepEqual(kept, { form: true, file: true });
  await w.context.setOffline(false);
  await waitPending(page, 0);
  assert.match(received.type, /^multipart\/form-data; boundary=/);
  const text = received.body.toString("utf8");
  assert.ok(text.includes('name="note"') && text.includes("with a file"), text);
  assert.ok(text.includes('filename="hello.txt"'), text);
  assert.ok(text.includes("file contents ✓"), text);
});

test("online/offline events fire, and data-rhtmx-offline=\"false\" writes are never queued", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await inject(page, `<form id="direct" hx-post="/todos" hx-swap="none" data-rhtmx-offline="false">
      <input name="title" value="direct only"><button>go</button></form>`);
  // htmx 2 names a network failure `htmx:sendError`, htmx 4 `htmx:error`.
  await page.evaluate(() => {
    for (const name of ["htmx:sendError", "htmx:error"]) document.body.addEventListener(name, () => (window.__sendError = true));
  });
  await w.context.setOffline(true);
  await page.waitForFunction(() => window.__events.some((e) => e.name === "offline"));
  await page.click("#direct button");
  await page.waitForFunction(() => window.__sendError === true);
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 0);
  assert.equal((await events(page, "queued")).length, 0);
  await w.context.setOffline(false);
  await page.waitForFunction(() => window.__events.some((e) => e.name === "online"));
  assert.ok(!(await page.evaluate(() => document.documentElement.classList.contains("rhtmx-offline"))));
  assert.deepEqual(rows(), []);
});

test("data-rhtmx-offline=\"false\" writes are sent without an Idempotency-Key, others with one", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await inject(page, `<form id="own" hx-post="/todos" hx-swap="none" data-rhtmx-offline="false">
      <input name="title" value="opted out"><button>go</button></form>
    <div data-rhtmx-offline="false"><form id="inherited" hx-post="/todos" hx-swap="none">
      <input name="title" value="opted out by an ancestor"><button>go</button></form></div>
    <form id="keyed" hx-post="/todos" hx-swap="none">
      <input name="title" value="keyed"><button>go</button></form>`);
  for (const id of ["own", "inherited", "keyed"]) {
    await page.click(`#${id} button`);
    await eventually(() => rows().length === ["own", "inherited", "keyed"].indexOf(id) + 1, { what: id });
  }
  const posts = w.proxy.seen((r) => r.method === "POST" && r.url === "/todos");
  assert.equal(posts.length, 3);
  assert.deepEqual(posts.map((r) => "idempotency-key" in r.headers), [false, false, true]);
});

test("a write carries when the user acted (kept for the replay) and the row version the page showed", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await inject(page, `<div data-rhtmx-version="42"><form id="v" hx-post="/todos" hx-swap="none">
      <input name="title" value="versioned"><button>go</button></form></div>`);
  await w.context.setOffline(true);
  const before = await page.evaluate(() => RhtmxSync.hlc());
  await page.click("#v button");
  await waitPending(page, 1);
  const between = await page.evaluate(() => RhtmxSync.hlc());
  await w.context.setOffline(false);
  await waitPending(page, 0);
  const [sent] = replays();
  assert.equal(sent.headers["x-rhtmx-base-version"], "42");
  const hlc = sent.headers["x-rhtmx-hlc"];
  assert.match(hlc, /^\d{15}-\d{5}-[0-9a-f]{16}$/);
  assert.ok(before < hlc && hlc < between, `${before} < ${hlc} < ${between}: stamped when submitted, not replayed`);
});

test("an online write the server refuses (422) swaps nothing: the list and the form stay", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await addTodo(page, "kept");
  await page.waitForSelector('li.todo input[value="kept"]');
  await page.fill("#new-todo input[name=title]", "x".repeat(501)); // too long: 422
  await page.click("#new-todo button");
  await eventually(() => w.proxy.seen((r) => r.method === "POST" && r.status === 422).length === 1, { what: "the 422" });
  await addTodo(page, "after the refusal");
  await page.waitForSelector('li.todo input[value="after the refusal"]');
  assert.equal(await page.locator("#todo-list").count(), 1);
  assert.equal(await page.locator("#new-todo").count(), 1);
  assert.deepEqual(rows().map((r) => r.title).sort(), ["after the refusal", "kept"]);
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 0);
});

test("on an empty log the first pull still gives the stream its resume point: one pull, not two", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await page.waitForFunction(() => RhtmxSync.connection === "open");
  const streams = w.proxy.seen((r) => r.url.startsWith("/api/sync/events"));
  assert.equal(streams.length, 1);
  assert.match(streams[0].url, /last_event_id=0\./, "resumes from the empty log's head");
  // A write made now comes as its event (with its id), never through a second pull.
  await postForm(w.server.base, "/todos", { id: "0192f0a0-0000-7000-8000-00000000beef", title: "live" });
  await page.waitForFunction(() => window.__changes.length > 0);
  assert.equal((await page.evaluate(() => window.__changes))[0].id, "0192f0a0-0000-7000-8000-00000000beef");
  assert.equal(w.proxy.seen((r) => r.url.startsWith("/api/sync/todos?")).length, 1);
});
