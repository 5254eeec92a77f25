// The outbox, the mirror and the offline pages belong to the user who made them: the app
// names its principal in a <meta>, and a change of principal never sends one user's
// writes with another user's cookies, nor shows them the other's rows or pages.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { freshWorldPerTest, dbTodos, eventually, postForm } from "./harness.js";
import { cut } from "./proxy.js";
import { openApp, inject, events, addTodo, waitPending, waitInPage } from "./app.js";

const w = freshWorldPerTest();
beforeEach(namePrincipalInPages);
const SHARED = "0192f0a0-0000-7000-8000-0000000000a1";

/** The app names the signed-in user in its pages: here the proxy plays that part of the
 *  app, from the session cookie (a rule of the proxy, so pages the service worker
 *  fetches carry it too). */
function namePrincipalInPages() {
  w.proxy.rule({
    match: (r) => r.method === "GET" && r.url === "/",
    respond: (req, res) => {
      fetch(w.server.base + "/").then(async (up) => {
        const user = /session=(\w+)/.exec(req.headers.cookie || "")?.[1];
        const html = await up.text();
        res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
        // In the head for full loads; inside the body too, where an hx-boost swap sees it.
        res.end(user ? html.replace("<head>", `<head><meta name="rhtmx-principal" content="${user}">`)
          .replace("<body>", `<body><div hidden data-rhtmx-principal="${user}"></div>`) : html);
      });
      return true;
    },
  });
}
const login = (user) => w.context.addCookies([{ name: "session", value: user, domain: "127.0.0.1", path: "/" }]);
const replays = () => w.proxy.seen((r) => r.headers["x-rhtmx-replay"] === "1");
const sentAs = (r) => /session=(\w+)/.exec(r.headers.cookie || "")?.[1];
const titles = () => dbTodos(w.server.dbPath).map((r) => r.title).sort();

/** Databases of the client holding mirrored rows. */
const mirrorsWithRows = (page) => page.evaluate(async () => {
  const full = [];
  for (const { name } of await indexedDB.databases()) {
    if (!name.startsWith("rhtmx-sync")) continue;
    const db = await new Promise((ok) => { const r = indexedDB.open(name); r.onsuccess = () => ok(r.result); });
    if (db.objectStoreNames.contains("todos")) {
      const n = await new Promise((ok) => { const r = db.transaction("todos").objectStore("todos").count(); r.onsuccess = () => ok(r.result); });
      if (n) full.push(name);
    }
    db.close();
  }
  return full;
});

test("another user logs in on the same browser: the first user's writes wait for them", async () => {
  await postForm(w.server.base, "/todos", { id: SHARED, title: "seen by alice" });
  await login("alice");
  const alice = await openApp(w.context, w.proxy.base);
  await waitInPage(alice, async () => (await RhtmxSync.get("todos")).length === 1);
  await w.context.setOffline(true);
  await addTodo(alice, "alice, offline");
  await waitPending(alice, 1);
  await alice.close();

  // Bob logs in; his pages know nothing of alice's queue, rows or pages.
  await login("bob");
  await w.context.setOffline(false);
  const bob = await openApp(w.context, w.proxy.base);
  assert.equal(await bob.evaluate(() => RhtmxSync.principal), "bob");
  assert.equal(await bob.evaluate(() => RhtmxSync.pendingCount), 0);
  await waitInPage(bob, async () => (await RhtmxSync.get("todos")).length === 1);
  assert.equal((await mirrorsWithRows(bob)).length, 1, "only bob's mirror holds rows");
  await w.context.setOffline(true);
  await addTodo(bob, "bob, offline");
  await waitPending(bob, 1);
  await w.context.setOffline(false);
  await waitPending(bob, 0);
  assert.deepEqual(replays().map((r) => [sentAs(r), r.body.toString().includes("alice")]), [["bob", false]]);
  assert.deepEqual(titles(), ["bob, offline", "seen by alice"]);
  await bob.close();

  // Alice is back: her write goes, with her cookies.
  await login("alice");
  const again = await openApp(w.context, w.proxy.base);
  assert.equal(await again.evaluate(() => RhtmxSync.principal), "alice");
  await waitInPage(again, async () => (await RhtmxSync.pending()).length === 0);
  await eventually(() => titles().includes("alice, offline"), { what: "alice's write" });
  assert.deepEqual(replays().map(sentAs), ["bob", "alice"]);
});

test("a tab left open by the first user stops replaying once another user's page loads", async () => {
  await login("alice");
  const alice = await openApp(w.context, w.proxy.base);
  // Alice's replays fail on the network until bob is in.
  const down = w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1", respond: cut() });
  await w.context.setOffline(true);
  await addTodo(alice, "alice, left open");
  await waitPending(alice, 1);
  await w.context.setOffline(false);
  await eventually(() => replays().length >= 1, { what: "a failed replay" });

  await login("bob");
  const bob = await openApp(w.context, w.proxy.base);
  await alice.waitForFunction(() => window.__events.some((e) => e.name === "principal-changed"));
  w.proxy.state.rules.splice(w.proxy.state.rules.indexOf(down), 1);
  const before = replays().length;
  await alice.evaluate(() => RhtmxSync.replay());
  assert.equal(replays().length, before, "nothing sent with bob's cookies");
  assert.equal(await alice.evaluate(() => RhtmxSync.pendingCount), 1, "kept for alice");
  assert.deepEqual(titles(), []);
  // A write made in alice's stale tab is kept for alice too, never sent as bob.
  await addTodo(alice, "alice, after bob came");
  await waitPending(alice, 2);
  assert.deepEqual(titles(), []);
  assert.equal(await bob.evaluate(() => RhtmxSync.pendingCount), 0);
});

