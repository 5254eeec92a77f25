// State digests in a real browser: the client hashes as docs/ARCHITECTURE.md §13 says
// (its test vector), and a mirror damaged in storage or by a change damaged in transit
// is found at the next sync and repaired from the damaged bucket alone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { freshWorldPerTest, dbExec, dbTodos } from "./harness.js";
import { openApp, addTodo, events, waitInPage } from "./app.js";

const w = freshWorldPerTest();
const id = (n) => `0192f0a0-0000-7000-8000-${String(n).padStart(12, "0")}`;

/** The mirror's titles, by id. */
const mirrored = (page) =>
  page.evaluate(async () => Object.fromEntries((await RhtmxSync.get("todos")).map((r) => [r.id, r.title])));
const table = () => Object.fromEntries(dbTodos(w.server.dbPath).map((r) => [r.id, r.title]));
const integrity = (page) => waitInPage(page, () => window.__events.some((e) => e.name === "integrity"));

/** Rewrites a stored row of the mirror, as a bug or a damaged disk would. */
async function damage(page, rowId, title) {
  await page.evaluate(async ([rowId, title]) => {
    const info = (await indexedDB.databases()).filter((d) => d.name.startsWith("rhtmx-sync"));
    for (const { name } of info) {
      const db = await new Promise((ok, fail) => {
        const r = indexedDB.open(name);
        r.onsuccess = () => ok(r.result);
        r.onerror = () => fail(r.error);
      });
      if (!db.objectStoreNames.contains("todos")) { db.close(); continue; }
      await new Promise((ok, fail) => {
        const tx = db.transaction("todos", "readwrite");
        const store = tx.objectStore("todos");
        const get = store.get(rowId);
        get.onsuccess = () => store.put({ ...get.result, title }, rowId);
        tx.oncomplete = ok;
        tx.onerror = () => fail(tx.error);
      });
      db.close();
    }
  }, [rowId, title]);
}

test("the client hashes as the documented test vector says", async () => {
  const page = await openApp(w.context, w.proxy.base);
  const row = { title: "Milk ü", completed: false, n: 12, x: 0.5, tags: ["a", null] };
  const [hash, bucket, other] = await page.evaluate(async (row) => [
    await RhtmxSync.integrity.rowHash("todos", "0192f0a0-0000-7000-8000-000000000001", row),
    await RhtmxSync.integrity.bucket("0192f0a0-0000-7000-8000-000000000001"),
    await RhtmxSync.integrity.bucket(7),
  ], row);
  assert.equal(hash, "bead372323ce3a16258c515018ab3a9b76714dfda6fb70ebe8b58bd94f9ee0bc");
  assert.equal(bucket, 36);
  assert.equal(other, 38);
});

test("a mirror row damaged in storage is repaired at the next sync, alone", async () => {
  for (let i = 1; i <= 40; i++) {
    dbExec(w.server.dbPath, `INSERT INTO todos (id, title, completed) VALUES ('${id(i)}', 'todo ${i}', false)`);
  }
  const page = await openApp(w.context, w.proxy.base);
  await integrity(page);
  assert.deepEqual((await events(page, "integrity")).map((e) => e.detail.ok), [true]);
  assert.deepEqual(await mirrored(page), table());

  await damage(page, id(7), "damaged");
  assert.equal((await mirrored(page))[id(7)], "damaged");
  await page.reload();
  await integrity(page);
  const [event] = await events(page, "integrity");
  assert.equal(event.detail.ok, false);
  assert.equal(event.detail.buckets.length, 1, JSON.stringify(event.detail));
  assert.ok(event.detail.repaired >= 1 && event.detail.repaired < 10, JSON.stringify(event.detail));
  assert.deepEqual(await mirrored(page), table());
  // The repaired mirror checks out next time, and live updates go on.
  await page.reload();
  await integrity(page);
  assert.deepEqual((await events(page, "integrity")).map((e) => e.detail.ok), [true]);
  await addTodo(page, "after the repair");
  await page.waitForSelector('li.todo input[value="after the repair"]');
});

test("a change damaged in transit is repaired in the same sync", async () => {
  for (let i = 1; i <= 40; i++) {
    dbExec(w.server.dbPath, `INSERT INTO todos (id, title, completed) VALUES ('${id(i)}', 'todo ${i}', false)`);
  }
  // The first pull's answer loses a change and has another's title altered on the way.
  w.proxy.rule({
    once: true,
    match: (req) => req.method === "GET" && req.url.startsWith("/api/sync/todos?"),
    respond: (req, res) => {
      fetch(new URL(req.url, w.server.base), { headers: { cookie: req.headers.cookie ?? "" } })
        .then((r) => r.json())
        .then((page) => {
          page.changes = page.changes.filter((c) => c.id !== id(3));
          for (const c of page.changes) if (c.id === id(9)) c.data.title = "altered";
          res.writeHead(200, { "Content-Type": "application/json" });
          res.end(JSON.stringify(page));
        });
      return true;
    },
  });
  const page = await openApp(w.context, w.proxy.base);
  await integrity(page);
  const [event] = await events(page, "integrity");
  assert.equal(event.detail.ok, false, JSON.stringify(event.detail));
  assert.ok(event.detail.buckets.length <= 2, JSON.stringify(event.detail));
  assert.deepEqual(await mirrored(page), table());
});

test("a log entry damaged on the server is corrected at the next sync, and the page refetches that row alone", async () => {
  for (let i = 1; i <= 40; i++) {
    dbExec(w.server.dbPath, `INSERT INTO todos (id, title, completed) VALUES ('${id(i)}', 'todo ${i}', false)`);
  }
  // Edited by hand on the server: the log no longer says what the table holds.
  dbExec(
    w.server.dbPath,
    `UPDATE _rhtmx_sync_log SET data = replace(data, '"todo 7"', '"evil"') WHERE entity = 'todos' AND entity_id = '${id(7)}'`,
  );
  // How many changes each pull brings (the answers pass through unchanged).
  const pulled = [];
  w.proxy.rule({
    match: (req) => req.method === "GET" && req.url.startsWith("/api/sync/todos?"),
    respond: (req, res) => {
      fetch(new URL(req.url, w.server.base), { headers: { cookie: req.headers.cookie ?? "" } })
        .then((r) => r.text().then((body) => [r.status, body]))
        .then(([status, body]) => {
          if (status === 200) pulled.push(JSON.parse(body).changes.map((c) => c.id));
          res.writeHead(status, { "Content-Type": "application/json" });
          res.end(body);
        });
      return true;
    },
  });
  const page = await openApp(w.context, w.proxy.base);
  await integrity(page);
  const [event] = await events(page, "integrity");
  assert.equal(event.detail.ok, true, "the mirror holds what the log said");
  assert.equal(event.detail.corrected, 1, JSON.stringify(event.detail));
  assert.deepEqual(await mirrored(page), table());
  assert.equal((await mirrored(page))[id(7)], "todo 7");
  assert.deepEqual(pulled.map((p) => p.length), [40, 1], JSON.stringify(pulled));
  assert.deepEqual(pulled[1], [id(7)]);
  // In step now: the next sync corrects nothing.
  await page.reload();
  await integrity(page);
  const [again] = await events(page, "integrity");
  assert.equal(again.detail.corrected, 0, JSON.stringify(again.detail));
});
