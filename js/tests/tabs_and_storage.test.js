// One leader tab per browser owns the event stream and the replay; storage trouble
// never loses a write.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freshWorldPerTest, dbTodos, eventually, postForm } from "./harness.js";
import { openApp, events, addTodo, waitPending, waitInPage } from "./app.js";

const w = freshWorldPerTest();
// Rows made by "another browser" (the example takes UUIDs only as ids).
const ELSEWHERE = "0192f0a0-0000-7000-8000-0000000000e1";
const AFTER_TAKEOVER = "0192f0a0-0000-7000-8000-0000000000e2";
const MIRRORED = "0192f0a0-0000-7000-8000-0000000000e3";

const streams = () => w.proxy.seen((r) => r.url.startsWith("/api/sync/events"));
const leaders = (pages) => Promise.all(pages.map((p) => p.evaluate(() => RhtmxSync.isLeader)));

test("two tabs: one event stream, one replay, both refresh; the other takes over within 1 s", async () => {
  const first = await openApp(w.context, w.proxy.base);
  const second = await openApp(w.context, w.proxy.base);
  await eventually(() => w.proxy.state.openStreams === 1, { what: "one open stream" });
  assert.deepEqual(await leaders([first, second]), [true, false]);

  // Queued in the follower, replayed once by the leader.
  await w.context.setOffline(true);
  await addTodo(second, "from the second tab");
  await waitPending(first, 1);
  await w.context.setOffline(false);
  await waitPending(second, 0);
  const replays = w.proxy.seen((r) => r.headers["x-rhtmx-replay"] === "1");
  assert.equal(replays.length, 1);
  assert.equal(dbTodos(w.server.dbPath).length, 1);
  await second.waitForFunction(() => window.__events.some((e) => e.name === "replayed"));
  // Both tabs hear about changes made elsewhere.
  await postForm(w.server.base, "/todos", { id: ELSEWHERE, title: "from another browser" });
  for (const page of [first, second]) {
    await page.waitForFunction((id) => window.__changes.some((c) => c.id === id), ELSEWHERE);
  }
  assert.equal(w.proxy.state.openStreams, 1);

  const closedAt = Date.now();
  await first.close();
  await second.waitForFunction(() => RhtmxSync.isLeader, null, { timeout: 1000 });
  assert.ok(Date.now() - closedAt < 1000);
  await eventually(() => w.proxy.state.openStreams === 1, { what: "the new leader's stream" });
  await postForm(w.server.base, "/todos", { id: AFTER_TAKEOVER, title: "still live" });
  await second.waitForFunction((id) => window.__changes.some((c) => c.id === id), AFTER_TAKEOVER);
});

test("seven tabs open and work without hanging", async () => {
  const pages = [];
  for (let i = 0; i < 7; i++) pages.push(await openApp(w.context, w.proxy.base));
  await eventually(() => w.proxy.state.openStreams === 1, { what: "a single stream" });
  // Every tab can still talk to the server (the 6-connections-per-host limit is not hit).
  const answers = await Promise.all(pages.map((p) => p.evaluate(() => fetch("/todos").then((r) => r.status))));
  assert.deepEqual(answers, Array(7).fill(200));
  assert.equal((await leaders(pages)).filter(Boolean).length, 1);
  assert.equal(streams().length, 1);
});

test("the mirror follows the server: RhtmxSync.get", async () => {
  await postForm(w.server.base, "/todos", { id: MIRRORED, title: "mirrored" });
  const page = await openApp(w.context, w.proxy.base);
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 1);
  await postForm(w.server.base, `/todos/${MIRRORED}/toggle`, { completed: "true" });
  await waitInPage(page, async () => (await RhtmxSync.get("todos"))[0]?.completed === true);
  await fetch(w.server.base + `/todos/${MIRRORED}`, { method: "DELETE" });
  await waitInPage(page, async () => (await RhtmxSync.get("todos")).length === 0);
});

test("IndexedDB failing: the write goes through to the network, with an event", async () => {
  const page = await w.context.newPage();
  await page.addInitScript(() => {
    window.__events = [];
    addEventListener("DOMContentLoaded", () =>
      document.body.addEventListener("rhtmx:storage-error", (e) => window.__events.push(e.detail)));
    IDBFactory.prototype.open = function () {
      throw new DOMException("simulated failure", "UnknownError");
    };
  });
  await page.goto(w.proxy.base + "/");
  await page.waitForFunction(() => window.__events.length > 0);
  await addTodo(page, "without storage");
  await eventually(() => dbTodos(w.server.dbPath).length === 1, { what: "the row" });
  assert.match((await page.evaluate(() => window.__events))[0].error, /simulated failure/);
});
