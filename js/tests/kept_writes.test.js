// A write is kept whatever answers it: a first attempt answered with a status the replay
// loop would retry is queued with its key; a replay redirected to a login on another
// origin waits for the login; a body built by an htmx extension is replayed byte for byte.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { freshWorldPerTest, dbTodos, eventually, HTMX } from "./harness.js";
import { answer, cut, holder } from "./proxy.js";
import { openApp, openRewritten, events, addTodo, inject, plainForm, waitPending } from "./app.js";

const w = freshWorldPerTest();
const require = createRequire(import.meta.url);

const replays = () => w.proxy.seen((r) => r.headers["x-rhtmx-replay"] === "1");
const firstAttempts = () => w.proxy.seen((r) => r.method === "POST" && r.url === "/todos" && !r.headers["x-rhtmx-replay"]);
const titles = () => dbTodos(w.server.dbPath).map((r) => r.title).sort();
const firstAttemptAnswered = (status, headers) => w.proxy.rule({
  match: (r) => r.method === "POST" && r.url === "/todos" && !r.headers["x-rhtmx-replay"],
  once: true,
  respond: answer(status, `answered ${status}`, headers),
});

test("an online write answered 502 is kept with its key, shown pending, and replayed once", async () => {
  const page = await openApp(w.context, w.proxy.base);
  firstAttemptAnswered(502);
  const held = holder();
  w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1", once: true, respond: held.respond(w.proxy.forward) });
  await addTodo(page, "kept through a 502");
  await held.arrived;
  // While the replay is on its way the user sees the write waiting, in words.
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 1);
  await page.waitForSelector("[data-rhtmx-pending-list] li:has-text('kept through a 502')");
  held.release();
  await waitPending(page, 0);
  assert.deepEqual(titles(), ["kept through a 502"]);
  assert.equal(replays().length, 1);
  assert.equal(replays()[0].headers["idempotency-key"], firstAttempts()[0].headers["idempotency-key"]);
  assert.equal((await events(page, "queued")).length, 1);
});

test("every status the replay loop retries is kept on a first attempt; a final refusal is not", async () => {
  const page = await openApp(w.context, w.proxy.base);
  const kept = [
    // (Not 408: Chromium itself sends the request again on a 408.)
    [500, {}], [503, { "Retry-After": "0" }], [504, {}], [425, {}], [429, {}],
    [409, { "Retry-After": "0" }],
  ];
  for (const [status, headers] of kept) {
    firstAttemptAnswered(status, headers);
    await addTodo(page, `answered ${status}`);
    await eventually(() => titles().includes(`answered ${status}`), { what: `the write answered ${status}` });
  }
  await waitPending(page, 0);
  assert.equal(replays().length, kept.length);
  // 422 is the server's final word: not queued, not replayed, nothing written.
  firstAttemptAnswered(422);
  const tried = firstAttempts().length;
  await page.fill("#new-todo input[name=title]", "refused for good");
  await page.click("#new-todo button");
  await eventually(() => firstAttempts().length === tried + 1, { what: "the refused attempt" });
  // Not kept, so not cleared: what the user typed is still there to correct.
  await page.waitForFunction(() => !document.querySelector("#new-todo").classList.contains("htmx-request"));
  assert.equal(await page.inputValue("#new-todo input[name=title]"), "refused for good");
  // A later write that goes through shows the refusal was handled before it.
  await addTodo(page, "after the refusal");
  await eventually(() => titles().includes("after the refusal"), { what: "the later write" });
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 0);
  assert.ok(!titles().includes("refused for good"));
  assert.equal(replays().length, kept.length);
  assert.equal((await events(page, "queued")).length, kept.length);
});

test("a first attempt answered 401 is kept and waits for a login", async () => {
  const page = await openApp(w.context, w.proxy.base);
  firstAttemptAnswered(401);
  let loggedIn = false;
  w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1" && !loggedIn, respond: answer(401, "log in") });
  await addTodo(page, "after the login");
  await page.waitForFunction(() => window.__events.some((e) => e.name === "auth-required"));
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 1);
  loggedIn = true;
  await page.evaluate(() => RhtmxSync.replay());
  await waitPending(page, 0);
  assert.deepEqual(titles(), ["after the login"]);
});

