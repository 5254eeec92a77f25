// What a developer and a user see of the sync itself: the debug overlay
// (data-debug="true") and the first-sync progress component (data-rhtmx-progress).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { freshWorldPerTest, dbTodos, eventually } from "./harness.js";
import { answer } from "./proxy.js";
import { openApp, openRewritten, addTodo, inject, waitPending, waitInPage } from "./app.js";

const w = freshWorldPerTest();
const rows = () => dbTodos(w.server.dbPath);

const withDebug = (html) => html.replace("data-sync-entities=", 'data-debug="true" data-sync-entities=');
const overlay = "rhtmx-sync-debug"; // Playwright's CSS selectors pierce its open shadow root

test("the debug overlay is fetched only with data-debug, and is not part of client.js", async () => {
  const page = await openRewritten(w.context, w.proxy.base, withDebug);
  await page.waitForSelector(`${overlay} .toggle`);
  assert.ok(w.proxy.seen((r) => r.url === "/api/sync/debug.js").length >= 1);

  // Another browser, the page as served: no overlay, and its code was never fetched.
  // (Counted in that browser: the first one's service worker may still be caching
  // debug.js through the proxy.)
  const other = await w.browser.newContext();
  const asked = [];
  other.on("request", (r) => asked.push(new URL(r.url()).pathname));
  try {
    const plain = await openApp(other, w.proxy.base);
    await plain.waitForFunction(() => RhtmxSync.progress.phase === "synced");
    assert.equal(await plain.$(overlay), null);
    assert.ok(asked.includes("/api/sync/client.js"), "the listener sees this browser's requests");
    assert.ok(!asked.includes("/api/sync/debug.js"));
  } finally {
    await other.close();
  }
  const client = await (await fetch(w.proxy.base + "/api/sync/client.js")).text();
  assert.ok(!client.includes("Dead letters"), "the overlay's code is not shipped to users");
});

test("the overlay shows a write queued offline, sees it go after reconnecting, and retries a dead letter", async () => {
  const page = await openRewritten(w.context, w.proxy.base, withDebug);
  await page.click(`${overlay} .toggle`);
  await page.waitForSelector(`${overlay} .panel:not([hidden])`);
  await page.waitForFunction((sel) => /stream\s*open/.test(document.querySelector(sel).shadowRoot.textContent), overlay);
  assert.match(await page.textContent(`${overlay} .panel`), /leader/);
  assert.match(await page.textContent(`${overlay} .panel`), /todos/);

  await w.context.setOffline(true);
  await addTodo(page, "queued while offline");
  await page.waitForSelector(`${overlay} li.pending:has-text("POST /todos")`);
  assert.match(await page.textContent(`${overlay} li.pending`), /queued while offline/);
  await w.context.setOffline(false);
  await waitPending(page, 0);
  await page.waitForSelector(`${overlay} li.pending`, { state: "detached" });
  assert.match(await page.textContent(`${overlay} .panel`), /Outbox \(0\)/);
  assert.deepEqual(rows().map((r) => r.title), ["queued while offline"]);
  // The events it saw, newest first.
  assert.match(await page.textContent(`${overlay} .panel`), /replayed/);

  // The server refuses the next replay once: a dead letter, retried from the overlay.
  await w.context.setOffline(true);
  await addTodo(page, "refused once");
  await waitPending(page, 1);
  w.proxy.rule({
    match: (r) => r.headers["x-rhtmx-replay"] === "1",
    respond: answer(422, "not now"),
    once: true,
  });
  await w.context.setOffline(false);
  await page.waitForSelector(`${overlay} li.dead:has-text("rejected 422")`);
  assert.equal(rows().length, 1);
  await page.click(`${overlay} li.dead button.retry`);
  await eventually(() => rows().length === 2, { what: "the retried write" });
  await page.waitForSelector(`${overlay} li.dead`, { state: "detached" });
  assert.deepEqual(rows().map((r) => r.title).sort(), ["queued while offline", "refused once"]);
});

/** N rows written straight into the database (the capture triggers log them); the page
 *  itself stays small: the server-rendered list and its refreshes are emptied (these
 *  tests are about the mirror's sync, not about rendering the rows). */
