// Scopes in a real browser, on the teams example (alice in Acme, bob in Globex): each
// mirror holds its own team's rows only, and a user removed from their team — while
// their browser is open, or while it is offline with writes queued — ends with no row
// of the team in their mirror, and their queued writes are dead letters, not applied.
import { test, before, after, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, dbQuery } from "./harness.js";
import { openApp, addTodo, waitInPage, waitPending } from "./app.js";
import { startProxy } from "./proxy.js";

let browser, server;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});
beforeEach(async () => {
  server = await startServer({ example: "teams" });
});
afterEach(async () => {
  await server?.stop();
});

/** The CSRF token a page of the app names (its cookie goes into the context's jar). */
async function csrfOf(context, path) {
  const html = await (await context.request.get(server.base + path, { maxRedirects: 0 })).text();
  return html.match(/<meta name="csrf-token" content="([^"]+)"/)[1];
}

/** An unsafe request as the app's own pages send it: with the page's CSRF token. */
async function post(context, path, form = {}) {
  const headers = { "X-CSRF-Token": await csrfOf(context, path === "/login" ? "/login" : "/"), "HX-Request": "true" };
  return context.request.post(server.base + path, { form, headers, maxRedirects: 0 });
}

/** A browser context signed in as `user`, with the app open (at `base`: the server, or a
 *  proxy in front of it). */
async function signedIn(user, base = server.base) {
  const context = await browser.newContext();
  const res = await post(context, "/login", { user });
  assert.equal(res.status(), 200);
  assert.equal(res.headers()["hx-redirect"], "/");
  const page = await openApp(context, base);
  return { context, page };
}

const mirror = (page) => page.evaluate(async () => (await RhtmxSync.get("todos")).map((r) => r.title).sort());
const todos = () => dbQuery(server.dbPath, "SELECT title, team_id FROM todos ORDER BY title");

test("each user's mirror holds its own team's rows, live", async () => {
  const alice = await signedIn("alice");
  const bob = await signedIn("bob");
  await addTodo(alice.page, "acme plan");
  await addTodo(bob.page, "globex plan");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 1);
  await waitInPage(bob.page, async () => (await RhtmxSync.get("todos")).length === 1);
  // One more of alice's: it reaches her mirror live; bob's never gets it.
  await addTodo(alice.page, "acme second");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 2);
  assert.deepEqual(await mirror(alice.page), ["acme plan", "acme second"]);
  assert.deepEqual(await mirror(bob.page), ["globex plan"]);
  assert.equal(await bob.page.locator("#todo-list li").count(), 1);
  await alice.context.close();
  await bob.context.close();
});

test("a user removed from their team while their browser is open drops the team's rows", async () => {
  const alice = await signedIn("alice");
  await addTodo(alice.page, "acme plan");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 1);
  // Removed elsewhere (her other device): the open page's stream resets, and the page
  // is loaded again under her new access.
  const other = await signedIn("alice");
  const reloaded = alice.page.waitForEvent("load");
  const left = await post(other.context, "/team/leave");
  assert.equal(left.status(), 200);
  await reloaded;
  await alice.page.waitForFunction(() => window.RhtmxSync && RhtmxSync.clientId);
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 0);
  // And stays so: a new change of the team does not reach her.
  const bob = await signedIn("bob");
  await addTodo(bob.page, "globex plan");
  await waitInPage(bob.page, async () => (await RhtmxSync.get("todos")).length === 1);
  assert.deepEqual(await mirror(alice.page), []);
  for (const c of [alice, other, bob]) await c.context.close();
});

