// An entity whose key column is not named `id` (examples/minimal_notes: `note_id`): the
// mirror fills and follows changes, and the outbox is not disturbed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser, dbQuery, dbExec, eventually } from "./harness.js";
import { waitInPage } from "./app.js";

let browser;
let server;

before(async () => {
  browser = await launchBrowser();
  server = await startServer({ example: "minimal_notes" });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Writes as another program would, straight into the database. */
const sql = (statement) => dbExec(server.dbPath, statement);
const notes = () => dbQuery(server.dbPath, "SELECT body FROM notes ORDER BY note_id").map((r) => r.body);
const mirror = (page) => page.evaluate(() => RhtmxSync.get("notes"));

test("a note_id-keyed entity fills the mirror, follows edits and deletes, and the outbox works", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const storageErrors = [];
  page.on("console", (m) => m.type() === "warning" && /storage/.test(m.text()) && storageErrors.push(m.text()));
  await page.goto(server.base + "/");
  await page.waitForFunction(() => window.RhtmxSync?.source?.readyState === EventSource.OPEN);

  await page.fill("input[name=body]", "first");
  await page.click("button");
  await waitInPage(page, async () => (await RhtmxSync.get("notes")).some((n) => n.body === "first"));
  const [row] = await mirror(page);
  assert.equal(row.note_id, 1);

  sql("UPDATE notes SET body = 'edited elsewhere' WHERE note_id = 1");
  await waitInPage(page, async () => (await RhtmxSync.get("notes"))[0]?.body === "edited elsewhere");
  assert.equal((await mirror(page)).length, 1, "an edit replaces the row, keyed by note_id");
  sql("INSERT INTO notes (note_id, body) VALUES (7, 'seventh')");
  sql("DELETE FROM notes WHERE note_id = 1");
  await waitInPage(page, async () => {
    const rows = await RhtmxSync.get("notes");
    return rows.length === 1 && rows[0].note_id === 7;
  });

  // The mirror's writes never turned the outbox off: an offline note is kept and sent.
  await context.setOffline(true);
  await page.fill("input[name=body]", "written offline");
  await page.click("button");
  await page.waitForFunction(() => RhtmxSync.pendingCount === 1);
  await context.setOffline(false);
  await page.waitForFunction(() => RhtmxSync.pendingCount === 0);
  await eventually(() => notes().includes("written offline"), { what: "the replayed note" });
  await waitInPage(page, async () => (await RhtmxSync.get("notes")).some((n) => n.body === "written offline"));
  assert.deepEqual(storageErrors, []);
  await context.close();
});