function bulkInsert(N) {
  if (w.server.dbPath.startsWith("postgres")) {
    execFileSync("psql", [w.server.dbPath, "-q", "-c",
      `INSERT INTO todos (id, title, completed) SELECT 'bulk-' || lpad(i::text, 5, '0'), 'row ' || i, false FROM generate_series(1, ${N}) AS i`]);
  } else execFileSync("python3", ["-c", [
    "import sqlite3, sys",
    "c = sqlite3.connect(sys.argv[1])",
    `c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${N}) INSERT INTO todos (id, title, completed) SELECT printf('bulk-%05d', i), 'row ' || i, 0 FROM n")`,
    "c.commit()",
  ].join("\n"), w.server.dbPath]);
  w.proxy.rule({ match: (r) => r.method === "GET" && r.url === "/todos", respond: answer(200, "") });
}
const emptyList = (html) => html.replace(/(<ul id="todo-list"[^>]*>)[\s\S]*?<\/ul>/, "$1</ul>");

test("the progress component shows a 50 000-row first sync, then hides", async () => {
  const N = 50000;
  bulkInsert(N);
  const page = await w.context.newPage();
  await page.addInitScript(() => {
    window.__progress = [];
    window.__bar = [];
    addEventListener("DOMContentLoaded", () => {
      document.body.addEventListener("rhtmx:sync-progress", (e) => window.__progress.push(e.detail));
      // What the drop-in element showed, each time it changed.
      const el = document.querySelector("[data-rhtmx-progress]");
      new MutationObserver(() => {
        const bar = el.querySelector("progress");
        window.__bar.push({ phase: el.dataset.phase, value: bar && bar.value, text: el.textContent, shown: getComputedStyle(el).display !== "none" });
      }).observe(el, { attributes: true, childList: true, subtree: true, characterData: true });
    });
  });
  await page.route(w.proxy.base + "/", async (route) => {
    const response = await route.fetch();
    route.fulfill({ response, body: emptyList(await response.text()) });
  });
  await page.goto(w.proxy.base + "/");
  // About 90 s on PostgreSQL on a 2-core machine (120 s was too close: it flaked in CI).
  await page.waitForFunction(() => window.__progress.some((p) => p.phase === "synced"), null, { timeout: 300000 });

  const progress = await page.evaluate(() => window.__progress);
  const syncing = progress.filter((p) => p.phase === "syncing");
  assert.ok(syncing.length >= 5, `several steps, not a jump: ${syncing.length}`);
  const fractions = syncing.map((p) => p.fraction);
  assert.ok(fractions.every((f, i) => i === 0 || f >= fractions[i - 1]), `never backwards: ${fractions}`);
  assert.ok(fractions[0] < 0.5 && fractions.at(-1) === 1, `from the start to the end: ${fractions}`);
  assert.equal(syncing.at(-1).received, N);
  const done = progress.at(-1);
  assert.equal(done.phase, "synced");
  assert.equal(done.fraction, 1);
  assert.equal(await page.evaluate(() => RhtmxSync.get("todos").then((r) => r.length)), N);

  // The element: shown with a moving bar and a count while syncing, hidden after.
  const bar = await page.evaluate(() => window.__bar);
  const shown = bar.filter((b) => b.phase === "syncing");
  assert.ok(shown.length >= 5 && shown.every((b) => b.shown), "visible while syncing");
  assert.ok(shown.some((b) => b.value > 0 && b.value < 1), "a bar part-way");
  assert.ok(shown.some((b) => /Syncing… \d+% \(\d+ rows\)/.test(b.text)), shown.at(-1)?.text);
  const el = await page.$("[data-rhtmx-progress]");
  assert.equal(await el.getAttribute("data-phase"), "synced");
  assert.equal(await el.evaluate((e) => getComputedStyle(e).display), "none");
  assert.equal(await el.textContent(), "Up to date");
});

