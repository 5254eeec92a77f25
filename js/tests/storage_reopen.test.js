// IndexedDB connections come and go: another tab upgrades the schema, the browser closes
// or wipes the database. None of it turns storage off or loses a queued write.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freshWorldPerTest, dbTodos, eventually, postForm } from "./harness.js";
import { holder } from "./proxy.js";
import { openApp, openRewritten, events, addTodo, waitPending, waitInPage } from "./app.js";

const w = freshWorldPerTest();
const rows = () => dbTodos(w.server.dbPath);
const id = (n) => `0192f0a0-0000-7000-8000-${String(n).padStart(12, "0")}`;

/** Another tab of the same origin (no client on it) upgrades every rhtmx-sync database
 *  by one version, adding a store, as a page of a newer app version would. */
async function upgradeFromAnotherTab() {
  const other = await w.context.newPage();
  await other.goto(w.proxy.base + "/todos");
  const names = await other.evaluate(async () => {
    const done = [];
    for (const { name, version } of await indexedDB.databases()) {
      if (!name.startsWith("rhtmx-sync")) continue;
      await new Promise((ok, fail) => {
        const r = indexedDB.open(name, version + 1);
        r.onupgradeneeded = () => r.result.createObjectStore("added_by_another_tab_" + version);
        r.onsuccess = () => { r.result.close(); ok(); };
        r.onerror = () => fail(r.error);
      });
      done.push(name);
    }
    return done;
  });
  assert.ok(names.length > 0, "a database to upgrade");
  await other.close();
}

/** Offline, one more write is queued (not sent to a dead network), then replayed. */
async function outboxStillWorks(page, title) {
  await w.context.setOffline(true);
  await addTodo(page, title);
  await waitPending(page, 1);
  await w.context.setOffline(false);
  await waitPending(page, 0);
  assert.ok(rows().some((r) => r.title === title));
}

test("another tab's upgrade during a replay: the entry is settled and the outbox keeps working", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await w.context.setOffline(true);
  await addTodo(page, "replayed across an upgrade");
  await waitPending(page, 1);
  const held = holder();
  w.proxy.rule({ match: (r) => r.headers["x-rhtmx-replay"] === "1", once: true, respond: held.respond(w.proxy.forward) });
  await w.context.setOffline(false);
  await held.arrived;
  await upgradeFromAnotherTab();
  held.release();
  await waitPending(page, 0);
  assert.deepEqual(rows().map((r) => r.title), ["replayed across an upgrade"]);
  await outboxStillWorks(page, "queued after the upgrade");
  assert.deepEqual(await events(page, "storage-error"), []);
});

test("another tab's upgrade during a live burst: the mirror gets every change", async () => {
  const page = await openApp(w.context, w.proxy.base);
  await page.waitForFunction(() => RhtmxSync.source?.readyState === EventSource.OPEN);
  const burst = Array.from({ length: 60 }, (_, i) => postForm(w.server.base, "/todos", { id: id(i + 1), title: `burst ${i}` }));
  await upgradeFromAnotherTab();
  await Promise.all(burst);
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 60);
  await outboxStillWorks(page, "queued after the burst");
  assert.deepEqual(await events(page, "storage-error"), []);
});

test("the browser wipes the database: the mirror is pulled again and the outbox works", async () => {
  await postForm(w.server.base, "/todos", { id: id(100), title: "before the wipe" });
  const page = await openApp(w.context, w.proxy.base);
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 1);
  const cdp = await w.context.newCDPSession(page);
  await cdp.send("Storage.clearDataForOrigin", { origin: w.proxy.base, storageTypes: "indexeddb" });
  await postForm(w.server.base, "/todos", { id: id(101), title: "after the wipe" });
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 2);
  await outboxStillWorks(page, "queued after the wipe");
  assert.deepEqual(await events(page, "storage-error"), []);
});

test("an open that the browser aborts (a wipe under way) is tried again: storage stays on", async () => {
  const page = await w.context.newPage();
  // The next open fails as Chromium's does when site data is cleared during it.
  await page.addInitScript(() => {
    const open = IDBFactory.prototype.open;
    IDBFactory.prototype.open = function (...args) {
      if (!window.__abortOpen) return open.apply(this, args);
      window.__abortOpen = false;
      const fake = new EventTarget();
      Object.defineProperty(fake, "error", { value: new DOMException("The connection was closed.", "AbortError") });
      setTimeout(() => { fake.onerror && fake.onerror(); fake.dispatchEvent(new Event("error")); }, 0);
      return fake;
    };
  });
  await postForm(w.server.base, "/todos", { id: id(200), title: "before" });
  await openApp(w.context, w.proxy.base, page);
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 1);
  await page.evaluate(() => (window.__abortOpen = true));
  const cdp = await w.context.newCDPSession(page);
  await cdp.send("Storage.clearDataForOrigin", { origin: w.proxy.base, storageTypes: "indexeddb" });
  await postForm(w.server.base, "/todos", { id: id(201), title: "after" });
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 2);
  assert.equal(await page.evaluate(() => window.__abortOpen), false, "the aborted open happened");
  assert.deepEqual(await events(page, "storage-error"), []);
});

test("two tabs needing different new stores at once both end with theirs", async () => {
  const entitiesOf = (extra) => (html) => html.replace('data-sync-entities="todos"', `data-sync-entities="todos,${extra}"`);
  // No service worker: one registered by the first page would serve the second page
  // itself, past the rewrite (Playwright's routes do not see what a worker answers).
  await w.context.close();
  w.context = await w.browser.newContext({ serviceWorkers: "block" });
  const [a, b] = await Promise.all([
    openRewritten(w.context, w.proxy.base, entitiesOf("alpha")),
    openRewritten(w.context, w.proxy.base, entitiesOf("beta")),
  ]);
  const stores = (page) => page.evaluate(() => new Promise((ok) => {
    const r = indexedDB.open("rhtmx-sync");
    r.onsuccess = () => { ok([...r.result.objectStoreNames]); r.result.close(); };
  }));
  for (const page of [a, b]) {
    const names = await stores(page);
    assert.ok(names.includes("alpha") && names.includes("beta"), names.join(","));
    // Each tab can read its own store.
    assert.deepEqual(await page.evaluate((e) => RhtmxSync.get(e), page === a ? "alpha" : "beta"), []);
  }
  await outboxStillWorks(b, "queued by the second tab");
  for (const page of [a, b]) assert.deepEqual(await events(page, "storage-error"), []);
});

test("a write to the mirror that fails (a full disk) fails alone: the row comes again, the outbox works", async () => {
  const page = await w.context.newPage();
  // The first mirror write of a live change fails as a full disk would.
  await page.addInitScript(() => {
    const put = IDBObjectStore.prototype.put;
    let failed = false;
    IDBObjectStore.prototype.put = function (...args) {
      if (!failed && this.name === "todos" && window.__failMirror) {
        failed = true;
        throw new DOMException("simulated full disk", "QuotaExceededError");
      }
      return put.apply(this, args);
    };
  });
  await openApp(w.context, w.proxy.base, page);
  await page.waitForFunction(() => RhtmxSync.source?.readyState === EventSource.OPEN);
  await page.evaluate(() => (window.__failMirror = true));
  await postForm(w.server.base, "/todos", { id: id(200), title: "after a failed write" });
  await page.waitForFunction(() => window.__events.some((e) => e.name === "storage-error"));
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 1);
  await outboxStillWorks(page, "queued after a failed write");
});