test("a replay redirected to a login on another origin pauses the queue instead of retrying", async () => {
  // The single-sign-on host: another origin, no CORS headers (as a real one).
  const sso = http.createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end("<form>log in</form>");
  });
  await new Promise((r) => sso.listen(0, "127.0.0.1", r));
  const ssoBase = `http://127.0.0.1:${sso.address().port}`;
  let loggedIn = false;
  w.proxy.rule({
    match: (r) => r.headers["x-rhtmx-replay"] === "1" && !loggedIn,
    respond: answer(302, "", { Location: `${ssoBase}/login?next=/todos` }),
  });
  try {
    const page = await openApp(w.context, w.proxy.base);
    await w.context.setOffline(true);
    await addTodo(page, "kept through a login elsewhere");
    await waitPending(page, 1);
    await w.context.setOffline(false);
    await page.waitForFunction(() => window.__events.some((e) => e.name === "auth-required"));
    const tried = replays().length;
    // Paused: a nudge sends nothing until the app says the user logged in again.
    await page.evaluate(() => document.dispatchEvent(new Event("visibilitychange")));
    await page.evaluate(() => new Promise((r) => setTimeout(r, 50)));
    assert.equal(replays().length, tried);
    assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 1);
    assert.deepEqual(titles(), []);
    loggedIn = true;
    await page.evaluate(() => RhtmxSync.replay());
    await waitPending(page, 0);
    assert.deepEqual(titles(), ["kept through a login elsewhere"]);
  } finally {
    sso.close();
  }
});

/** Loads a json-enc extension into the page (htmx 2's from npm; for htmx 4, which has
 *  none, the one an app writes), served from the app's origin as an app would (its CSP
 *  allows no inline script). */
async function withJsonEnc(page) {
  const source = HTMX.startsWith("4")
    ? readFileSync(new URL("./fixtures/json-enc-htmx4.js", import.meta.url))
    : readFileSync(require.resolve("htmx-ext-json-enc/json-enc.js"));
  w.proxy.rule({
    match: (r) => r.url === "/assets/json-enc.js",
    respond: answer(200, source, { "Content-Type": "text/javascript" }),
  });
  await page.addScriptTag({ url: "/assets/json-enc.js" });
}

const jsonForm = (id, title) =>
  `<form id="${id}" hx-post="/todos" hx-ext="json-enc" hx-swap="none">` +
  `<input name="title" value="${title}"><input name="tag" value="a"><input name="tag" value="b"><button>go</button></form>`;

test("a json-enc request cut on the network is replayed with the same body and content type", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await withJsonEnc(page);
  await inject(page, jsonForm("j", "as json"));
  w.proxy.rule({
    match: (r) => r.method === "POST" && r.url === "/todos" && !r.headers["x-rhtmx-replay"],
    respond: cut(),
  });
  await page.click("#j button");
  await eventually(() => replays().length >= 1, { what: "a replay" });
  const [first] = firstAttempts();
  const replay = replays()[0];
  assert.equal(first.headers["content-type"], "application/json");
  assert.deepEqual(JSON.parse(first.body.toString()), { title: "as json", tag: ["a", "b"] });
  assert.equal(replay.headers["content-type"], first.headers["content-type"]);
  assert.equal(replay.body.toString(), first.body.toString());
  assert.equal(replay.headers["idempotency-key"], first.headers["idempotency-key"]);
});