test("the progress component counts writes waiting and refused", async () => {
  const page = await openRewritten(w.context, w.proxy.base, (html) => html);
  const el = "[data-rhtmx-progress]";
  await page.waitForFunction(() => RhtmxSync.progress.phase === "synced");
  assert.equal(await page.textContent(el), "Up to date");
  await w.context.setOffline(true);
  await addTodo(page, "   "); // the server refuses a blank title
  await addTodo(page, "fine");
  await waitPending(page, 2);
  await page.waitForFunction((sel) => document.querySelector(sel).textContent === "2 changes waiting (offline)", el);
  assert.equal(await page.getAttribute(el, "data-pending"), "2");
  assert.equal(await page.getAttribute(el, "data-online"), "false");
  await w.context.setOffline(false);
  await page.waitForFunction((sel) => document.querySelector(sel).dataset.failed === "1" && document.querySelector(sel).dataset.pending === "0", el);
  assert.equal(await page.getAttribute(el, "data-pending"), "0");
  assert.equal(await page.textContent(el), "1 change refused");
  assert.equal(await page.getAttribute(el, "data-online"), "true");
  const last = await page.evaluate(() => RhtmxSync.progress);
  assert.deepEqual([last.pending, last.failed], [0, 1]);
});

test("a progress element swapped in by htmx shows the figures at once", async () => {
  w.proxy.rule({ match: (r) => r.url === "/fragment", respond: answer(200, '<div id="late" data-rhtmx-progress></div>', { "Content-Type": "text/html" }) });
  const page = await openRewritten(w.context, w.proxy.base, (html) => html);
  await page.waitForFunction(() => RhtmxSync.progress.phase === "synced");
  await inject(page, `<button id="load" hx-get="/fragment" hx-target="#slot" hx-swap="innerHTML">load</button><div id="slot"></div>`);
  await page.click("#load");
  await page.waitForSelector("#late");
  await page.waitForFunction(() => document.querySelector("#late").textContent === "Up to date");
  assert.equal(await page.getAttribute("#late", "data-phase"), "synced");
});

test("a first sync cut short by going offline resumes and goes on counting", async () => {
  const N = 20000;
  bulkInsert(N);
  // Slow pages, so going offline lands mid-sync.
  w.proxy.rule({
    match: (r) => r.url.startsWith("/api/sync/todos?"),
    respond: (req, res) => (setTimeout(() => w.proxy.forward(req, res), 300), true),
  });
  const page = await w.context.newPage();
  await page.addInitScript(() => {
    window.__progress = [];
    addEventListener("DOMContentLoaded", () =>
      document.body.addEventListener("rhtmx:sync-progress", (e) => window.__progress.push(e.detail)));
  });
  await page.route(w.proxy.base + "/", async (route) => {
    const response = await route.fetch();
    route.fulfill({ response, body: emptyList(await response.text()) });
  });
  await page.goto(w.proxy.base + "/");
  await page.waitForFunction(() => window.__progress.some((p) => p.phase === "syncing"));
  await w.context.setOffline(true);
  await page.waitForFunction(() => RhtmxSync.progress.phase === "offline");
  assert.match(await page.textContent("[data-rhtmx-progress]"), /^Offline$/);
  await w.context.setOffline(false);
  await page.waitForFunction(() => RhtmxSync.progress.phase === "synced", null, { timeout: 60000 });
  const syncing = (await page.evaluate(() => window.__progress)).filter((p) => p.phase === "syncing");
  const fractions = syncing.map((p) => p.fraction);
  assert.ok(fractions.every((f, i) => i === 0 || f >= fractions[i - 1]), `never backwards: ${fractions}`);
  assert.equal(syncing.at(-1).received, N, "counted across the interruption");
  assert.equal(await page.evaluate(() => RhtmxSync.get("todos").then((r) => r.length)), N);
});

test("the overlay's buttons hold still under a long press", async () => {
  const page = await openRewritten(w.context, w.proxy.base, withDebug);
  await w.context.setOffline(true);
  await addTodo(page, "   "); // the server refuses a blank title
  await waitPending(page, 1);
  await w.context.setOffline(false);
  await waitInPage(page, async () => (await RhtmxSync.deadLetters()).length === 1);
  await page.click(`${overlay} .toggle`);
  await page.waitForSelector(`${overlay} li.dead button.discard`);
  // Longer than the panel's 1 s refresh: a redraw must not swap the button away.
  await page.click(`${overlay} li.dead button.discard`, { delay: 1500 });
  await waitInPage(page, async () => (await RhtmxSync.deadLetters()).length === 0, undefined, { timeout: 5000 });
});