test("a user removed from their team while offline: mirror emptied, queued writes dead letters", async (t) => {
  // Alice's browser reaches the server through a proxy: going offline drops her open
  // event stream there, as a real network loss does (the browser's offline emulation
  // leaves an open stream running, which would tell the page of her leaving while its
  // service worker is still offline).
  const proxy = await startProxy(server.base);
  t.after(() => proxy.close());
  const alice = await signedIn("alice", proxy.base);
  await addTodo(alice.page, "acme plan");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 1);
  const id = await alice.page.getAttribute("#todo-list li", "data-id");
  await alice.context.setOffline(true);
  proxy.dropConnections();
  await alice.page.waitForFunction(() => !navigator.onLine);
  // Two writes queued offline: a rename and a new todo.
  await alice.page.fill(`li[data-id="${id}"] form.rename input`, "renamed offline");
  await alice.page.press(`li[data-id="${id}"] form.rename input`, "Enter");
  await addTodo(alice.page, "added offline");
  await waitPending(alice.page, 2);
  // Meanwhile she is removed from the team.
  const other = await signedIn("alice");
  assert.equal((await post(other.context, "/team/leave")).status(), 200);
  // Back online: the pull finds her access changed (the page is loaded again), and the
  // queued writes are refused for good.
  const reloaded = alice.page.waitForEvent("load");
  await alice.context.setOffline(false);
  await reloaded;
  await alice.page.waitForFunction(() => window.RhtmxSync && RhtmxSync.clientId);
  await waitInPage(alice.page, async () => (await RhtmxSync.deadLetters()).length === 2);
  const dead = await alice.page.evaluate(async () => (await RhtmxSync.deadLetters()).map((d) => [d.reason, d.status]));
  assert.deepEqual(dead, [["rejected", 403], ["rejected", 403]]);
  await waitInPage(alice.page, async () => (await RhtmxSync.pending()).length === 0);
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 0);
  assert.deepEqual(todos(), [{ title: "acme plan", team_id: "acme" }], "nothing of the queue applied");
  await alice.context.close();
  await other.context.close();
});

test("the team's rows leave the open page and the offline pages too, and sign-out forgets them", async () => {
  const alice = await signedIn("alice");
  await addTodo(alice.page, "acme plan");
  await waitInPage(alice.page, async () => (await RhtmxSync.get("todos")).length === 1);
  // A second tab: both are reloaded when her access changes.
  const second = await openApp(alice.context, server.base);
  const other = await signedIn("alice");
  const reloaded = alice.page.waitForEvent("load");
  assert.equal((await post(other.context, "/team/leave")).status(), 200);
  await reloaded;
  await alice.page.waitForSelector("#no-team");
  await second.waitForSelector("#no-team");
  assert.equal(await alice.page.locator("#todo-list li").count(), 0);
  // Nothing of the team in the offline pages either.
  const cached = await alice.page.evaluate(async () => {
    let text = "";
    for (const name of await caches.keys()) {
      const cache = await caches.open(name);
      for (const req of await cache.keys()) text += await (await cache.match(req)).text();
    }
    return text;
  });
  assert.ok(!cached.includes("acme plan"), "no cached page shows the team's rows");

  // Bob signs out with the button: his mirror is forgotten before the request goes.
  const bob = await signedIn("bob");
  await addTodo(bob.page, "globex plan");
  await waitInPage(bob.page, async () => (await RhtmxSync.get("todos")).length === 1);
  await Promise.all([bob.page.waitForURL(/\/login$/), bob.page.click("#sign-out")]);
  const left = await bob.page.evaluate(async () => {
    const names = (await indexedDB.databases()).map((d) => d.name).filter((n) => n.startsWith("rhtmx-sync"));
    let rows = 0;
    for (const name of names) {
      const db = await new Promise((ok, fail) => {
        const req = indexedDB.open(name);
        req.onsuccess = () => ok(req.result);
        req.onerror = () => fail(req.error);
      });
      if (db.objectStoreNames.contains("todos")) {
        rows += await new Promise((ok) => {
          const req = db.transaction("todos").objectStore("todos").count();
          req.onsuccess = () => ok(req.result);
        });
      }
      db.close();
    }
    return rows;
  });
  assert.equal(left, 0, "no mirror holds bob's rows after sign-out");
  for (const c of [alice, other, bob]) await c.context.close();
});

test("a page of another origin cannot act with the user's session (CSRF)", async () => {
  const alice = await signedIn("alice");
  // Without the page's token: refused, nothing written; with it: done.
  const forged = await alice.context.request.post(server.base + "/todos", { form: { title: "forged" }, maxRedirects: 0 });
  assert.equal(forged.status(), 403);
  const leave = await alice.context.request.post(server.base + "/team/leave", { maxRedirects: 0 });
  assert.equal(leave.status(), 403);
  assert.deepEqual(todos(), []);
  assert.equal((await post(alice.context, "/todos", { title: "real" })).status(), 200);
  assert.deepEqual(todos(), [{ title: "real", team_id: "acme" }]);
  await alice.context.close();
});