test("a json-enc request made offline is replayed as JSON, and a url-encoded one as a form", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await withJsonEnc(page);
  await inject(page, jsonForm("j", "offline json") + plainForm("f", "offline form"));
  await w.context.setOffline(true);
  await page.click("#j button");
  await waitPending(page, 1);
  await page.click("#f button");
  await waitPending(page, 2);
  await w.context.setOffline(false);
  await waitPending(page, 0);
  const [json, form] = replays();
  assert.equal(json.headers["content-type"], "application/json");
  assert.deepEqual(JSON.parse(json.body.toString()), { title: "offline json", tag: ["a", "b"] });
  assert.match(form.headers["content-type"], /^application\/x-www-form-urlencoded/);
  assert.equal(new URLSearchParams(form.body.toString()).get("title"), "offline form");
  assert.deepEqual(titles(), ["offline form"]); // the example takes forms only
});

test("a sign-in form is never queued behind the writes that wait for it, nor its password stored", async () => {
  let loggedIn = false;
  w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1" && !loggedIn, respond: answer(401, "log in") });
  w.proxy.rule({
    match: (r) => r.method === "POST" && r.url === "/login",
    respond: (req, res) => {
      loggedIn = true;
      return answer(200, "welcome")(req, res);
    },
  });
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "waits for the login");
  await waitPending(page, 1);
  await w.context.setOffline(false);
  await page.waitForFunction(() => window.__events.some((e) => e.name === "auth-required"));
  await inject(page, `<form id="login" hx-post="/login" hx-swap="none"><input name="user" value="alice">
    <input type="password" name="password" value="hunter2"><button>log in</button></form>`);
  await page.click("#login button");
  await eventually(() => loggedIn, { what: "the login to reach the app" });
  const stored = JSON.stringify(await page.evaluate(() => RhtmxSync.pending()));
  assert.ok(!stored.includes("hunter2"), "no password in the outbox");
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 1);
  assert.equal(w.proxy.seen((r) => r.url === "/login")[0].headers["idempotency-key"], undefined);
  await page.evaluate(() => RhtmxSync.replay());
  await waitPending(page, 0);
  assert.deepEqual(titles(), ["waits for the login"]);
});

test("a first attempt redirected to a login page is kept, and the login page is not swapped in", async () => {
  let loggedIn = false;
  w.proxy.rule({
    match: (r) => r.method === "POST" && r.url === "/todos" && !loggedIn,
    respond: answer(302, "", { Location: "/login?next=/" }),
  });
  w.proxy.rule({ match: (r) => r.url.startsWith("/login"), respond: answer(200, "<p id=login-page>log in</p>", { "Content-Type": "text/html" }) });
  const page = await openApp(w.context, w.proxy.base);
  await addTodo(page, "made before the session ran out");
  await page.waitForFunction(() => window.__events.some((e) => e.name === "auth-required"));
  assert.ok(await page.$("#todo-list"), "the list is still on the page");
  assert.equal(await page.$("#login-page"), null);
  assert.equal(await page.evaluate(() => RhtmxSync.pendingCount), 1);
  loggedIn = true;
  await page.evaluate(() => RhtmxSync.replay());
  await waitPending(page, 0);
  assert.deepEqual(titles(), ["made before the session ran out"]);
});

test("a replay that hangs is given up after data-replay-timeout and sent again, applied once", async () => {
  const held = holder();
  w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1", once: true, respond: held.respond(w.proxy.forward) });
  const page = await openRewritten(w.context, w.proxy.base, (html) => html.replace("data-sync-entities=", 'data-replay-timeout="1" data-sync-entities='));
  await w.context.setOffline(true);
  await addTodo(page, "sent while the first try hangs");
  await waitPending(page, 1);
  await w.context.setOffline(false);
  await held.arrived;
  await waitPending(page, 0);
  held.release(); // the hung first try arrives at last: the key makes it a no-op
  await eventually(() => w.proxy.seen((r) => r.headers["x-rhtmx-replay"] === "1" && r.status).length >= 2, { what: "both tries answered" });
  assert.deepEqual(titles(), ["sent while the first try hangs"]);
});

