// A browser offline across a compaction of the change log: what it missed is no longer
// in the log, so it gets exactly one reset, resyncs, shows the table as it is, and its
// own offline write is replayed once. The example keeps 1.5 s of history whole and
// compacts every 200 ms.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, startServer, dbQuery, dbExec, dbTodos, eventually } from "./harness.js";
import { startProxy } from "./proxy.js";
import { openApp, addTodo, waitPending } from "./app.js";

let server, proxy, browser;

before(async () => {
  server = await startServer({ env: { KEEP_HISTORY_MS: "1500", COMPACT_EVERY_MS: "200" } });
  proxy = await startProxy(server.base);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

const id = (n) => `0192f0a0-0000-7000-8000-${String(n).padStart(12, "0")}`;
const shown = (page) => page.$$eval("li.todo input[name=title]", (els) => els.map((e) => e.value).sort());

test("offline across a compaction: one reset, then the page shows the table", async () => {
  const context = await browser.newContext();
  const page = await openApp(context, proxy.base);
  await addTodo(page, "before");
  await page.waitForSelector('li.todo input[value="before"]');

  // Offline, and the open event stream gone with the network.
  await context.setOffline(true);
  proxy.dropConnections();
  await addTodo(page, "written offline");
  await waitPending(page, 1);
  // Others write meanwhile: a rename, a row added, a row added and removed.
  dbExec(server.dbPath, "UPDATE todos SET title = 'renamed while away'");
  dbExec(server.dbPath, `INSERT INTO todos (id, title, completed) VALUES ('${id(1)}', 'added while away', false)`);
  dbExec(server.dbPath, `INSERT INTO todos (id, title, completed) VALUES ('${id(2)}', 'gone again', false)`);
  dbExec(server.dbPath, `DELETE FROM todos WHERE id = '${id(2)}'`);
  // ... and the log is compacted past all of it, and so past the page's cursor. On
  // PostgreSQL entries get their version after they commit: the head is read once every
  // entry has one (read earlier, it was too low, the wait below passed at once and the
  // page resumed without the reset: a CI flake).
  await eventually(() => {
    const [{ n }] = dbQuery(server.dbPath, "SELECT count(*) AS n FROM _rhtmx_sync_log WHERE version IS NULL");
    return Number(n) === 0;
  }, { what: "every entry numbered" });
  const [{ head }] = dbQuery(server.dbPath, "SELECT max(version) AS head FROM _rhtmx_sync_log");
  await eventually(() => {
    const [row] = dbQuery(server.dbPath, "SELECT value FROM _rhtmx_sync_meta WHERE key = 'horizon'");
    return row && Number(row.value) >= Number(head);
  }, { what: "a compaction past the offline writes" });
  const entries = dbQuery(server.dbPath, "SELECT entity_id FROM _rhtmx_sync_log WHERE entity = 'todos'");
  assert.ok(entries.length <= 3, `compacted: ${JSON.stringify(entries)}`);

  await context.setOffline(false);
  await waitPending(page, 0);
  await page.waitForSelector('li.todo input[value="added while away"]');
  const table = () => dbTodos(server.dbPath).map((r) => r.title).sort();
  await eventually(async () => JSON.stringify(await shown(page)) === JSON.stringify(table()), {
    what: "the page to show the table",
  });
  assert.deepEqual(table(), ["added while away", "renamed while away", "written offline"]);
  // Exactly one reset, and it stays that way (no loop).
  const resets = () => page.evaluate(() => window.__changes.filter((c) => c.action === "reset").length);
  assert.equal(await resets(), 1, JSON.stringify(await page.evaluate(() => window.__changes)));
  await addTodo(page, "after");
  await page.waitForSelector('li.todo input[value="after"]');
  assert.equal(await resets(), 1);
  assert.equal(dbTodos(server.dbPath).filter((r) => r.title === "written offline").length, 1);
  await context.close();
});

test("a fresh page reads a compacted log longer than a page, with no reset", async () => {
  // More live rows than the largest page: the first sync takes several pulls, each
  // going on from a cursor below the compaction horizon.
  const rows = 12000;
  dbExec(server.dbPath,
    `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${rows}) ` +
    `INSERT INTO todos (id, title, completed) ` +
    `SELECT '0192f0a0-0000-7000-9000-' || (100000000000 + i), 'bulk ' || i, false FROM n`);
  const [{ head }] = dbQuery(server.dbPath, "SELECT max(version) AS head FROM _rhtmx_sync_log");
  await eventually(() => {
    const [row] = dbQuery(server.dbPath, "SELECT value FROM _rhtmx_sync_meta WHERE key = 'horizon'");
    return row && Number(row.value) >= Number(head);
  }, { what: "a compaction past the bulk insert", timeout: 30000 });

  const context = await browser.newContext();
  const page = await openApp(context, proxy.base);
  await page.waitForFunction(() => RhtmxSync.progress.phase === "synced", null, { timeout: 120000 });
  const pulls = await page.evaluate(() => window.__changes.filter((c) => c.action === "pull").length);
  assert.ok(pulls >= 3, `several pages: ${pulls}`);
  assert.equal(await page.evaluate(() => window.__changes.filter((c) => c.action === "reset").length), 0);
  const mirrored = await page.evaluate(async () => (await RhtmxSync.get("todos")).length);
  assert.equal(mirrored, dbTodos(server.dbPath).length);
  await context.close();
});
