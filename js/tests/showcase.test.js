// The example as a person uses it: two tabs of browser A and a second browser B. A goes
// offline, adds, edits, toggles and deletes; B sees none of it; A reloads while still
// offline and the queue survives; A reconnects and everyone converges. Screenshots for
// docs/ are taken on the way (written there when UPDATE_SCREENSHOTS=1).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, launchBrowser, dbTodos, eventually } from "./harness.js";
import { startProxy, cut } from "./proxy.js";
import { openApp, addTodo, waitPending } from "./app.js";

const shots = process.env.UPDATE_SCREENSHOTS
  ? new URL("../../docs/screenshots/", import.meta.url).pathname
  : mkdtempSync(join(tmpdir(), "rhtmx-shots-"));
mkdirSync(shots, { recursive: true });

let browserA;
let browserB;
let server;
let proxy;

before(async () => {
  [browserA, browserB] = await Promise.all([launchBrowser(), launchBrowser()]);
  server = await startServer();
  proxy = await startProxy(server.base);
});
after(async () => {
  await browserA?.close();
  await browserB?.close();
  await proxy?.close();
  await server?.stop();
});

/** What a page shows: [title, done] per todo, in order. */
const shown = (page) =>
  page.$$eval("#todo-list li.todo", (lis) =>
    lis.map((li) => [li.querySelector("form.rename input").value, li.classList.contains("done")]));

const idOf = (page, title) =>
  page.$eval(`#todo-list li.todo:has(input[value="${title}"])`, (li) => li.dataset.id);

/** Two screenshots side by side in one image. */
async function sideBySide(browser, a, b, file) {
  const [left, right] = await Promise.all([a.screenshot(), b.screenshot()]);
  const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
  const img = (buf) => `<img src="data:image/png;base64,${buf.toString("base64")}" style="width:440px;border:1px solid #ccd">`;
  await page.setContent(`<body style="margin:0;padding:6px;display:flex;gap:8px;background:#dde2e8">${img(left)}${img(right)}</body>`);
  await page.screenshot({ path: join(shots, file) });
  await page.close();
}

test("two browsers, one offline: everything converges with no duplicate", async () => {
  const viewport = { width: 440, height: 560 };
  const contextA = await browserA.newContext({ viewport, userAgent: "rhtmx-test browser-A" });
  const contextB = await browserB.newContext({ viewport });
  const a1 = await openApp(contextA, proxy.base);
  const a2 = await openApp(contextA, proxy.base);
  const b = await openApp(contextB, proxy.base);

  for (const title of ["Buy milk", "Walk dog", "Call mom"]) {
    await addTodo(a1, title);
    await eventually(async () => (await shown(b)).length === ["Buy milk", "Walk dog", "Call mom"].indexOf(title) + 1,
      { what: `B to show ${title}` });
  }
  const start = [["Buy milk", false], ["Walk dog", false], ["Call mom", false]];
  for (const page of [a1, a2, b]) await eventually(async () => JSON.stringify(await shown(page)) === JSON.stringify(start), { what: "three todos everywhere" });
  await sideBySide(browserA, a1, a2, "online-two-tabs.png");

  // Browser A loses the network (B keeps it): the browser's view and the wire.
  const down = proxy.rule({ match: (r) => (r.headers["user-agent"] || "").includes("browser-A"), respond: cut() });
  await contextA.setOffline(true);
  const milk = await idOf(a1, "Buy milk");
  const dog = await idOf(a1, "Walk dog");
  const mom = await idOf(a1, "Call mom");
  await addTodo(a1, "Buy bread");
  await waitPending(a1, 1);
  await a1.fill(`li[data-id="${dog}"] form.rename input`, "Walk the dog");
  await a1.press(`li[data-id="${dog}"] form.rename input`, "Enter");
  await waitPending(a1, 2);
  await a1.click(`li[data-id="${milk}"] button.toggle`);
  await waitPending(a1, 3);
  await a1.click(`li[data-id="${mom}"] button.delete`);
  await waitPending(a1, 4);
  await waitPending(a2, 4); // the other tab of the same browser knows too
  assert.equal(await a1.$$eval("#pending-list li", (lis) => lis.length), 4);
  assert.deepEqual(await a1.$$eval("#pending-list li", (lis) => lis.map((l) => l.textContent)),
    ["Add “Buy bread”", "Rename to “Walk the dog”", "Mark done", "Delete “Call mom”"]);
  assert.equal(await a1.getAttribute("html", "data-rhtmx-pending-count"), "4");
  await a1.screenshot({ path: join(shots, "offline-pending.png") });

  // B sees none of it, and neither does the server.
  assert.deepEqual(await shown(b), start);
  assert.deepEqual(dbTodos(server.dbPath).map((r) => r.title), ["Buy milk", "Walk dog", "Call mom"]);

  // A reloads while still offline: the page comes from the service worker, the queue
  // from IndexedDB.
  await a1.reload();
  await a1.waitForFunction(() => window.RhtmxSync && RhtmxSync.clientId);
  assert.ok(await a1.evaluate(() => document.documentElement.classList.contains("rhtmx-stale")));
  await waitPending(a1, 4);
  await a1.waitForFunction(() => document.querySelectorAll("#pending-list li").length === 4);

  // A reconnects.
  proxy.state.rules.splice(proxy.state.rules.indexOf(down), 1);
  await contextA.setOffline(false);
  const expected = [["Buy milk", true], ["Walk the dog", false], ["Buy bread", false]];
  for (const [name, page] of [["A1", a1], ["A2", a2], ["B", b]]) {
    await waitPending(page, 0);
    await eventually(async () => JSON.stringify(await shown(page)) === JSON.stringify(expected),
      { what: "the converged list", timeout: 15000 }).catch(async (e) => {
      await page.screenshot({ path: "/tmp/fail.png" });
      for (const [n, p] of [["A1", a1], ["A2", a2], ["B", b]]) {
        console.log("STATE", n, JSON.stringify(await p.evaluate(() => [RhtmxSync.isLeader, RhtmxSync.source && RhtmxSync.source.readyState, window.__changes.slice(-5)])));
      }
      console.log("STREAMS", JSON.stringify(proxy.seen((r) => r.url.startsWith("/api/sync/events")).map((r) => [r.url, r.headers["last-event-id"], r.headers["user-agent"].slice(0, 30)])));
      throw new Error(`${name} shows ${JSON.stringify(await shown(page))}; db ${JSON.stringify(dbTodos(server.dbPath))}: ${e.message}`);
    });
  }
  assert.equal(await a1.evaluate(() => RhtmxSync.pendingCount), 0);
  assert.deepEqual(
    dbTodos(server.dbPath).map((r) => [r.title, r.completed]),
    expected,
  );
  await contextA.close();
  await contextB.close();
});