test("a refusal whose body is cut short is still a dead letter, and storage keeps working", async () => {
  w.proxy.rule({
    match: (r) => r.headers["x-rhtmx-replay"] === "1",
    once: true,
    respond: (req, res) => {
      res.writeHead(422, { "Content-Type": "text/plain", "Content-Length": "100" });
      res.write("title is ");
      setImmediate(() => req.socket.destroy());
      return true;
    },
  });
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "refused, answer cut");
  await addTodo(page, "next in line");
  await waitPending(page, 2);
  await w.context.setOffline(false);
  await waitPending(page, 0);
  const dead = await page.evaluate(() => RhtmxSync.deadLetters());
  assert.deepEqual(dead.map((d) => d.status), [422]);
  assert.deepEqual(titles(), ["next in line"]);
  assert.deepEqual(await events(page, "storage-error"), []);
});

test("a leader in a background tab paused for a login resumes when another tab has the new token", async () => {
  w.proxy.rule({
    match: (r) => r.headers["x-rhtmx-replay"] === "1" && r.headers["x-csrf-token"] !== "fresh",
    respond: answer(403, "bad token"),
  });
  const addToken = (p, token) => p.evaluate((t) => {
    const meta = document.createElement("meta");
    meta.name = "csrf-token";
    meta.content = t;
    document.head.append(meta);
  }, token);
  const background = await openApp(w.context, w.proxy.base);
  await addToken(background, "stale");
  const front = await openApp(w.context, w.proxy.base);
  assert.equal(await background.evaluate(() => RhtmxSync.isLeader), true);
  await w.context.setOffline(true);
  await addTodo(front, "waits for the new token");
  await waitPending(front, 1);
  await w.context.setOffline(false);
  await front.waitForFunction(() => window.__events.some((e) => e.name === "auth-required"));
  // The user logs in again in the front tab: its page has the new token.
  await addToken(front, "fresh");
  await front.evaluate(() => RhtmxSync.replay());
  await waitPending(front, 0);
  assert.deepEqual(titles(), ["waits for the new token"]);
});

test("a kept write that may have reached the server expires with the server's key; a retry sends it afresh", async () => {
  w.proxy.rule({
    match: (r) => r.method === "POST" && r.url === "/todos" && !r.headers["x-rhtmx-replay"],
    respond: cut(),
  });
  const busy = w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1", respond: answer(503, "busy", { "Retry-After": "1" }) });
  // The server forgets keys after 0.36 s here (data-key-retention-hours).
  const page = await openRewritten(w.context, w.proxy.base, (html) => html.replace("data-sync-entities=", 'data-key-retention-hours="0.0001" data-sync-entities='));
  await inject(page, plainForm("f", "sent once, answer lost"));
  await page.click("#f button");
  await page.waitForFunction(() => window.__events.some((e) => e.name === "rejected" && e.detail.reason === "expired"));
  const [dead] = await page.evaluate(() => RhtmxSync.deadLetters());
  assert.equal(typeof dead.attempted, "number");
  // The user decides to send it again: a new key, since the old one may be forgotten.
  w.proxy.state.rules.splice(w.proxy.state.rules.indexOf(busy), 1);
  await page.evaluate((seq) => RhtmxSync.retry(seq), dead.seq);
  await eventually(() => titles().length === 1, { what: "the retried write" });
  const keys = new Set(replays().map((r) => r.headers["idempotency-key"]));
  assert.equal(keys.size, 2);
  assert.deepEqual(titles(), ["sent once, answer lost"]);
});

test("a direct write answered 200 with HX-Redirect to a login is kept, then the login opens", async () => {
  let loggedIn = false;
  w.proxy.rule({
    match: (r) => r.method === "POST" && r.url === "/todos" && !loggedIn,
    respond: answer(200, "", { "HX-Redirect": "/login" }),
  });
  w.proxy.rule({ match: (r) => r.url.startsWith("/login"), respond: answer(200, "<p id=login-page>log in</p>", { "Content-Type": "text/html" }) });
  const page = await openApp(w.context, w.proxy.base);
  await addTodo(page, "made as the session ran out");
  await page.waitForURL(/\/login$/);
  loggedIn = true;
  await page.goto(w.proxy.base + "/");
  await eventually(() => titles().length === 1, { what: "the kept write" });
  assert.deepEqual(titles(), ["made as the session ran out"]);
});