test("RhtmxSync.clear() at logout forgets the mirror and the offline pages, keeps the queue", async () => {
  await postForm(w.server.base, "/todos", { id: SHARED, title: "private to alice" });
  await login("alice");
  const alice = await openApp(w.context, w.proxy.base);
  await waitInPage(alice, async () => (await RhtmxSync.get("todos")).length === 1);
  await waitInPage(alice, async () => (await caches.keys()).some((k) => k.startsWith("rhtmx-shell-")));
  await waitInPage(alice, async () => {
    for (const key of await caches.keys()) if ((await (await caches.open(key)).keys()).length) return true;
    return false;
  });
  await w.context.setOffline(true);
  await addTodo(alice, "alice, before logout");
  await waitPending(alice, 1);
  const kept = await alice.evaluate(() => RhtmxSync.clear());
  assert.equal(kept.pending, 1);
  assert.deepEqual(await alice.evaluate(() => RhtmxSync.get("todos")), []);
  assert.deepEqual(await mirrorsWithRows(alice), []);
  assert.deepEqual(await alice.evaluate(async () => (await caches.keys()).filter((k) => k.startsWith("rhtmx-shell-"))), []);
  assert.equal(await alice.evaluate(() => RhtmxSync.pendingCount), 1);
  assert.deepEqual(await events(alice, "storage-error"), []);
});

test("an hx-boost navigation to another user's page starts the client again as that user", async () => {
  await login("alice");
  const page = await openApp(w.context, w.proxy.base);
  assert.equal(await page.evaluate(() => RhtmxSync.principal), "alice");
  // Bob signs in; the app answers with a boosted navigation (the body is swapped).
  await login("bob");
  await inject(page, '<a id="home" href="/" hx-boost="true">home</a>');
  await page.click("#home");
  await page.waitForFunction(() => window.RhtmxSync?.principal === "bob" && RhtmxSync.clientId);
  await w.context.setOffline(true);
  await addTodo(page, "bob, after a boosted login");
  await waitPending(page, 1);
  await w.context.setOffline(false);
  await waitPending(page, 0);
  assert.deepEqual(replays().map((r) => [sentAs(r), decodeURIComponent(r.headers["x-rhtmx-principal"])]), [["bob", "bob"]]);
});

test("RhtmxSync.clear() in one tab stops the user's other tabs and empties their mirror", async () => {
  await postForm(w.server.base, "/todos", { id: SHARED, title: "private to alice" });
  await login("alice");
  const leader = await openApp(w.context, w.proxy.base);
  const other = await openApp(w.context, w.proxy.base);
  await waitInPage(leader, async () => (await RhtmxSync.get("todos")).length === 1);
  assert.equal(await leader.evaluate(() => RhtmxSync.isLeader), true);
  await other.evaluate(() => RhtmxSync.clear());
  await leader.waitForFunction(() => window.__events.some((e) => e.name === "principal-changed"));
  await eventually(async () => (await mirrorsWithRows(other)).length === 0, { what: "every mirror emptied" });
  assert.equal(await leader.evaluate(() => RhtmxSync.isLeader), false);
  assert.equal(w.proxy.state.openStreams, 0);
});

test("after a page that named nobody (a login page), each user's writes still stay theirs", async () => {
  // The sign-in page loads the client too: the shared database exists, with its stores.
  const anonymous = await openApp(w.context, w.proxy.base);
  assert.equal(await anonymous.evaluate(() => RhtmxSync.principal), "");
  await anonymous.close();
  await login("alice");
  const alice = await openApp(w.context, w.proxy.base); // its app.js reads the queue at once
  await w.context.setOffline(true);
  await addTodo(alice, "alice, private");
  await waitPending(alice, 1);
  await alice.close();
  await login("bob");
  await w.context.setOffline(false);
  const bob = await openApp(w.context, w.proxy.base);
  assert.equal(await bob.evaluate(() => RhtmxSync.principal), "bob");
  assert.deepEqual(await bob.evaluate(() => RhtmxSync.pending()), []);
  await w.context.setOffline(true);
  await addTodo(bob, "bob's");
  await waitPending(bob, 1);
  await w.context.setOffline(false);
  await waitPending(bob, 0);
  assert.deepEqual(replays().map((r) => [sentAs(r), r.body.toString().includes("alice")]), [["bob", false]]);
  await bob.close();
  await login("alice");
  const again = await openApp(w.context, w.proxy.base);
  await waitInPage(again, async () => (await RhtmxSync.pending()).length === 0);
  await eventually(() => titles().includes("alice, private"), { what: "alice's write, sent as alice" });
  assert.deepEqual(replays().map(sentAs), ["bob", "alice"]);
});
